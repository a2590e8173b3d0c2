package bench

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/telemetry"
)

// BenchmarkHTTPProbes loads a trivial Go HTTP server on loopback with wrk,
// probes off and on, interleaved, and reports requests/s as a ratio and
// the probes' BPF cost per request.
func BenchmarkHTTPProbes(b *testing.B) {
	testutil.Privileged(b)
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Fatalf("wrk not found (apt-get install wrk): %v", err)
	}
	bin := filepath.Join(b.TempDir(), "httpserver")
	if out, err := exec.Command("go", "build", "-o", bin, "../../node/telemetry/testdata/httpserver").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	srv := exec.Command(bin)
	stdout, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	addr, _ := bufio.NewReader(stdout).ReadString('\n')
	url := "http://" + strings.TrimSpace(addr) + "/ok"

	rps := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	run := func() float64 {
		out, err := exec.Command(wrk, "-t1", "-c16", "-d3s", url).CombinedOutput()
		if err != nil {
			b.Fatalf("wrk: %v\n%s", err, out)
		}
		m := rps.FindSubmatch(out)
		if m == nil {
			b.Fatalf("wrk output:\n%s", out)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	var off, on []float64
	var events int
	var drops uint64
	for round := range 5 {
		measureOff := func() { off = append(off, run()) }
		measureOn := func() {
			// As the agent runs it: aggregates in the kernel, no events.
			tr, err := telemetry.TraceHTTP(bin, srv.Process.Pid, false)
			if err != nil {
				b.Fatal(err)
			}
			on = append(on, run())
			stats, err := tr.Stats()
			if err != nil {
				b.Fatal(err)
			}
			for _, t := range stats {
				events += int(t.Count)
			}
			d, _ := tr.Drops()
			drops += d
			tr.Close()
		}
		if round%2 == 0 {
			measureOff()
			measureOn()
		} else {
			measureOn()
			measureOff()
		}
	}
	ratio := median(on) / median(off)
	b.ReportMetric(ratio, "req/s-ratio")
	b.ReportMetric(float64(drops), "events-dropped")
	b.Logf("trivial handler, wrk -t1 -c16 -d3s, 5 interleaved rounds, medians: probes off %.0f req/s, on %.0f req/s, ratio %.3fx (target >= 0.90x); %d requests counted, %d dropped",
		median(off), median(on), ratio, events, drops)
}
