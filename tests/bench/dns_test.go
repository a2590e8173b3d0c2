package bench

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
)

type dnsLoadResult struct {
	QPS    float64 `json:"qps"`
	P50us  float64 `json:"p50us"`
	P99us  float64 `json:"p99us"`
	Errors int     `json:"errors"`
}

// BenchmarkDNS compares, interleaved round by round on loopback, the
// agent's DNS server answering a mesh name and a cached external name with
// the peer resolver (dnsmasq from Debian) answering that external name
// itself, as it does when queried directly.
func BenchmarkDNS(b *testing.B) {
	testutil.Privileged(b)
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		b.Fatalf("dnsmasq not found (apt-get install dnsmasq-base): %v", err)
	}
	tp := harness.New(b)
	upstream := freeUDP(b)
	peer := exec.Command(dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon", "--user=root",
		"--listen-address=127.0.0.1", "--bind-interfaces", "--port="+portOf(upstream), "--cache-size=10000",
		"--address=/ext.bench.test/192.0.2.7", "--local-ttl=300", "--log-facility=-", "--quiet-dhcp")
	if err := peer.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { peer.Process.Kill(); peer.Wait() }()

	mesh := filepath.Join(b.TempDir(), "mesh.yaml")
	os.WriteFile(mesh, []byte(meshOf(100, "10.96.1.1", "10.77.0.250")), 0o644)
	sm := tp.StartSockmesh("-f", mesh, "--dns-upstream", upstream)
	_, podbin, _ := harness.Binaries()

	load := func(server, name string) dnsLoadResult {
		out, err := exec.Command(podbin, "dns-load", "-server", server, "-name", name, "-duration", "2s", "-c", "4").Output()
		if err != nil {
			b.Fatalf("dns-load %s %s: %v", server, name, err)
		}
		var r dnsLoadResult
		if err := json.Unmarshal(out, &r); err != nil {
			b.Fatal(err)
		}
		if r.Errors > 0 {
			b.Fatalf("dns-load %s %s: %d errors", server, name, r.Errors)
		}
		return r
	}
	type series struct{ qps, p99 []float64 }
	runs := map[string]*series{"mesh": {}, "cached": {}, "direct": {}}
	targets := map[string][2]string{
		"mesh":   {sm.DNS, "bench.default.svc.cluster.local"},
		"cached": {sm.DNS, "api.ext.bench.test"},
		"direct": {upstream, "api.ext.bench.test"},
	}
	load(sm.DNS, "api.ext.bench.test") // warm the cache
	order := []string{"mesh", "cached", "direct"}
	for round := range 5 {
		for i := range order {
			k := order[(i+round)%len(order)]
			r := load(targets[k][0], targets[k][1])
			runs[k].qps = append(runs[k].qps, r.QPS)
			runs[k].p99 = append(runs[k].p99, r.P99us)
		}
	}
	q := func(k string) float64 { return median(runs[k].qps) }
	p := func(k string) float64 { return median(runs[k].p99) }
	b.ReportMetric(q("mesh")/q("direct"), "mesh-qps-ratio")
	b.ReportMetric(q("cached")/q("direct"), "cached-qps-ratio")
	b.ReportMetric(p("mesh")/p("direct"), "mesh-p99-ratio")
	b.ReportMetric(p("cached")/p("direct"), "cached-p99-ratio")
	b.Logf("UDP A queries, 4 clients with one query in flight each, 2 s a round, 5 interleaved rounds, medians:")
	for _, k := range order {
		b.Logf("  %-6s %s: %.0f q/s, p99 %.0f µs", k, map[string]string{"mesh": "agent, mesh name", "cached": "agent, cached external name", "direct": "dnsmasq directly"}[k], q(k), p(k))
	}
	b.Logf("ratios vs dnsmasq: mesh %.2fx q/s, %.2fx p99; cached external %.2fx q/s, %.2fx p99", q("mesh")/q("direct"), p("mesh")/p("direct"), q("cached")/q("direct"), p("cached")/p("direct"))
}

func freeUDP(b *testing.B) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
