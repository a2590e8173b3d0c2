package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/telemetry"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// TestIstioRequestMetrics runs a Go HTTP server in a meshed pod with
// telemetry on, sends it known traffic from another pod, and finds the
// counts in istio_requests_total on the agent's /metrics; when the server
// exits, its probes go.
func TestIstioRequestMetrics(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client, web := tp.Pod("client", true), tp.Pod("web", true)
	srv := web.Start("http-serve", "-addr", ":8080")
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	// The endpoint names its pod, and the pod is in the file: the agent
	// knows the server's workload as Istio would (its Deployment).
	endpoints := slice("web", "web", "IPv4", 0, []string{web.IP4.String()}, "http:8080/TCP") +
		"  targetRef: {kind: Pod, name: web-5f7c9d6b8-abcde, namespace: default}\n"
	pod := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-5f7c9d6b8-abcde\n  namespace: default\n" +
		"  labels: {app: web, version: v1, pod-template-hash: 5f7c9d6b8}\n" +
		"  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5f7c9d6b8, uid: u, controller: true}]\n" +
		"spec: {containers: [{name: web, image: web}]}\n"
	writeMesh(t, mesh, docs(svc("web", []string{vip4}, "http:80/TCP"), endpoints, pod))
	accessLog := filepath.Join(t.TempDir(), "access.log")
	// Rescans are rare: a server started later is found through the exec
	// event, and one that ends is dropped through the exit event.
	sm := tp.StartSockmesh("-f", mesh, "--telemetry", "--access-log", accessLog, "--telemetry-rescan", "10m")
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(sm.Output(), "telemetry: probing") })

	url := "http://" + web.IP4.String() + ":8080"
	for path, n := range map[string]int{"/ok": 3, "/missing": 2, "/fail": 1} {
		for range n {
			if out, err := client.Exec("curl", "-s", "-o", "/dev/null", "-m", "2", url+path); err != nil {
				t.Fatalf("curl %s: %v %s", path, err, out)
			}
		}
	}
	count := func(code string) string {
		re := regexp.MustCompile(`(?m)^istio_requests_total\{[^}]*reporter="destination"[^}]*response_code="` + code + `"[^}]*\} (\d+)$`)
		m := re.FindStringSubmatch(sm.Get("/metrics"))
		if m == nil {
			return "0"
		}
		return m[1]
	}
	// And a POST with a 1,234-byte body: istio_request_bytes.
	if out, err := client.Exec("curl", "-s", "-o", "/dev/null", "-m", "2", "--data-binary", strings.Repeat("x", 1234), url+"/ok"); err != nil {
		t.Fatalf("curl POST: %v %s", err, out)
	}
	waitFor(t, 5*time.Second, func() bool { return count("200") == "4" && count("404") == "2" && count("500") == "1" })
	if !regexp.MustCompile(`(?m)^istio_request_bytes_sum\{[^}]*response_code="200"[^}]*\} 1234$`).MatchString(sm.Get("/metrics")) {
		t.Errorf("istio_request_bytes_sum for the 200s is not 1234")
	}
	m := sm.Get("/metrics")
	for _, want := range []string{`request_protocol="http"`, `destination_cluster="Kubernetes"`, `source_workload="unknown"`,
		// The server's pod IP is an endpoint of web: the agent names it.
		`destination_service="web.default.svc.cluster.local"`, `destination_service_name="web"`, `destination_service_namespace="default"`,
		`destination_workload="web"`, `destination_workload_namespace="default"`, `destination_app="web"`, `destination_version="v1"`,
		`destination_principal="spiffe://cluster.local/ns/default/sa/default"`,
		"istio_request_duration_milliseconds_bucket", "istio_response_bytes_bucket"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The access log has a JSON line for each of the seven requests.
	var lines []telemetry.AccessEntry
	waitFor(t, 5*time.Second, func() bool {
		data, _ := os.ReadFile(accessLog)
		lines = lines[:0]
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var e telemetry.AccessEntry
			if json.Unmarshal([]byte(l), &e) == nil {
				lines = append(lines, e)
			}
		}
		return len(lines) == 7
	})
	byPath := map[string]int{}
	for _, e := range lines {
		byPath[fmt.Sprintf("%s %s %d", e.Method, e.Path, e.ResponseCode)]++
		if e.DestinationService != "web.default.svc.cluster.local" || e.DestinationWorkload != "web" || e.Reporter != "destination" || e.StartTime.IsZero() || e.DurationMs <= 0 {
			t.Errorf("access log line %+v", e)
		}
	}
	if want := map[string]int{"GET /ok 200": 3, "POST /ok 200": 1, "GET /missing 404": 2, "GET /fail 500": 1}; !maps.Equal(byPath, want) {
		t.Errorf("access log: %v, want %v", byPath, want)
	}
	// A server started after the agent is found through its exec and
	// probed as well; it is no endpoint of the mesh, so its series names
	// no service.
	late := tp.Pod("late", true)
	late.Start("http-serve", "-addr", ":8080")
	waitFor(t, 10*time.Second, func() bool { return strings.Count(sm.Output(), "telemetry: probing") >= 2 })
	for range 2 {
		if out, err := client.Exec("curl", "-s", "-o", "/dev/null", "-m", "2", "http://"+late.IP4.String()+":8080/ok"); err != nil {
			t.Fatalf("curl the late server: %v %s", err, out)
		}
	}
	lateRe := regexp.MustCompile(`(?m)^istio_requests_total\{[^}]*destination_service="unknown"[^}]*response_code="200"[^}]*\} 2$`)
	waitFor(t, 5*time.Second, func() bool { return lateRe.MatchString(sm.Get("/metrics")) })

	// A real Prometheus scrapes the agent, and a rate query by workload,
	// as Kiali and the Istio dashboards make, answers for "web".
	promRateByWorkload(t, sm.Metrics, func() {
		client.Exec("curl", "-s", "-o", "/dev/null", "-m", "2", url+"/ok")
	})
	// The server's probes are uprobe_multi links filtered to its PID (one
	// per program; this kernel has them): gone once it exits.
	pid := uint32(srv.Cmd.Process.Pid)
	if n := uprobeLinks(t, pid); n == 0 {
		t.Fatalf("no uprobe links for the server (pid %d) while it runs", pid)
	}
	srv.Stop()
	waitFor(t, 5*time.Second, func() bool { return strings.Contains(sm.Output(), "telemetry: process exited, probes removed") })
	waitFor(t, 5*time.Second, func() bool { return uprobeLinks(t, pid) == 0 })
}

// uprobeLinks counts the uprobe_multi links in the kernel that fire for
// process pid.
func uprobeLinks(t *testing.T, pid uint32) int {
	t.Helper()
	n := 0
	it := new(link.Iterator)
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if um := info.UprobeMulti(); um != nil {
			if p, ok := um.Pid(); ok && p == pid {
				n++
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// promRateByWorkload starts Prometheus (Debian's package) on loopback,
// scraping target every second, calls traffic repeatedly while it does, and
// checks that sum by (destination_workload) (rate(istio_requests_total))
// has a positive rate for "web".
func promRateByWorkload(t *testing.T, target string, traffic func()) {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not installed (make deps-test installs it): %v", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(cfg, []byte("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"+
		"scrape_configs:\n- job_name: sockmesh\n  static_configs: [{targets: [\""+target+"\"]}]\n"), 0o644)
	addr := harness.FreePort(t)
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitFor(t, 20*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	query := `sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[15s]))`
	var rate float64
	deadline := time.Now().Add(30 * time.Second)
	for rate <= 0 && time.Now().Before(deadline) {
		for range 5 {
			traffic()
			time.Sleep(100 * time.Millisecond)
		}
		resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + neturl.QueryEscape(query))
		if err != nil {
			continue
		}
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  [2]any            `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		for _, res := range r.Data.Result {
			if res.Metric["destination_workload"] == "web" {
				v, _ := res.Value[1].(string)
				rate, _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	if rate <= 0 {
		t.Fatalf("Prometheus has no rate for workload web: %s\n%s", query, out.String())
	}
	t.Logf("Prometheus: %s = %.2f req/s for web", query, rate)
}

// podDoc renders a Pod of a Deployment's ReplicaSet, labelled app and
// version: the workload Istio would name for it is the Deployment.
func podDoc(name, app, version string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s-5f7c9d6b8-abcde\n  namespace: default\n"+
		"  labels: {app: %s, version: %s, pod-template-hash: 5f7c9d6b8}\n"+
		"  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: %s-5f7c9d6b8, uid: u, controller: true}]\n"+
		"spec: {serviceAccountName: %s-sa, containers: [{name: %s, image: %s}]}\n", name, app, version, name, name, name, name)
}

// TestRequestMetricsBothReporters runs Go HTTP (HTTP/1.1 and h2c) and
// gRPC servers and clients in meshed pods, servers started before and
// after the agent, drives known traffic through the services' VIPs, and
// checks istio_requests_total has exactly that traffic, seen by the
// client (reporter source) and by the server (reporter destination), with
// both workloads named on both sides.
func TestRequestMetricsBothReporters(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client, web, rpc := tp.Pod("client", true), tp.Pod("web", true), tp.Pod("rpc", true)
	const rpcVIP = "10.96.7.11"
	web.Start("http-serve", "-addr", ":8080") // before the agent
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	ref := func(name string) string {
		return "  targetRef: {kind: Pod, name: " + name + "-5f7c9d6b8-abcde, namespace: default}\n"
	}
	writeMesh(t, mesh, docs(
		svc("web", []string{vip4}, "http:80/TCP"), slice("web", "web", "IPv4", 0, []string{web.IP4.String()}, "http:8080/TCP")+ref("web"), podDoc("web", "web", "v1"),
		svc("rpc", []string{rpcVIP}, "grpc:50051/TCP"), slice("rpc", "rpc", "IPv4", 0, []string{rpc.IP4.String()}, "grpc:50051/TCP")+ref("rpc"), podDoc("rpc", "rpc", "v2"),
		// The client is no endpoint of any service, only a Pod with an
		// address: servers name it by that.
		podDoc("client", "client", "v1")+"status: {podIP: "+client.IP4.String()+"}\n",
	))
	// A client started before the agent too: found by the agent's first
	// scan, it calls once the test says so.
	goFile := filepath.Join(t.TempDir(), "go")
	early := client.Start("http-call", "-wait-for", goFile, "-url", "http://"+vip4+":80/ok", "-n", "4")
	accessLog := filepath.Join(t.TempDir(), "access.log")
	sm := tp.StartSockmesh("-f", mesh, "--telemetry", "--telemetry-rescan", "10m", "--access-log", accessLog)
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(sm.Output(), "telemetry: probing") })
	rpc.Start("grpc-serve", "-id", "rpc", "-addr", ":50051") // after the agent
	waitFor(t, 10*time.Second, func() bool { return strings.Count(sm.Output(), "telemetry: probing") >= 3 })
	os.WriteFile(goFile, nil, 0o644)
	waitFor(t, 10*time.Second, func() bool { done, _ := early.Exited(); return done })
	if out := early.Output(); !strings.Contains(out, `"HTTP/1.1 200":4`) {
		t.Fatalf("the early client: %s", out)
	}

	// Clients start after the agent; they wait a second before calling,
	// so their probes are in place (an exec is probed within
	// milliseconds, but a request in those milliseconds is not seen).
	web80 := "http://" + vip4 + ":80"
	var codes map[string]int
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-url", web80 + "/ok", "-n", "3"}, "HTTP/1.1 200"},
		{[]string{"-url", web80 + "/missing", "-n", "2", "-h2"}, "HTTP/2.0 404"},
		{[]string{"-url", web80 + "/fail", "-method", "POST", "-body", "100"}, "HTTP/1.1 500"},
	} {
		codes = nil
		client.RunJSON(&codes, append([]string{"http-call", "-after", "1s"}, c.args...)...)
		if len(codes) != 1 || codes[c.want] == 0 {
			t.Fatalf("http-call %v: %v, want only %q", c.args, codes, c.want)
		}
	}
	var res harness.DialResult
	client.RunJSON(&res, "grpc-call", "-after", "1s", "-target", rpcVIP+":50051", "-n", "4")
	if res.Servers["rpc"] != 4 {
		t.Fatalf("grpc-call: %+v", res)
	}
	res = harness.DialResult{}
	client.RunJSON(&res, "grpc-call", "-after", "1s", "-target", rpcVIP+":50051", "-n", "2", "-code", "5")
	if res.Errors["NotFound"] != 2 {
		t.Fatalf("grpc-call -code 5: %+v", res)
	}

	// reporter protocol response_code grpc_response_status source_workload
	// destination_workload destination_service -> count
	websvc, rpcsvc := "web.default.svc.cluster.local", "rpc.default.svc.cluster.local"
	want := map[string]float64{}
	for _, reporter := range []string{"source", "destination"} {
		want[reporter+" http 200  client web "+websvc] = 3 + 4 // the late clients' and the early one's
		want[reporter+" http 404  client web "+websvc] = 2
		want[reporter+" http 500  client web "+websvc] = 1
		want[reporter+" grpc 200 0 client rpc "+rpcsvc] = 4
		want[reporter+" grpc 200 5 client rpc "+rpcsvc] = 2
	}
	var got map[string]float64
	var series []map[string]string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got, series = requestSeries(t, sm.Get("/metrics")); maps.Equal(got, want) {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("istio_requests_total:\n%v\nwant\n%v", got, want)
	}
	// The agent's own health: the two servers carry probes now (the
	// clients have exited), nothing was dropped, nothing failed.
	waitFor(t, 5*time.Second, func() bool {
		return strings.Contains(sm.Get("/metrics"), "sockmesh_telemetry_processes_instrumented 2\n")
	})
	m := sm.Get("/metrics")
	for _, want := range []string{"sockmesh_telemetry_requests_dropped_total 0",
		"sockmesh_telemetry_attach_errors_total 0"} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?m)^sockmesh_telemetry_probes_attached [1-9]\d*$`).MatchString(m) {
		t.Errorf("/metrics: no probes attached")
	}
	// The access log has every request from both ends, the clients'
	// included, though each client exited right after its last request.
	want = map[string]float64{}
	for k, n := range got {
		f := strings.Fields(k) // reporter protocol code [grpc] src dst svc
		want[f[0]+" "+f[2]] += n
	}
	var lines map[string]float64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		lines = map[string]float64{}
		data, _ := os.ReadFile(accessLog)
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var e telemetry.AccessEntry
			if json.Unmarshal([]byte(l), &e) == nil && e.SourceWorkload == "client" {
				lines[fmt.Sprintf("%s %d", e.Reporter, e.ResponseCode)]++
			}
		}
		if maps.Equal(lines, want) {
			break
		}
	}
	if !maps.Equal(lines, want) {
		t.Errorf("access log lines by reporter and code %v, want %v", lines, want)
	}
	// gRPC sizes are the messages with their 5-byte prefixes, at both
	// ends: 4 OK calls (an empty request, the server's id back), 2 asking
	// for NotFound (no response message).
	okReq, okResp := 5+proto.Size(&testgrpc.SimpleRequest{}), 5+proto.Size(&testgrpc.SimpleResponse{ServerId: "rpc"})
	nfReq := 5 + proto.Size(&testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: 5, Message: "asked"}})
	wantSizes := map[string]float64{}
	for _, reporter := range []string{"source", "destination"} {
		wantSizes["istio_request_bytes "+reporter+" 0"] = float64(4 * okReq)
		wantSizes["istio_response_bytes "+reporter+" 0"] = float64(4 * okResp)
		wantSizes["istio_request_bytes "+reporter+" 5"] = float64(2 * nfReq)
		wantSizes["istio_response_bytes "+reporter+" 5"] = 0
	}
	if got := sizeSums(t, m, "grpc", "grpc_response_status"); !maps.Equal(got, wantSizes) {
		t.Errorf("gRPC size sums %v, want %v", got, wantSizes)
	}
	// HTTP sizes agree at both ends too: bodies of "hello" (/ok), "404
	// page not found\n" (HTTP/2 included), "boom\n" (/fail, after a
	// request body of 100 bytes).
	wantSizes = map[string]float64{}
	for _, reporter := range []string{"source", "destination"} {
		wantSizes["istio_request_bytes "+reporter+" 200"] = 0
		wantSizes["istio_response_bytes "+reporter+" 200"] = 7 * 5
		wantSizes["istio_request_bytes "+reporter+" 404"] = 0
		wantSizes["istio_response_bytes "+reporter+" 404"] = 2 * 19
		wantSizes["istio_request_bytes "+reporter+" 500"] = 100
		wantSizes["istio_response_bytes "+reporter+" 500"] = 5
	}
	if got := sizeSums(t, m, "http", "response_code"); !maps.Equal(got, wantSizes) {
		t.Errorf("HTTP size sums %v, want %v", got, wantSizes)
	}
	// Every label of both ends, as Istio fills them.
	for _, s := range series {
		for k, v := range map[string]string{
			"source_workload_namespace": "default", "source_app": "client", "source_version": "v1",
			"source_canonical_service": "client", "source_canonical_revision": "v1",
			"source_principal": "spiffe://cluster.local/ns/default/sa/client-sa", "source_cluster": "Kubernetes",
			"destination_workload_namespace": "default", "destination_service_namespace": "default",
			"destination_cluster": "Kubernetes", "response_flags": "-",
		} {
			if s[k] != v {
				t.Errorf("series %v: %s=%q, want %q", s, k, s[k], v)
			}
		}
		if dst := s["destination_workload"]; s["destination_app"] != dst || s["destination_service_name"] != dst ||
			s["destination_principal"] != "spiffe://cluster.local/ns/default/sa/"+dst+"-sa" {
			t.Errorf("series %v: destination labels disagree", s)
		}
	}
}

// series is one sample of a /metrics page: its labels and the metric.
type series struct {
	labels map[string]string
	metric *dto.Metric
}

// metricSeries parses a /metrics page and returns the series of family.
func metricSeries(t *testing.T, page, family string) []series {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(page))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	var out []series
	for _, m := range fams[family].GetMetric() {
		l := map[string]string{}
		for _, lp := range m.GetLabel() {
			l[lp.GetName()] = lp.GetValue()
		}
		out = append(out, series{l, m})
	}
	return out
}

// sizeSums reads the sums of istio_request_bytes and istio_response_bytes
// of one protocol's series, by "metric reporter status" (status: the
// label named so, grpc_response_status or response_code).
func sizeSums(t *testing.T, page, protocol, status string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, name := range []string{"istio_request_bytes", "istio_response_bytes"} {
		for _, s := range metricSeries(t, page, name) {
			if l := s.labels; l["request_protocol"] == protocol {
				out[name+" "+l["reporter"]+" "+l[status]] += s.metric.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

// requestSeries reads istio_requests_total from a /metrics page: counts by
// "reporter protocol code grpc-status source-workload destination-workload
// destination-service", and every series' labels.
func requestSeries(t *testing.T, page string) (map[string]float64, []map[string]string) {
	t.Helper()
	out := map[string]float64{}
	var all []map[string]string
	for _, s := range metricSeries(t, page, "istio_requests_total") {
		l := s.labels
		all = append(all, l)
		out[strings.Join([]string{l["reporter"], l["request_protocol"], l["response_code"], l["grpc_response_status"],
			l["source_workload"], l["destination_workload"], l["destination_service"]}, " ")] += s.metric.GetCounter().GetValue()
	}
	return out, all
}
