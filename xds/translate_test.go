package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/sockmesh/sockmesh/mesh"
)

var update = flag.Bool("update", false, "rewrite golden files")

func testSnapshot() *mesh.Snapshot {
	return &mesh.Snapshot{Version: 1, NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, Services: []*mesh.Service{{
		Namespace: "shop",
		Name:      "web",
		VIPs:      []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")},
		Ports: []mesh.Port{
			{Name: "http", Port: 80, Protocol: mesh.TCP, TargetPort: 8080, NodePort: 30080},
			{Name: "dns", Port: 53, Protocol: mesh.UDP},
		},
		Endpoints: []mesh.Endpoint{
			{Address: netip.MustParseAddr("10.0.0.1"), Ready: true, Serving: true, Weight: 3, Zone: "z1", Region: "r1", Node: "n1",
				Workload: &mesh.Workload{Name: "web", Namespace: "shop", ServiceAccount: "web", CanonicalService: "web", CanonicalRevision: "v1", Enrolled: true},
				Ports:    []mesh.EndpointPort{{Name: "http", Port: 8080, Protocol: mesh.TCP}, {Name: "dns", Port: 5353, Protocol: mesh.UDP}}},
			{Address: netip.MustParseAddr("10.0.0.2"), Serving: true, Terminating: true, Weight: 1, Zone: "z2", Region: "r1",
				Ports: []mesh.EndpointPort{{Name: "http", Port: 8080, Protocol: mesh.TCP}}},
			{Address: netip.MustParseAddr("fd00::1:1"), Weight: 1,
				Ports: []mesh.EndpointPort{{Name: "http", Port: 8080, Protocol: mesh.TCP}}},
		},
	}}}
}

func TestTranslateGolden(t *testing.T) {
	res, err := Translate(testSnapshot(), mesh.DefaultDomain)
	if err != nil {
		t.Fatal(err)
	}
	for name, items := range map[string][]types.Resource{
		"listeners": res.Listeners, "routes": res.Routes, "clusters": res.Clusters, "endpoints": res.Endpoints,
	} {
		for _, it := range items {
			if v, ok := it.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					t.Errorf("%s: invalid resource: %v", name, err)
				}
			}
		}
		got := render(t, items)
		path := filepath.Join("testdata", name+".golden.json")
		if *update {
			os.WriteFile(path, got, 0o644)
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differ from %s (go test ./xds -update rewrites it):\n%s", name, path, got)
		}
	}
}

// render prints resources as indented JSON, normalised through
// encoding/json because protojson's spacing is deliberately unstable.
func render(t *testing.T, items []types.Resource) []byte {
	var all []json.RawMessage
	for _, it := range items {
		b, err := protojson.Marshal(it.(proto.Message))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b)
	}
	var v any
	b, _ := json.Marshal(all)
	json.Unmarshal(b, &v)
	out, _ := json.MarshalIndent(v, "", "  ")
	return append(out, '\n')
}

func TestVersionsChangeOnlyWithContent(t *testing.T) {
	a, _ := Translate(testSnapshot(), mesh.DefaultDomain)
	b, _ := Translate(testSnapshot(), mesh.DefaultDomain)
	sa, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := b.Snapshot()
	for _, typ := range []string{"type.googleapis.com/envoy.config.listener.v3.Listener", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"} {
		if sa.GetVersion(typ) != sb.GetVersion(typ) || sa.GetVersion(typ) == "" {
			t.Errorf("%s: same content, versions %q and %q", typ, sa.GetVersion(typ), sb.GetVersion(typ))
		}
	}
	snap := testSnapshot()
	snap.Services[0].Endpoints[0].Weight = 4
	c, _ := Translate(snap, mesh.DefaultDomain)
	sc, _ := c.Snapshot()
	eds := "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	lds := "type.googleapis.com/envoy.config.listener.v3.Listener"
	if sc.GetVersion(eds) == sa.GetVersion(eds) {
		t.Error("endpoint weight changed but the EDS version did not")
	}
	if sc.GetVersion(lds) != sa.GetVersion(lds) {
		t.Error("only endpoints changed but the LDS version did")
	}
}

// TestListenerClusterReadsWhatTranslateWrites checks the contract agents
// and the CLI rely on: every socket listener routes to its service port's
// cluster, TCP and UDP alike.
func TestListenerClusterReadsWhatTranslateWrites(t *testing.T) {
	res, err := Translate(testSnapshot(), mesh.DefaultDomain)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, r := range res.Listeners {
		l := r.(*listenerv3.Listener)
		if l.GetAddress() == nil {
			continue // proxyless gRPC listener
		}
		c, err := ListenerCluster(l)
		if err != nil || c == "" {
			t.Fatalf("%s: cluster %q, %v", l.GetName(), c, err)
		}
		want := "outbound|80||web.shop.svc.cluster.local"
		if strings.HasSuffix(l.GetName(), "_udp") {
			want = "outbound-udp|53||web.shop.svc.cluster.local"
		}
		if c != want {
			t.Errorf("%s routes to %q, want %q", l.GetName(), c, want)
		}
		seen++
	}
	if seen == 0 {
		t.Fatal("no socket listener translated")
	}
}
