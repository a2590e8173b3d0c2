package tests

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

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

// TestFastPathAcrossPods: with --fast-path, request/response between two
// pods (network namespaces) through a service VIP goes socket to socket,
// and the counters show it in /metrics and /maps.
func TestFastPathAcrossPods(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client := tp.Pod("client", true)
	be := tp.Pod("be", true)
	be.Serve("be", []int{8080}, nil)
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	writeMesh(t, meshFile, docs(
		svc("web", []string{vip4}, "http:80/TCP"),
		slice("web-v4", "web", "IPv4", 0, []string{be.IP4.String()}, "http:8080/TCP")))
	sm := tp.StartSockmesh("-f", meshFile, "--fast-path")

	before := fastPathEvent(t, sm, "redirect_msgs")
	const n = 2000
	var r struct {
		Ops     int     `json:"ops"`
		OpsPerS float64 `json:"opsPerS"`
	}
	client.RunJSON(&r, "rr", "-addr", vip4+":80", "-n", strconv.Itoa(n), "-size", "64")
	if r.Ops != n {
		t.Fatalf("rr: %+v", r)
	}
	// podbin's server echoes with io.Copy(c, c), which splices: its
	// socket never becomes a redirect target, so requests take the normal
	// path (where splice finds them) and every response is redirected.
	if got := fastPathEvent(t, sm, "redirect_msgs") - before; got < n {
		t.Errorf("%v messages redirected for %d round trips, want >= %d", got, n, n)
	}
	if got := fastPathEvent(t, sm, "splice_stranded"); got != 0 {
		t.Errorf("%v sockets spliced with redirected data queued", got)
	}
	var maps struct {
		FastPath struct {
			Enrolled int `json:"enrolledCgroups"`
		} `json:"fastPath"`
	}
	if err := json.Unmarshal([]byte(sm.Get("/maps")), &maps); err != nil {
		t.Fatal(err)
	}
	if maps.FastPath.Enrolled < 2 {
		t.Errorf("/maps shows %d enrolled cgroups, want the two pods at least", maps.FastPath.Enrolled)
	}
	t.Logf("%.0f round trips/s over the fast path", r.OpsPerS)
}
