package tests

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// fastPathEvent reads one sockmesh_fastpath_events_total counter.
func fastPathEvent(t *testing.T, sm *harness.Sockmesh, event string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^sockmesh_fastpath_events_total\{event="` + event + `"\} (\S+)$`)
	m := re.FindStringSubmatch(sm.Get("/metrics"))
	if m == nil {
		t.Fatalf("no fast path counter %q in /metrics", event)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// fastPathMaps is the fastPath part of the agent's /maps.
type fastPathMaps struct {
	Enrolled    int `json:"enrolledCgroups"`
	Executables int `json:"executables"`
}

func readFastPathMaps(t *testing.T, sm *harness.Sockmesh) fastPathMaps {
	t.Helper()
	var maps struct {
		FastPath fastPathMaps `json:"fastPath"`
	}
	if err := json.Unmarshal([]byte(sm.Get("/maps")), &maps); err != nil {
		t.Fatal(err)
	}
	return maps.FastPath
}

// TestFastPathAcrossPods: with --fast-path, request/response between pods
// (network namespaces) through service VIPs. podbin's server greets, then
// echoes with io.Copy (splice): the agent finds splice in the binary, so its
// pod is not safe and its connections stay off the fast path: nothing is
// redirected to or from it and nothing hangs. rrbin, built without splice,
// is safe: between two rrbin pods every message goes socket to socket.
func TestFastPathAcrossPods(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client := tp.Pod("client", true)
	spliced := tp.Pod("spliced", true)
	plain := tp.Pod("plain", true)
	// podbin listens before the agent starts (the agent finds its
	// listener in /proc), rrbin after (sockops sees its listen()): either
	// way a client knows whether its server may receive.
	spliced.Serve("spliced", []int{8080}, nil)
	const vipFast = "10.96.7.11"
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	writeMesh(t, meshFile, docs(
		svc("web", []string{vip4}, "http:80/TCP"),
		slice("web-v4", "web", "IPv4", 0, []string{spliced.IP4.String()}, "http:8080/TCP"),
		svc("fast", []string{vipFast}, "http:80/TCP"),
		slice("fast-v4", "fast", "IPv4", 0, []string{plain.IP4.String()}, "http:8080/TCP")))
	sm := tp.StartSockmesh("-f", meshFile, "--fast-path")
	plain.StartRR("serve", "-addr", ":8080")
	deadline := time.Now().Add(10 * time.Second)
	for readFastPathMaps(t, sm).Executables < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent classified %d executables, want podbin and rrbin", readFastPathMaps(t, sm).Executables)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A pod's first process comes through "ip netns exec": the agent
	// has not judged ip yet, so the client pod is dirty for the moment it
	// takes to read it (the first connection may miss the fast path). A
	// first run lets the agent judge ip.
	var warm struct{}
	client.RunRRJSON(&warm, "rr", "-addr", vipFast+":80", "-n", "1")
	for readFastPathMaps(t, sm).Executables < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent classified %d executables, want podbin, rrbin and ip", readFastPathMaps(t, sm).Executables)
		}
		time.Sleep(20 * time.Millisecond)
	}

	const n = 2000
	rr := func(run func(v any, args ...string), addr string) {
		t.Helper()
		var r struct {
			Ops     int     `json:"ops"`
			OpsPerS float64 `json:"opsPerS"`
		}
		run(&r, "rr", "-addr", addr, "-n", strconv.Itoa(n), "-size", "64")
		if r.Ops != n {
			t.Fatalf("rr to %s: %+v", addr, r)
		}
		t.Logf("rr to %s: %.0f round trips/s", addr, r.OpsPerS)
	}
	redirected := func() float64 { return fastPathEvent(t, sm, "redirect_msgs") }

	// rrbin to rrbin: every request and every response.
	before := redirected()
	rr(client.RunRRJSON, vipFast+":80")
	if got := redirected() - before; got < 2*n {
		t.Errorf("%v messages redirected for %d round trips between two rrbin pods, want >= %d", got, n, 2*n)
	}

	// rrbin to podbin and podbin to podbin: podbin can splice, so the
	// connection does not join at all (it would only pay tcp_bpf's
	// slower sends and its copies of spliced pages).
	for _, c := range []struct {
		name string
		run  func(v any, args ...string)
	}{{"rrbin", client.RunRRJSON}, {"podbin", client.RunJSON}} {
		before = redirected()
		pairs, added := fastPathEvent(t, sm, "unsafe_pairs"), fastPathEvent(t, sm, "socks_added")
		rr(c.run, vip4+":80")
		if got := redirected() - before; got != 0 {
			t.Errorf("%s to podbin: %v messages redirected to or from a program that splices", c.name, got)
		}
		if fastPathEvent(t, sm, "unsafe_pairs") == pairs || fastPathEvent(t, sm, "socks_added") != added {
			t.Errorf("%s to podbin: the connection joined the fast path or was not counted as an unsafe pair", c.name)
		}
	}

	if got := fastPathEvent(t, sm, "splice_stranded"); got != 0 {
		t.Errorf("%v sockets spliced with redirected data queued", got)
	}
	if m := readFastPathMaps(t, sm); m.Enrolled < 3 {
		t.Errorf("/maps shows %d enrolled cgroups, want the three pods at least", m.Enrolled)
	}
}
