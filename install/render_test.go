package install

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/xds"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		os.WriteFile(path, got, 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test ./install -update rewrites it); got:\n%s", path, got)
	}
}

func TestProxyStatusRendering(t *testing.T) {
	meta, _ := structpb.NewStruct(map[string]any{"ISTIO_VERSION": "1.2.3"})
	ps := &ProxyStatus{ControlPlane: "cp-1", Clients: &statusv3.ClientStatusResponse{Config: []*statusv3.ClientConfig{
		{Node: &corev3.Node{Id: "node-a", Cluster: "Kubernetes", Metadata: meta}, GenericXdsConfigs: []*statusv3.ClientConfig_GenericXdsConfig{
			{TypeUrl: resource.ClusterType, ConfigStatus: statusv3.ConfigStatus_SYNCED},
			{TypeUrl: resource.ListenerType, ConfigStatus: statusv3.ConfigStatus_ERROR, ErrorState: &adminv3.UpdateFailureState{Details: "program kernel: map full"}},
			{TypeUrl: resource.EndpointType, ConfigStatus: statusv3.ConfigStatus_STALE},
		}},
		{Node: &corev3.Node{Id: "grpc-client", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.84.0"}}},
	}}}
	var b bytes.Buffer
	if err := WriteProxyStatus(&b, ps, "table"); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-status.golden.txt", b.Bytes())
	if err := WriteProxyStatus(&b, ps, "xml"); err == nil {
		t.Error("unknown format accepted")
	}
}

func TestProxyConfigRendering(t *testing.T) {
	svc := &mesh.Service{Namespace: "shop", Name: "web",
		VIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []mesh.Port{{Name: "http", Port: 80, Protocol: mesh.TCP, TargetPort: 8080}, {Name: "dns", Port: 53, Protocol: mesh.UDP}},
		Endpoints: []mesh.Endpoint{{Address: netip.MustParseAddr("10.0.0.1"), Ready: true, Weight: 2, Zone: "z1", Region: "r1"},
			{Address: netip.MustParseAddr("10.0.0.2"), Ready: false, Weight: 1}}}
	res, err := xds.Translate(&mesh.Snapshot{Services: []*mesh.Service{svc}}, mesh.DefaultDomain)
	if err != nil {
		t.Fatal(err)
	}
	anyOf := func(m types.Resource) *anypb.Any { a, _ := anypb.New(m.(proto.Message)); return a }
	var ld adminv3.ListenersConfigDump
	for _, l := range res.Listeners {
		ld.DynamicListeners = append(ld.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{Listener: anyOf(l)}})
	}
	var rd adminv3.RoutesConfigDump
	for _, r := range res.Routes {
		rd.DynamicRouteConfigs = append(rd.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{RouteConfig: anyOf(r)})
	}
	var cd adminv3.ClustersConfigDump
	for _, c := range res.Clusters {
		cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{Cluster: anyOf(c)})
	}
	var ed adminv3.EndpointsConfigDump
	for _, e := range res.Endpoints {
		ed.DynamicEndpointConfigs = append(ed.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{EndpointConfig: anyOf(e)})
	}
	dump := &adminv3.ConfigDump{}
	for _, m := range []proto.Message{&ld, &rd, &cd, &ed} {
		a, _ := anypb.New(m)
		dump.Configs = append(dump.Configs, a)
	}
	maps := []byte(`{"maps":{"services":[
		{"service":"10.96.0.10:53/udp","source":"10.96.0.10_53_udp","revision":2,"slots":0,"backends":null},
		{"service":"10.96.0.10:80/tcp","source":"10.96.0.10_80","revision":1,"slots":2,"backends":[{"address":"10.0.0.1:8080","slots":2}]}]}}`)
	pc := &ProxyConfig{Dump: dump, Maps: maps}
	var b bytes.Buffer
	if err := WriteProxyConfig(&b, pc, "all", "short"); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-config-all.golden.txt", b.Bytes())
	b.Reset()
	if err := WriteProxyConfig(&b, pc, "maps", "yaml"); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-config-maps.golden.yaml", b.Bytes())
	if err := WriteProxyConfig(&b, pc, "secrets", "short"); err == nil {
		t.Error("unknown section accepted")
	}
}
