package telemetry

import "testing"

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
