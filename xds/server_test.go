package xds

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sockmesh/sockmesh/mesh"
)

func startServer(t *testing.T, reg *mesh.Registry) discovery.AggregatedDiscoveryServiceClient {
	t.Helper()
	srv, conn := startServerConn(t, reg)
	_ = srv
	return discovery.NewAggregatedDiscoveryServiceClient(conn)
}

// startServerConn runs a control plane on loopback (xDS and monitoring on
// free ports) and returns it with a client connection.
func startServerConn(t *testing.T, reg *mesh.Registry) (*Server, *grpc.ClientConn) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Address, cfg.MonitorAddress = "127.0.0.1:0", "127.0.0.1:0"
	srv, err := New(cfg, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	addr, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return srv, conn
}

func oneService(vip string, endpoints ...string) []*mesh.Service {
	s := &mesh.Service{Namespace: "default", Name: "web", VIPs: []netip.Addr{netip.MustParseAddr(vip)},
		Ports: []mesh.Port{{Name: "http", Port: 80, Protocol: mesh.TCP}}}
	for _, e := range endpoints {
		s.Endpoints = append(s.Endpoints, mesh.Endpoint{Address: netip.MustParseAddr(e), Ready: true, Weight: 1})
	}
	return []*mesh.Service{s}
}

var testNode = &corev3.Node{Id: "test-node"}

func recvWithin(t *testing.T, recv func() (*discovery.DiscoveryResponse, error), d time.Duration) *discovery.DiscoveryResponse {
	t.Helper()
	type r struct {
		resp *discovery.DiscoveryResponse
		err  error
	}
	ch := make(chan r, 1)
	go func() { resp, err := recv(); ch <- r{resp, err} }()
	select {
	case got := <-ch:
		if got.err != nil {
			t.Fatal(got.err)
		}
		return got.resp
	case <-time.After(d):
		t.Fatalf("no response within %v", d)
	}
	return nil
}

func TestSotWServesAndHoldsAfterNACK(t *testing.T) {
	reg := mesh.NewRegistry()
	reg.Set("test", oneService("10.96.0.10", "10.0.0.1"))
	ads := startServer(t, reg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&discovery.DiscoveryRequest{Node: testNode, TypeUrl: resource.ClusterType})
	first := recvWithin(t, st.Recv, 5*time.Second)
	if len(first.GetResources()) != 1 {
		t.Fatalf("got %d clusters", len(first.GetResources()))
	}

	// NACK it, as a client that cannot take it would, again and again.
	// go-control-plane alone would answer every NACK with the same
	// resources at once; the server must hold until the content changes.
	responses := make(chan *discovery.DiscoveryResponse, 100000)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- r
			st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: r.GetNonce(),
				ErrorDetail: &status.Status{Code: 3, Message: "rejected again"}})
		}
	}()
	st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: first.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "rejected"}})
	time.Sleep(time.Second)
	if n := len(responses); n != 0 {
		t.Fatalf("%d re-sends within 1s of a NACK, want 0", n)
	}

	// New content is sent (and, NACKed again, held again).
	reg.Set("test", []*mesh.Service{oneService("10.96.0.10", "10.0.0.1")[0], {Namespace: "default", Name: "db",
		VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")}, Ports: []mesh.Port{{Port: 5432, Protocol: mesh.TCP}}}})
	select {
	case r := <-responses:
		if len(r.GetResources()) != 2 || r.GetVersionInfo() == first.GetVersionInfo() {
			t.Fatalf("after a change: %d resources, version %s", len(r.GetResources()), r.GetVersionInfo())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a content change after a NACK was not sent")
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(responses); n != 0 {
		t.Fatalf("%d re-sends after the second NACK", n)
	}
}

func TestDeltaServesChanges(t *testing.T) {
	reg := mesh.NewRegistry()
	reg.Set("test", oneService("10.96.0.10", "10.0.0.1"))
	ads := startServer(t, reg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cla := "outbound|80||web.default.svc.cluster.local"
	st.Send(&discovery.DeltaDiscoveryRequest{Node: testNode, TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{cla}})
	recv := func() *discovery.DeltaDiscoveryResponse {
		t.Helper()
		ch := make(chan *discovery.DeltaDiscoveryResponse, 1)
		go func() { r, _ := st.Recv(); ch <- r }()
		select {
		case r := <-ch:
			if r == nil {
				t.Fatal("stream ended")
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatal("no delta response")
		}
		return nil
	}
	r := recv()
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != cla {
		t.Fatalf("first response: %v", r)
	}
	v1 := r.GetResources()[0].GetVersion()
	st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: r.GetNonce()})

	reg.Set("test", oneService("10.96.0.10", "10.0.0.1", "10.0.0.2"))
	r = recv()
	if len(r.GetResources()) != 1 || r.GetResources()[0].GetVersion() == v1 {
		t.Fatalf("update: %v", r)
	}
	st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: r.GetNonce()})

	reg.Set("test", nil)
	r = recv()
	if len(r.GetRemovedResources()) != 1 || r.GetRemovedResources()[0] != cla {
		t.Fatalf("removal: %v", r)
	}
}
