package bench

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/telemetry"
)

// BenchmarkHTTPProbes loads a Go HTTP server on loopback with wrk, probes
// off and on, interleaved, for a trivial and a 1 ms handler, and reports
// requests/s as ratios.
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
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF stats: %v", err)
	}
	defer stats.Close()
	for _, c := range []struct{ name, path string }{{"trivial handler", "/ok"}, {"1 ms handler", "/slow"}} {
		benchProbes(b, wrk, bin, srv.Process.Pid, "http://"+strings.TrimSpace(addr)+c.path, c.name)
	}
}

// benchProbes measures one handler: wrk with the probes off and on.
func benchProbes(b *testing.B, wrk, bin string, pid int, url, name string) {
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
	var bpfTime time.Duration
	for round := range 5 {
		measureOff := func() { off = append(off, run()) }
		measureOn := func() {
			// As the agent runs it: aggregates in the kernel, no events.
			tr, err := telemetry.TraceHTTP(bin, pid, false)
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
			rt, _, err := tr.RunTime()
			if err != nil {
				b.Fatal(err)
			}
			bpfTime += rt
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
	target := map[string]string{"trivial handler": "0.90x", "1 ms handler": "0.99x"}[name]
	b.ReportMetric(ratio, strings.ReplaceAll(name, " ", "-")+"-req/s-ratio")
	perReq := float64(bpfTime.Nanoseconds()) / float64(max(events, 1))
	b.ReportMetric(perReq, strings.ReplaceAll(name, " ", "-")+"-bpf-ns/req")
	b.Logf("%s, wrk -t1 -c16 -d3s, 5 interleaved rounds, medians: probes off %.0f req/s, on %.0f req/s, ratio %.3fx (target >= %s); %d requests counted, %d dropped; BPF run time %.0f ns a request (both probes, BPF stats; the uprobe traps are not in it)",
		name, median(off), median(on), ratio, target, events, drops, perReq)
}
