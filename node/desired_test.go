package node

import (
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/internal/xdstest"
	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/node/dataplane"
	"github.com/sockmesh/sockmesh/node/xdsclient"
)

// stateOf runs the real translation, so this also checks that what the
// control plane emits is what the agent reads.
func stateOf(t *testing.T, svcs ...*mesh.Service) *xdsclient.State {
	return xdstest.State(t, svcs...)
}

func TestDesiredFromTranslation(t *testing.T) {
	ep := func(addr string, ready, serving, terminating bool, w uint32) mesh.Endpoint {
		return mesh.Endpoint{Address: netip.MustParseAddr(addr), Ready: ready, Serving: serving, Terminating: terminating, Weight: w}
	}
	web := &mesh.Service{Namespace: "d", Name: "web",
		VIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")},
		Ports: []mesh.Port{{Name: "http", Port: 80, Protocol: mesh.TCP, TargetPort: 8080}, {Name: "dns", Port: 53, Protocol: mesh.UDP}},
		Endpoints: []mesh.Endpoint{
			ep("10.0.0.1", true, true, false, 2),
			ep("10.0.0.2", false, false, false, 1), // not ready: excluded
			ep("10.0.0.3", false, true, true, 1),   // draining: only as a last resort
			ep("fd00::1:1", true, true, false, 1),
		}}
	drain := &mesh.Service{Namespace: "d", Name: "drain", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")},
		Ports:     []mesh.Port{{Port: 80, Protocol: mesh.TCP}},
		Endpoints: []mesh.Endpoint{ep("10.0.1.1", false, true, true, 1), ep("10.0.1.2", false, false, true, 1)}}
	got, err := desired(stateOf(t, web, drain), "")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]dataplane.Service{}
	for _, s := range got {
		byName[s.String()] = s
	}
	check := func(name string, proto uint8, want ...string) {
		t.Helper()
		s, ok := byName[name]
		if !ok {
			t.Fatalf("no %s in %v", name, got)
		}
		if s.Proto != proto || len(s.Backends) != len(want) {
			t.Fatalf("%s: proto %d backends %v, want %v", name, s.Proto, s.Backends, want)
		}
		for i, w := range want {
			if netip.AddrPortFrom(s.Backends[i].Addr, s.Backends[i].Port).String() != w {
				t.Errorf("%s backend %d = %v, want %s", name, i, s.Backends[i], w)
			}
		}
	}
	check("10.96.0.10:80/tcp", sockaddr.ProtoTCP, "10.0.0.1:8080")
	check("[fd00::10]:80/tcp", sockaddr.ProtoTCP, "[fd00::1:1]:8080")
	check("10.96.0.10:53/udp", sockaddr.ProtoUDP, "10.0.0.1:53")
	check("10.96.0.11:80/tcp", sockaddr.ProtoTCP, "10.0.1.1:80")
	if w := byName["10.96.0.10:80/tcp"].Backends[0].Weight; w != 2 {
		t.Errorf("weight %d, want 2", w)
	}
	if len(got) != 5 {
		t.Errorf("%d services, want 5: %v", len(got), got)
	}
}

func TestDesiredWaitsForEndpoints(t *testing.T) {
	st := stateOf(t, &mesh.Service{Namespace: "d", Name: "web", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []mesh.Port{{Port: 80, Protocol: mesh.TCP}}})
	clear(st.Assignments)
	got, err := desired(st, "")
	if err != nil || len(got) != 0 {
		t.Fatalf("a listener without endpoints yet was programmed: %v %v", got, err)
	}
	if st.Complete() {
		t.Fatal("state without endpoints called complete")
	}
}

func TestDesiredRejectsMalformed(t *testing.T) {
	st := stateOf(t)
	st.Listeners["bad"] = &listenerv3.Listener{Name: "bad", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: "not-an-ip", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}}}
	if _, err := desired(st, ""); err == nil {
		t.Fatal("malformed listener accepted")
	}
}

func TestDesiredHonoursZoneHints(t *testing.T) {
	ep := func(a string, hints ...string) mesh.Endpoint {
		return mesh.Endpoint{Address: netip.MustParseAddr(a), Ready: true, Weight: 1, ZoneHints: hints}
	}
	svc := func(eps ...mesh.Endpoint) *mesh.Service {
		return &mesh.Service{Namespace: "d", Name: "web", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports: []mesh.Port{{Port: 80, Protocol: mesh.TCP}}, Endpoints: eps}
	}
	backendsOf := func(s *mesh.Service, zone string) []string {
		got, err := desired(stateOf(t, s), zone)
		if err != nil || len(got) != 1 {
			t.Fatalf("desired: %v %v", got, err)
		}
		var out []string
		for _, b := range got[0].Backends {
			out = append(out, b.Addr.String())
		}
		return out
	}
	hinted := svc(ep("10.0.0.1", "z1"), ep("10.0.0.2", "z2"), ep("10.0.0.3", "z1"))
	if got := backendsOf(hinted, "z1"); len(got) != 2 || got[0] != "10.0.0.1" || got[1] != "10.0.0.3" {
		t.Errorf("node in z1: %v, want the z1-hinted endpoints", got)
	}
	if got := backendsOf(hinted, ""); len(got) != 3 {
		t.Errorf("node without a zone: %v, want all", got)
	}
	if got := backendsOf(hinted, "z9"); len(got) != 3 {
		t.Errorf("no endpoint hinted for the node's zone: %v, want all", got)
	}
	partial := svc(ep("10.0.0.1", "z1"), ep("10.0.0.2"))
	if got := backendsOf(partial, "z1"); len(got) != 2 {
		t.Errorf("an endpoint without hints disables them: %v", got)
	}
}
