package telemetry

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/bpf/l7"
)

func TestHostOf(t *testing.T) {
	for in, want := range map[string]string{
		"web:8080":                          "web",
		"web.shop.svc.cluster.local":        "web.shop.svc.cluster.local",
		"10.96.0.10:80":                     "10.96.0.10",
		"[fd00::10]:80":                     "fd00::10",
		"fd00::10":                          "fd00::10",
		"dns:///cart.shop:50051":            "cart.shop",
		"dns://8.8.8.8/cart.shop:50051":     "cart.shop",
		"passthrough:///10.96.0.11:50051":   "10.96.0.11",
		"xds:///pay.shop.svc.cluster.local": "pay.shop.svc.cluster.local",
		"":                                  "",
	} {
		if got := HostOf(in); got != want {
			t.Errorf("HostOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSeriesLabels(t *testing.T) {
	s := Series{Kind: GRPCClient, Status: 200, GRPCStatus: 5, Source: Peer{Workload: "client", Namespace: "shop"},
		Destination: Destination{Service: "cart.shop.svc.cluster.local", Peer: Peer{Cluster: "Kubernetes"}}}
	got := map[string]string{}
	for i, v := range seriesLabels(s) {
		got[istioLabels[i]] = v
	}
	for k, v := range map[string]string{
		"reporter": "source", "request_protocol": "grpc", "response_code": "200", "grpc_response_status": "5",
		"source_workload": "client", "source_app": "unknown", "destination_service": "cart.shop.svc.cluster.local",
		"destination_workload": "unknown", "destination_cluster": "Kubernetes", "response_flags": "-",
	} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	s = Series{Kind: HTTPServer, Status: 404, GRPCStatus: -1}
	got = map[string]string{}
	for i, v := range seriesLabels(s) {
		got[istioLabels[i]] = v
	}
	if got["reporter"] != "destination" || got["request_protocol"] != "http" || got["grpc_response_status"] != "" || got["response_code"] != "404" {
		t.Errorf("HTTP server series labels %v", got)
	}
}

func TestDecodeEvent(t *testing.T) {
	var e l7.HTTPEvent
	e.DurationNs, e.Bytes, e.ReqBytes, e.Pid, e.Status, e.GrpcStatus, e.Kind, e.ProtoMajor = 1500000, 19, 7, 42, 404, l7.GRPCNone, l7.KindHTTPServer, 2
	copy(e.Method[:], "POST")
	copy(e.Path[:], "/missing")
	copy(e.Peer[:], "[fd00::7]") // a server's view: the client's address, port cut
	var buf bytes.Buffer
	binary.Write(&buf, binary.NativeEndian, &e)
	r, err := decodeEvent(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := Request{PID: 42, Kind: HTTPServer, Method: "POST", Path: "/missing", Status: 404, GRPCStatus: -1, Peer: "fd00::7",
		Bytes: 19, ReqBytes: 7, Duration: 1500 * time.Microsecond, ProtoMajor: 2}
	if r != want {
		t.Fatalf("decoded %+v, want %+v", r, want)
	}
	// A gRPC server's peer comes in binary: its length, then the address.
	e = l7.HTTPEvent{Kind: l7.KindGRPCServer, GrpcStatus: 5, Status: 200}
	e.Peer[0], e.Peer[1] = l7.PeerBinary, 16
	copy(e.Peer[2:], netip.MustParseAddr("::ffff:10.0.0.9").AsSlice())
	buf.Reset()
	binary.Write(&buf, binary.NativeEndian, &e)
	if r, _ := decodeEvent(buf.Bytes()); r.Peer != "10.0.0.9" || r.GRPCStatus != 5 || r.Kind != GRPCServer {
		t.Fatalf("decoded %+v", r)
	}
	if _, err := decodeEvent([]byte{1, 2, 3}); err == nil {
		t.Fatal("a short record decoded")
	}
}

// TestGroupsNamePrograms: every probe names a program the object has,
// with the offsets it needs listed.
func TestGroupsNamePrograms(t *testing.T) {
	progs := (&l7.Programs{}).ByName()
	for _, g := range groups {
		for _, p := range g.probes {
			if _, ok := progs[p.prog]; !ok {
				t.Errorf("%s: %s names no program", g.name, p.prog)
			}
			if _, ok := l7.Fields[p.prog]; !ok {
				t.Errorf("%s: %s lists no fields", g.name, p.prog)
			}
		}
	}
}
