package node

import (
	"net/netip"
	"testing"

	"github.com/sockmesh/sockmesh/internal/xdstest"
	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/node/telemetry"
)

func TestServiceAClientReached(t *testing.T) {
	wl := func(name string) *mesh.Workload {
		return &mesh.Workload{Name: name, Namespace: "shop", ServiceAccount: name + "-sa", CanonicalService: name, CanonicalRevision: "v1"}
	}
	ep := func(addr string, w *mesh.Workload) mesh.Endpoint {
		return mesh.Endpoint{Address: netip.MustParseAddr(addr), Ready: true, Serving: true, Workload: w}
	}
	port := []mesh.Port{{Name: "http", Port: 80, Protocol: mesh.TCP, TargetPort: 8080}}
	cart := &mesh.Service{Namespace: "shop", Name: "cart", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Ports: port,
		Endpoints: []mesh.Endpoint{ep("10.0.0.1", wl("cart")), ep("10.0.0.2", wl("cart"))}}
	// Two workloads behind one service: a client cannot tell which answered.
	pay := &mesh.Service{Namespace: "shop", Name: "pay", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")}, Ports: port,
		Endpoints: []mesh.Endpoint{ep("10.0.1.1", wl("pay-v1")), ep("10.0.1.2", wl("pay-v2"))}}
	// A load generator: a pod of the mesh, no endpoint of any service.
	loadgen := &mesh.Pod{Namespace: "shop", Name: "loadgen-7d9f-x", Addrs: []netip.Addr{netip.MustParseAddr("10.0.9.9")},
		Workload: *wl("loadgen")}
	// The pod of a cart endpoint, also listed: the endpoint names it.
	cartPod := &mesh.Pod{Namespace: "shop", Name: "cart-1", Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Workload: *wl("other")}
	dir := newDirectory(xdstest.StateOf(t, &mesh.Snapshot{Services: []*mesh.Service{cart, pay}, Pods: []*mesh.Pod{cartPod, loadgen}}))
	cartDst := telemetry.Destination{Service: "cart.shop.svc.cluster.local", ServiceName: "cart", ServiceNamespace: "shop",
		Peer: telemetry.Peer{Workload: "cart", Namespace: "shop", App: "cart", Version: "v1", CanonicalService: "cart", CanonicalRevision: "v1",
			Principal: "spiffe://cluster.local/ns/shop/sa/cart-sa"}}
	for _, c := range []struct {
		host, ns string
		want     telemetry.Destination
		ok       bool
	}{
		{"10.96.0.10", "other", cartDst, true},                  // the VIP
		{"cart", "shop", cartDst, true},                         // a short name, from its namespace
		{"cart", "other", telemetry.Destination{}, false},       // ... not from another
		{"cart.shop", "other", cartDst, true},                   // name.namespace
		{"cart.shop.svc", "other", cartDst, true},               // name.namespace.svc
		{"cart.shop.svc.cluster.local.", "", cartDst, true},     // the FQDN, rooted
		{"10.0.0.2", "", cartDst, true},                         // an endpoint, dialled directly
		{"example.com", "shop", telemetry.Destination{}, false}, // not in the mesh
		{"10.96.0.11", "", telemetry.Destination{Service: "pay.shop.svc.cluster.local", ServiceName: "pay", ServiceNamespace: "shop"}, true},
	} {
		got, ok := dir.service(c.host, c.ns)
		if ok != c.ok || got != c.want {
			t.Errorf("service(%q, %q) = %+v, %v; want %+v, %v", c.host, c.ns, got, ok, c.want, c.ok)
		}
	}
	// A server names its client by the client's address: an endpoint
	// (with its service), or a pod that is only a client.
	if got, ok := dir.identify([]netip.Addr{netip.MustParseAddr("10.0.1.2")}); !ok || got.Workload != "pay-v2" || got.ServiceName != "pay" {
		t.Errorf("identify(10.0.1.2) = %+v, %v", got, ok)
	}
	if got, ok := dir.identify([]netip.Addr{netip.MustParseAddr("10.0.0.1")}); !ok || got.Workload != "cart" {
		t.Errorf("identify(10.0.0.1) = %+v, %v; want the endpoint's workload", got, ok)
	}
	if got, ok := dir.identify([]netip.Addr{netip.MustParseAddr("10.0.9.9")}); !ok || got.Workload != "loadgen" || got.Service != "" ||
		got.Principal != "spiffe://cluster.local/ns/shop/sa/loadgen-sa" {
		t.Errorf("identify(10.0.9.9) = %+v, %v; want the load generator, no service", got, ok)
	}
	if _, ok := dir.identify([]netip.Addr{netip.MustParseAddr("10.0.9.8")}); ok {
		t.Errorf("identify(10.0.9.8): an unknown address was named")
	}
}
