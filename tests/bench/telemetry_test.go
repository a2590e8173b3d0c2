package bench

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/telemetry"
	"github.com/sockmesh/sockmesh/node/telemetry/gobin"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// BenchmarkHTTPProbes loads a Go HTTP server on loopback with wrk, probes
// off and on, interleaved, for a trivial handler (unpinned, and with the
// server alone on one CPU) and two of 1 ms (sleeping and working), and
// reports requests/s as ratios.
func BenchmarkHTTPProbes(b *testing.B) {
	testutil.Privileged(b)
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Fatalf("wrk not found (apt-get install wrk): %v", err)
	}
	bin := testutil.BuildGo(b, "../../node/telemetry/testdata/httpserver", "")
	srv := testutil.Start(b, bin)
	addr := srv.Line(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF stats: %v", err)
	}
	defer stats.Close()
	// A 1 ms handler two ways: sleeping (time.Sleep: latency-bound with
	// 16 connections, and Go's timers round the sleep to whole
	// milliseconds of netpoll, which a few µs more a request can tip),
	// and working (1 ms of CPU: the server saturated, the probes' share
	// of a request what it is).
	for _, c := range []struct{ name, path string }{{"trivial handler", "/ok"}, {"1 ms handler", "/slow"}, {"1 ms CPU handler", "/busy"}} {
		benchProbes(b, []string{wrk}, bin, srv.Pid(), "http://"+addr+c.path, c.name)
	}
	// The trivial handler again with the server alone on CPU 0 (so one
	// P) and wrk on CPU 1: the server saturated, and every µs the probes
	// take is a µs less for requests. Unpinned, the server's two Ps share
	// both CPUs with wrk.
	pinned := testutil.Start(b, "taskset", "-c", "0", bin)
	benchProbes(b, []string{"taskset", "-c", "1", wrk}, bin, pinned.Pid(), "http://"+pinned.Line(b)+"/ok", "trivial handler, server on one CPU")
}

// metricName makes a benchmark's name a metric's prefix.
func metricName(name string) string {
	return strings.NewReplacer(" ", "-", ",", "").Replace(strings.ToLower(name))
}

// benchProbes measures one handler: wrk (the command given) with the
// probes off and on.
func benchProbes(b *testing.B, wrk []string, bin string, pid int, url, name string) {
	rps := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	run := func() float64 {
		out, err := exec.Command(wrk[0], append(wrk[1:], "-t1", "-c16", "-d3s", url)...).CombinedOutput()
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
	var off, on, empty, one []float64
	var events int
	var drops uint64
	var bpfTime time.Duration
	for round := range 5 {
		// The floor: programs that do nothing, at the same two points.
		// What they cost is the uprobes' own (the trap, the emulated
		// instruction, running a program), which no program can avoid.
		// And at the end point alone: what any design that sees a
		// request's end in the program costs at least.
		measureEmpty := func() {
			closeEmpty := emptyProbes(b, bin, pid, serverPoints)
			empty = append(empty, run())
			closeEmpty()
			closeEmpty = emptyProbes(b, bin, pid, serverPoints[1:])
			one = append(one, run())
			closeEmpty()
		}
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
			measureEmpty()
		} else {
			measureEmpty()
			measureOn()
			measureOff()
		}
	}
	ratio := median(on) / median(off)
	floor := median(empty) / median(off)
	floor1 := median(one) / median(off)
	b.ReportMetric(floor, metricName(name)+"-empty-probes-ratio")
	b.ReportMetric(floor1, metricName(name)+"-one-empty-probe-ratio")
	target := map[string]string{"trivial handler": "0.90x", "trivial handler, server on one CPU": "0.90x", "1 ms handler": "0.99x", "1 ms CPU handler": "0.99x"}[name]
	b.ReportMetric(ratio, metricName(name)+"-req/s-ratio")
	perReq := float64(bpfTime.Nanoseconds()) / float64(max(events, 1))
	b.ReportMetric(perReq, metricName(name)+"-bpf-ns/req")
	b.Logf("%s, wrk -t1 -c16 -d3s, 5 interleaved rounds, medians: probes off %.0f req/s, on %.0f req/s, ratio %.3fx (target >= %s); empty programs at the same two points %.0f req/s, %.3fx (the floor), at the end point alone %.0f req/s, %.3fx; %d requests counted, %d dropped; BPF run time %.0f ns a request (both probes, BPF stats; the uprobe traps are not in it)",
		name, median(off), median(on), ratio, target, median(empty), floor, median(one), floor1, events, drops, perReq)
}

// serverPoints are where the HTTP/1 server probes sit: the request's
// start (the CALL of serverHandler.ServeHTTP in (*conn).serve), then its
// end (finishRequest's entry).
var serverPoints = []struct{ fn, callsIn string }{
	{"net/http.serverHandler.ServeHTTP", "net/http.(*conn).serve"},
	{"net/http.(*response).finishRequest", ""},
}

// emptyProbes attaches programs that only return at points (where the
// HTTP server probes go), for process pid, and returns what detaches them.
func emptyProbes(b *testing.B, bin string, pid int, points []struct{ fn, callsIn string }) func() {
	b.Helper()
	gb, err := gobin.Open(bin)
	if err != nil {
		b.Fatal(err)
	}
	defer gb.Close()
	var addrs []uint64
	for _, p := range points {
		f, err := gb.Func(p.fn)
		if err != nil {
			b.Fatal(err)
		}
		if p.callsIn == "" {
			at, err := gb.EntryProbe(f)
			if err != nil {
				b.Fatal(err)
			}
			addrs = append(addrs, at)
			continue
		}
		caller, err := gb.Func(p.callsIn)
		if err != nil {
			b.Fatal(err)
		}
		at, err := gb.CallSites(caller, f)
		if err != nil || len(at) == 0 {
			b.Fatalf("no CALL of %s in %s: %v", p.fn, p.callsIn, err)
		}
		addrs = append(addrs, at...)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Kprobe, AttachType: ebpf.AttachTraceUprobeMulti, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	ex, err := link.OpenExecutable(bin)
	if err != nil {
		b.Fatal(err)
	}
	l, err := ex.UprobeMulti(nil, prog, &link.UprobeMultiOptions{Addresses: addrs, PID: uint32(pid)})
	if err != nil {
		b.Fatal(err)
	}
	return func() { l.Close(); prog.Close() }
}

// BenchmarkHTTPClientProbes measures what the client-side probes cost a Go
// HTTP client (podbin http-call: 2,000 sequential GETs over one keep-alive
// connection to a server on loopback), probes off and on, interleaved: a
// request ends on the jump testing the transport's error (emulated), or
// on a RET of roundTrip (single-stepped) on other paths; with a body that
// is not all there with the headers (chunked, two writes), on the body's
// closure. Over HTTP/2 (h2c), net/http's own and x/net's transport: a
// request ends with its stream, on the read loop's endStream (one hit
// more), at the caller's headers when that came first (a small response:
// /ok); x/net's success point is the jump testing the error before its
// retry loop returns.
func BenchmarkHTTPClientProbes(b *testing.B) {
	testutil.Privileged(b)
	bin := testutil.BuildGo(b, "../../node/telemetry/testdata/httpserver", "")
	srv := testutil.Start(b, "taskset", "-c", "0", bin)
	url := "http://" + srv.Line(b) + "/ok"
	benchClient(b, telemetry.HTTPClient, "Go HTTP client", "request", `"HTTP/1.1 200":`,
		"http-call", "-url", url)
	// A chunked body sent in two writes: its end is not there with the
	// headers, so the request ends on the body's closure (one hit more).
	benchClient(b, telemetry.HTTPClient, "Go HTTP client, chunked body", "request", `"HTTP/1.1 200":`,
		"http-call", "-url", strings.TrimSuffix(url, "/ok")+"/chunked?pause=0s")
	benchClient(b, telemetry.HTTPClient, "Go HTTP/2 client", "request", `"HTTP/2.0 200":`,
		"http-call", "-h2", "-url", url)
	benchClient(b, telemetry.HTTPClient, "Go HTTP/2 client, chunked body", "request", `"HTTP/2.0 200":`,
		"http-call", "-h2", "-url", strings.TrimSuffix(url, "/ok")+"/chunked?pause=0s")
	benchClient(b, telemetry.HTTPClient, "x/net HTTP/2 client", "request", `"HTTP/2.0 200":`,
		"http-call", "-xh2", "-url", url)
}

// BenchmarkGRPCClientProbes measures what the client-side probes cost a
// gRPC client (podbin grpc-call: 2,000 sequential unary calls over one
// channel to a server on loopback), probes off and on, interleaved.
func BenchmarkGRPCClientProbes(b *testing.B) {
	testutil.Privileged(b)
	_, podbin, err := harness.Binaries()
	if err != nil {
		b.Fatal(err)
	}
	srv := testutil.Start(b, "taskset", "-c", "0", podbin, "grpc-serve", "-id", "bench", "-addr", "127.0.0.1:0", "-print-addr")
	addr := srv.Line(b)
	if ready := srv.Line(b); ready != "ready" {
		b.Fatalf("grpc-serve: %q", ready)
	}
	benchClient(b, telemetry.GRPCClient, "gRPC client", "call", `"bench":`, "grpc-call", "-target", addr)
}

// benchClient runs podbin with args (a client command that takes -wait-for
// and -n) for 2,000 requests, probes off and on in 5 interleaved rounds,
// and reports the ratio of their rates and the time the probes add to a
// request. The output must show done, followed by the count. Client and
// server both run on CPU 0: a sequential request across the two CPUs
// waits for wake-ups on the other vCPU (~60 µs each on these machines),
// and their noise hid the ~20 µs a single-stepped RET costs.
func benchClient(b *testing.B, kind telemetry.Kind, name, what, done string, args ...string) {
	_, podbin, err := harness.Binaries()
	if err != nil {
		b.Fatal(err)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF stats: %v", err)
	}
	defer stats.Close()
	const n = 2000
	var off, on []float64
	var counted uint64
	var bpfTime time.Duration
	var libs []string
	run := func(probed bool) float64 {
		goFile := filepath.Join(b.TempDir(), "go")
		cmd := exec.Command("taskset", append([]string{"-c", "0", podbin}, append(args, "-wait-for", goFile, "-n", strconv.Itoa(n))...)...)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		r := bufio.NewReader(out)
		if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
			b.Fatalf("%s: %q %v", args[0], line, err)
		}
		var tr *telemetry.HTTPTracer
		if probed {
			if tr, err = telemetry.TraceHTTP(podbin, cmd.Process.Pid, false); err != nil {
				b.Fatal(err)
			}
			libs = tr.Libraries
		}
		start := time.Now()
		os.WriteFile(goFile, nil, 0o644)
		result, _ := io.ReadAll(r)
		if err := cmd.Wait(); err != nil || !strings.Contains(string(result), done+strconv.Itoa(n)) {
			b.Fatalf("%s: %v %s", args[0], err, result)
		}
		rate := n / time.Since(start).Seconds()
		if tr != nil {
			st, _ := tr.Stats()
			for k, t := range st {
				if k.Kind == kind {
					counted += t.Count
				}
			}
			rt, _, _ := tr.RunTime()
			bpfTime += rt
			tr.Close()
		}
		return rate
	}
	for round := range 5 {
		if round%2 == 0 {
			off = append(off, run(false))
			on = append(on, run(true))
		} else {
			on = append(on, run(true))
			off = append(off, run(false))
		}
	}
	ratio := median(on) / median(off)
	perReq := float64(bpfTime.Nanoseconds()) / float64(max(counted, 1))
	extra := (1/median(on) - 1/median(off)) * 1e6
	unit := metricName(name)
	b.ReportMetric(ratio, unit+"-"+what+"s/s-ratio")
	b.ReportMetric(extra, unit+"-extra-µs/"+what)
	b.Logf("%s (%s), %d sequential %ss, 5 interleaved rounds, medians: probes off %.0f %ss/s, on %.0f %ss/s, ratio %.3fx (%.1f µs more a %s); %d of %d %ss counted; BPF run time %.0f ns a %s (a single-stepped RET is not in it)",
		name, strings.Join(libs, ", "), n, what, median(off), what, median(on), what, ratio, extra, what, counted, 5*n, what, perReq, what)
}
