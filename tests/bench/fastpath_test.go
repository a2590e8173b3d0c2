package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/dataplane"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// BenchmarkSpliceWatch measures what the fast path's splice watch (a raw
// tracepoint on sys_enter, so on every system call of the node) costs a
// system call that is not splice: getppid in a loop, with the fast path
// loaded vs not, interleaved rounds, medians.
func BenchmarkSpliceWatch(b *testing.B) {
	testutil.Privileged(b)
	cg := testutil.Cgroup(b)
	const calls, rounds = 2_000_000, 7
	perCall := func() float64 {
		start := time.Now()
		for range calls {
			syscall.Getppid()
		}
		return float64(time.Since(start).Nanoseconds()) / calls
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var off, on []float64
	for range rounds {
		off = append(off, perCall())
		pin := filepath.Join(b.TempDir(), "bpf")
		fp, err := dataplane.OpenFastPath(dataplane.Config{PinDir: pin, Cgroup: cg}, log)
		if err != nil {
			b.Fatal(err)
		}
		on = append(on, perCall())
		fp.Close()
		if err := dataplane.Cleanup(pin); err != nil {
			b.Fatal(err)
		}
	}
	mOff, mOn := median(slices.Clone(off)), median(slices.Clone(on))
	b.ReportMetric(mOff, "ns/syscall-off")
	b.ReportMetric(mOn, "ns/syscall-on")
	b.ReportMetric(mOn/mOff, "ratio")
	b.Logf("getppid: %.1f ns without the fast path, %.1f ns with it (%.2fx); rounds off %v on %v", mOff, mOn, mOn/mOff, off, on)
}

// BenchmarkFastPath compares traffic between two pods on this node with the
// fast path on and off (off: no sockmesh program loaded at all), in
// interleaved rounds, reporting medians and ratios on/off:
//
//   - request/response over one connection, 1 B and 1 KiB (tests/rrbin):
//     ops/s, p50, p99; through Go's net package, and with blocking system
//     calls on locked threads at both ends (rr blocking: the transport
//     without Go's netpoller, as sockperf measures it, but down to 1 B);
//   - bulk echo in 64 KiB and in 1 KiB writes (rrbin bulk, checksummed);
//   - bulk in 1 KiB writes through a proxy pod that copies with io.Copy,
//     i.e. splice (podbin proxy): its connections stay off the fast path;
//   - the same shapes with the tools people use: sockperf ping-pong (64 B
//     across CPUs; 14 B and 1 KiB with both ends on one CPU, as the Go
//     harness's "same CPU" runs) and throughput (1 KiB), iperf3 (one
//     stream, its default 128 KiB writes and 64 KiB writes).
func BenchmarkFastPath(b *testing.B) {
	testutil.Privileged(b)
	for _, tool := range []string{"sockperf", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s is not installed (make deps-test installs it): %v", tool, err)
		}
	}
	const rounds = 5
	_, podbin, err := harness.Binaries()
	if err != nil {
		b.Fatal(err)
	}
	rrbin, err := harness.RRBin()
	if err != nil {
		b.Fatal(err)
	}
	// Where processes run decides a round trip's cost here more than
	// anything else (a wake-up on the other vCPU costs ~60 µs on these
	// nested-virtualised machines, unpinned runs are bimodal), so every
	// process is pinned: servers and the proxy on CPU 0, clients on CPU 1,
	// and request/response is also measured with the client on CPU 0.
	pinned := func(cpu, bin string, args ...string) []string {
		return append([]string{"-c", cpu, bin}, args...)
	}
	tp := harness.New(b)
	client, server, proxy := tp.Pod("client", true), tp.Pod("server", true), tp.Pod("proxy", true)
	srv := server.IP4.String()
	// Servers start anew every round, after the fast path is loaded in
	// the rounds that have it, as workloads start on a node whose agent
	// runs: their listeners are known to it (see sockmap.c).
	startServers := func() []*harness.Proc {
		procs := []*harness.Proc{
			server.StartExec("ready", "taskset", pinned("0", rrbin, "serve", "-addr", ":8081")...),
			server.StartExec("ready", "taskset", pinned("0", rrbin, "serve", "-addr", ":8082", "-blocking")...),
			proxy.StartExec("ready", "taskset", pinned("0", podbin, "proxy", "-listen", ":9000", "-to", srv+":8081")...),
			// Neither flushes its output into a pipe: wait for their sockets.
			server.StartExec("", "taskset", pinned("0", "sockperf", "server", "--tcp", "-i", srv, "-p", "11111")...),
			server.StartExec("", "taskset", pinned("0", "iperf3", "-s", "-p", "5201")...),
		}
		for _, port := range []string{"11111", "5201"} {
			deadline := time.Now().Add(15 * time.Second)
			for {
				out, _ := server.Exec("ss", "-Hltn", "sport = :"+port)
				if strings.TrimSpace(out) != "" {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("nothing listens on port %s in the server pod", port)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		return procs
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pin := filepath.Join(b.TempDir(), "bpf")
	var fp *dataplane.FastPath
	on := func() {
		var err error
		if fp, err = dataplane.OpenFastPath(dataplane.Config{PinDir: pin, Cgroup: tp.Mesh}, log); err != nil {
			b.Fatal(err)
		}
		if err := fp.EnrollTree(tp.Mesh); err != nil {
			b.Fatal(err)
		}
	}
	off := func() {
		if fp == nil {
			return
		}
		fp.Close()
		fp = nil
		// Every connection of the round has closed by now; wait for
		// the kernel to let go of their sockets, then remove it all.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := dataplane.Cleanup(pin)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				b.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	defer off()

	type sample map[string]float64
	results := map[bool][]sample{}
	var redirected []uint64
	run := func(fast bool) {
		procs := startServers()
		defer func() {
			for _, p := range procs {
				p.Stop()
			}
		}()
		if fp != nil {
			// What the agent's scan would do within a second: judge
			// the servers' cgroups now that they run.
			if err := fp.EnrollTree(tp.Mesh); err != nil {
				b.Fatal(err)
			}
		}
		s := sample{}
		for _, cpu := range []string{"0", "1"} {
			for _, size := range []int{1, 1024} {
				var r rrResult
				client.RunJSONWith(&r, "taskset", pinned(cpu, rrbin, "rr", "-addr", srv+":8081", "-n", fmt.Sprint(rrOps), "-size", fmt.Sprint(size))...)
				k := fmt.Sprintf("rr %dB %s", size, map[string]string{"0": "same CPU", "1": "2 CPUs"}[cpu])
				s[k+" ops/s"], s[k+" p50 µs"], s[k+" p99 µs"] = r.OpsPerS, r.P50us, r.P99us
				// The same with blocking system calls at both ends
				// (workload.BlockingConn): the transport without Go's
				// netpoller and scheduler, as sockperf measures it, but
				// down to 1 byte.
				client.RunJSONWith(&r, "taskset", pinned(cpu, rrbin, "rr", "-blocking", "-addr", srv+":8082", "-n", fmt.Sprint(rrOps), "-size", fmt.Sprint(size))...)
				k = fmt.Sprintf("rr blocking %dB %s", size, map[string]string{"0": "same CPU", "1": "2 CPUs"}[cpu])
				s[k+" ops/s"], s[k+" p50 µs"], s[k+" p99 µs"] = r.OpsPerS, r.P50us, r.P99us
			}
		}
		for _, c := range []struct {
			name, addr, bytes, write string
		}{
			{"bulk 64KiB writes", srv + ":8081", fmt.Sprint(256 << 20), fmt.Sprint(64 << 10)},
			{"bulk 1KiB writes", srv + ":8081", fmt.Sprint(64 << 20), "1024"},
			{"bulk 1KiB via splice proxy", proxy.IP4.String() + ":9000", fmt.Sprint(64 << 20), "1024"},
		} {
			var r struct {
				MBPerS    float64 `json:"mbPerS"`
				Identical bool    `json:"identical"`
			}
			client.RunJSONWith(&r, "taskset", pinned("1", rrbin, "bulk", "-addr", c.addr, "-bytes", c.bytes, "-write", c.write)...)
			if !r.Identical {
				b.Fatalf("%s (fast path %v): the echo differs from what was sent", c.name, fast)
			}
			s[c.name+" MB/s"] = r.MBPerS
		}
		out, err := client.Exec("taskset", pinned("1", "sockperf", "ping-pong", "--tcp", "-i", srv, "-p", "11111", "-t", "3", "-m", "64")...)
		if err != nil {
			b.Fatalf("sockperf ping-pong: %v\n%s", err, out)
		}
		s["sockperf ping-pong 64B 2 CPUs p50 µs"] = sockperfValue(b, out, `percentile 50.000 =\s*([0-9.]+)`)
		s["sockperf ping-pong 64B 2 CPUs p99 µs"] = sockperfValue(b, out, `percentile 99.000 =\s*([0-9.]+)`)
		// The request/response shapes with the client beside the server,
		// where a round trip costs what the two sockets cost and not a
		// cross-CPU wake-up (14 B is sockperf's smallest message).
		for _, size := range []string{"14", "1024"} {
			out, err := client.Exec("taskset", pinned("0", "sockperf", "ping-pong", "--tcp", "-i", srv, "-p", "11111", "-t", "3", "-m", size)...)
			if err != nil {
				b.Fatalf("sockperf ping-pong: %v\n%s", err, out)
			}
			k := "sockperf ping-pong " + size + "B same CPU"
			s[k+" ops/s"] = sockperfValue(b, out, `\[Valid Duration\].*ReceivedMessages=([0-9]+)`) / sockperfValue(b, out, `\[Valid Duration\] RunTime=([0-9.]+)`)
			s[k+" p50 µs"] = sockperfValue(b, out, `percentile 50.000 =\s*([0-9.]+)`)
			s[k+" p99 µs"] = sockperfValue(b, out, `percentile 99.000 =\s*([0-9.]+)`)
		}
		out, err = client.Exec("taskset", pinned("1", "sockperf", "throughput", "--tcp", "-i", srv, "-p", "11111", "-t", "3", "-m", "1024")...)
		if err != nil {
			b.Fatalf("sockperf throughput: %v\n%s", err, out)
		}
		s["sockperf throughput 1KiB msg/s"] = sockperfValue(b, out, `Message Rate is ([0-9.]+)`)
		for _, w := range []struct{ name, len string }{{"iperf3 Gbit/s", "128K"}, {"iperf3 64KiB writes Gbit/s", "64K"}} {
			out, err = client.Exec("taskset", pinned("1", "iperf3", "-c", srv, "-p", "5201", "-t", "3", "-l", w.len, "-J")...)
			if err != nil {
				b.Fatalf("iperf3: %v\n%s", err, out)
			}
			var ip struct {
				End struct {
					Received struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal([]byte(out), &ip); err != nil {
				b.Fatalf("iperf3 output: %v\n%s", err, out)
			}
			s[w.name] = ip.End.Received.BitsPerSecond / 1e9
		}
		results[fast] = append(results[fast], s)
	}
	for round := range rounds {
		for _, fast := range [][]bool{{false, true}, {true, false}}[round%2] {
			if fast {
				on()
				before, err := fp.Counters()
				if err != nil {
					b.Fatal(err)
				}
				run(true)
				after, err := fp.Counters()
				if err != nil {
					b.Fatal(err)
				}
				redirected = append(redirected, after.RedirectBytes-before.RedirectBytes)
				b.Logf("round %d, fast path on: %d sockets joined, %d unsafe pairs, %d to other nodes or unmeshed, %d sends waited for a handover",
					round, after.SocksAdded-before.SocksAdded, after.UnsafePairs-before.UnsafePairs,
					after.RemotePeers-before.RemotePeers, after.HandoverWaits-before.HandoverWaits)
				if after.SpliceStranded != 0 {
					b.Fatalf("%d sockets spliced with redirected data queued", after.SpliceStranded)
				}
				off()
			} else {
				run(false)
			}
		}
	}
	keys := make([]string, 0, len(results[true][0]))
	for k := range results[true][0] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b.Logf("fast path on vs off, between two pods on this node; %d interleaved rounds, medians; bytes redirected a round: %v", rounds, redirected)
	for _, k := range keys {
		var on, off []float64
		for i := range rounds {
			on = append(on, results[true][i][k])
			off = append(off, results[false][i][k])
		}
		mOn, mOff := median(on), median(off)
		ratio := mOn / mOff
		b.Logf("  %-34s on %12.1f  off %12.1f  ratio %.3fx", k, mOn, mOff, ratio)
		b.ReportMetric(ratio, strings.ReplaceAll(k, " ", "-")+"-ratio")
	}
}

// sockperfValue reads the number the pattern's group matches in sockperf's
// output.
func sockperfValue(b *testing.B, out, pattern string) float64 {
	b.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("no %q in sockperf's output:\n%s", pattern, out)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		b.Fatal(err)
	}
	return v
}
