package xds

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/sockmesh/sockmesh/mesh"
)

// sotwClient opens an ADS stream as node id and subscribes to clusters.
func sotwClient(t *testing.T, conn *grpc.ClientConn, id string) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discovery.DiscoveryResponse) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: id, Cluster: "c1"}, TypeUrl: resource.ClusterType})
	return st, recvWithin(t, st.Recv, 5*time.Second)
}

func statusOf(cc *statusv3.ClientConfig, typ string) *statusv3.ClientConfig_GenericXdsConfig {
	for _, g := range cc.GetGenericXdsConfigs() {
		if g.GetTypeUrl() == typ {
			return g
		}
	}
	return nil
}

// TestClientStatus drives three clients into SYNCED, STALE and ERROR and
// reads their state back through CSDS (fetch and stream), ADS syncz and
// /debug/syncz.
func TestClientStatus(t *testing.T) {
	reg := mesh.NewRegistry()
	reg.Set("t", oneService("10.96.0.10", "10.0.0.1"))
	srv, conn := startServerConn(t, reg)

	acker, r := sotwClient(t, conn, "acker")
	acker.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
	sotwClient(t, conn, "stale") // never acknowledges
	nacker, r := sotwClient(t, conn, "nacker")
	nacker.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: r.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "cluster rejected: test"}})

	csdsClient := statusv3.NewClientStatusDiscoveryServiceClient(conn)
	var resp *statusv3.ClientStatusResponse
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		resp, err = csdsClient.FetchClientStatus(context.Background(), &statusv3.ClientStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetConfig()) == 3 && statusOf(resp.GetConfig()[0], resource.ClusterType).GetConfigStatus() == statusv3.ConfigStatus_SYNCED &&
			statusOf(resp.GetConfig()[1], resource.ClusterType).GetConfigStatus() == statusv3.ConfigStatus_ERROR {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CSDS: %v", resp)
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := map[string]statusv3.ConfigStatus{"acker": statusv3.ConfigStatus_SYNCED, "nacker": statusv3.ConfigStatus_ERROR, "stale": statusv3.ConfigStatus_STALE}
	for _, cc := range resp.GetConfig() {
		cds := statusOf(cc, resource.ClusterType)
		if cds.GetConfigStatus() != want[cc.GetNode().GetId()] {
			t.Errorf("%s: CDS %v, want %v", cc.GetNode().GetId(), cds.GetConfigStatus(), want[cc.GetNode().GetId()])
		}
		if lds := statusOf(cc, resource.ListenerType); lds.GetConfigStatus() != statusv3.ConfigStatus_NOT_SENT {
			t.Errorf("%s: LDS %v, want NOT_SENT", cc.GetNode().GetId(), lds.GetConfigStatus())
		}
		if cc.GetNode().GetId() == "nacker" && !strings.Contains(cds.GetErrorState().GetDetails(), "cluster rejected: test") {
			t.Errorf("nacker: error state %v", cds.GetErrorState())
		}
	}

	// Node matchers and the streaming form.
	st, err := csdsClient.StreamClientStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&statusv3.ClientStatusRequest{NodeMatchers: []*matcherv3.NodeMatcher{{NodeId: &matcherv3.StringMatcher{
		MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "nack"}}}}})
	sr, err := st.Recv()
	if err != nil || len(sr.GetConfig()) != 1 || sr.GetConfig()[0].GetNode().GetId() != "nacker" {
		t.Fatalf("stream with matcher: %v %v", sr, err)
	}

	// Istio's syncz over ADS: the first request carries a nonce.
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ads.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "istioctl"}, TypeUrl: SynczType, ResponseNonce: "istio-first"})
	sz := recvWithin(t, ads.Recv, 5*time.Second)
	if sz.GetTypeUrl() != SynczType || len(sz.GetResources()) < 3 {
		t.Fatalf("syncz: %v", sz)
	}
	var ident map[string]any
	if err := json.Unmarshal([]byte(sz.GetControlPlane().GetIdentifier()), &ident); err != nil || ident["Component"] != "sockmesh" {
		t.Fatalf("control plane identifier %q: %v", sz.GetControlPlane().GetIdentifier(), err)
	}
	var cc statusv3.ClientConfig
	if err := sz.GetResources()[0].UnmarshalTo(&cc); err != nil || cc.GetNode().GetId() != "acker" {
		t.Fatalf("syncz resource: %v %v", &cc, err)
	}

	// The same as JSON on the monitoring port, with metrics beside it.
	body := get(t, "http://"+srv.MonitorAddr().String()+"/debug/syncz")
	var js []map[string]any
	if err := json.Unmarshal([]byte(body), &js); err != nil || len(js) < 3 {
		t.Fatalf("/debug/syncz: %v\n%s", err, body)
	}
	if !strings.Contains(body, `"configStatus": "ERROR"`) && !strings.Contains(body, `"configStatus":"ERROR"`) {
		t.Errorf("/debug/syncz lacks the ERROR state:\n%s", body)
	}
	m := get(t, "http://"+srv.MonitorAddr().String()+"/metrics")
	for _, w := range []string{"sockmesh_xds_nacks_total 1", "sockmesh_xds_connected_clients", "sockmesh_xds_pushes_total", "sockmesh_xds_push_seconds_bucket"} {
		if !strings.Contains(m, w) {
			t.Errorf("/metrics lacks %q", w)
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

func TestReflectionListsServices(t *testing.T) {
	_, conn := startServerConn(t, mesh.NewRegistry())
	st, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"envoy.service.discovery.v3.AggregatedDiscoveryService", "envoy.service.status.v3.ClientStatusDiscoveryService"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}

// TestTrackerKeepsSotWAndDeltaApart: go-control-plane numbers SotW and
// delta streams separately; closing SotW stream 1 must not forget delta
// stream 1.
func TestTrackerKeepsSotWAndDeltaApart(t *testing.T) {
	tr := newTracker(slog.New(slog.NewTextHandler(io.Discard, nil)))
	tr.onDeltaRequest(1, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "agent"}, TypeUrl: resource.ListenerType})
	tr.onRequest(1, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "cli"}, TypeUrl: SynczType})
	tr.onClosed(1, false)
	cc := tr.clientConfigs(nil)
	if len(cc) != 1 || cc[0].GetNode().GetId() != "agent" {
		t.Fatalf("after closing the SotW stream: %v", cc)
	}
}
