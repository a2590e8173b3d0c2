package tests

import (
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
)

const (
	vip4 = "10.96.7.10"
	vip6 = "fd96::7:10"
)

// routingWorld is a topology with a client pod, two backend pods serving
// TCP 8080 and UDP 5353, an unmeshed pod, and sockmesh routing web/dns.
type routingWorld struct {
	tp          *harness.Topology
	client      *harness.Pod
	outsider    *harness.Pod
	be1, be2    *harness.Pod
	sm          *harness.Sockmesh
	meshFile    string
	backendYAML func(addrs4, addrs6 []string) string
}

func newRoutingWorld(t *testing.T) *routingWorld {
	t.Helper()
	testutil.Privileged(t)
	tp := harness.New(t)
	w := &routingWorld{tp: tp}
	w.client = tp.Pod("client", true)
	w.outsider = tp.Pod("outsider", false)
	w.be1 = tp.Pod("be1", true)
	w.be2 = tp.Pod("be2", true)
	w.be1.Serve("be1", []int{8080}, []int{5353})
	w.be2.Serve("be2", []int{8080}, []int{5353})
	w.backendYAML = func(addrs4, addrs6 []string) string {
		parts := []string{
			svc("web", []string{vip4, vip6}, "http:80/TCP", "dns:53/UDP"),
			slice("web-v4", "web", "IPv4", 0, addrs4, "http:8080/TCP", "dns:5353/UDP"),
		}
		if len(addrs6) > 0 {
			parts = append(parts, slice("web-v6", "web", "IPv6", 0, addrs6, "http:8080/TCP", "dns:5353/UDP"))
		}
		return docs(parts...)
	}
	w.meshFile = filepath.Join(t.TempDir(), "mesh.yaml")
	writeMesh(t, w.meshFile, w.backendYAML(
		[]string{w.be1.IP4.String(), w.be2.IP4.String()},
		[]string{w.be1.IP6.String(), w.be2.IP6.String()}))
	w.sm = tp.StartSockmesh("-f", w.meshFile)
	return w
}

func TestTCPThroughVIP(t *testing.T) {
	w := newRoutingWorld(t)
	res := w.client.Dial("tcp", vip4+":80", 50)
	if len(res.Errors) > 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	if res.Servers["be1"]+res.Servers["be2"] != 50 {
		t.Fatalf("answers %v, want 50 from be1/be2", res.Servers)
	}
	// getpeername shows the VIP, never the backend.
	if res.Peers[vip4+":80"] != 50 {
		t.Fatalf("peer addresses %v, want only %s:80", res.Peers, vip4)
	}
}

func TestIPv6VIP(t *testing.T) {
	w := newRoutingWorld(t)
	res := w.client.Dial("tcp", "["+vip6+"]:80", 20)
	if len(res.Errors) > 0 || res.Servers["be1"]+res.Servers["be2"] != 20 {
		t.Fatalf("answers %v errors %v", res.Servers, res.Errors)
	}
	if want := "[" + vip6 + "]:80"; res.Peers[want] != 20 {
		t.Fatalf("peer addresses %v, want only %s", res.Peers, want)
	}
	res = w.client.Dial("udp-unconnected", "["+vip6+"]:53", 10)
	if len(res.Errors) > 0 || res.Peers["["+vip6+"]:53"] != 10 {
		t.Fatalf("udp6: answers %v peers %v errors %v", res.Servers, res.Peers, res.Errors)
	}
}

func TestUDPThroughVIPSeesVIPAsSource(t *testing.T) {
	w := newRoutingWorld(t)
	for _, proto := range []string{"udp", "udp-unconnected"} {
		res := w.client.Dial(proto, vip4+":53", 20)
		if len(res.Errors) > 0 {
			t.Fatalf("%s: errors %v", proto, res.Errors)
		}
		if res.Servers["be1"]+res.Servers["be2"] != 20 {
			t.Fatalf("%s: answers %v", proto, res.Servers)
		}
		if res.Peers[vip4+":53"] != 20 {
			t.Fatalf("%s: replies came from %v, want only %s:53", proto, res.Peers, vip4)
		}
	}
}

func TestOutsideAndNonVIPUntouched(t *testing.T) {
	w := newRoutingWorld(t)
	// A pod outside the attach cgroup is not routed: the VIP has no route
	// in the pod, so the connect fails locally.
	res := w.outsider.Dial("tcp", vip4+":80", 3)
	if res.Errors["network is unreachable"] != 3 {
		t.Fatalf("outsider reached %v, errors %v; want network is unreachable", res.Servers, res.Errors)
	}
	// A meshed pod connecting to a backend's own address goes there
	// directly, and sees that address.
	direct := w.be2.IP4.String() + ":8080"
	res = w.client.Dial("tcp", direct, 10)
	if res.Servers["be2"] != 10 || res.Peers[direct] != 10 {
		t.Fatalf("direct: answers %v peers %v errors %v", res.Servers, res.Peers, res.Errors)
	}
	// A VIP port that is not a service port is not translated either.
	res = w.client.Dial("tcp", vip4+":81", 2)
	if res.Errors["network is unreachable"] != 2 {
		t.Fatalf("vip:81: answers %v errors %v", res.Servers, res.Errors)
	}
}

// TestWeightsHold checks weighted choice both where a service's slot table
// lives in its entry (weights 1:3, 4 slots) and where it lives in sm_slots
// (weights 2:5, 7 slots).
func TestWeightsHold(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client := tp.Pod("client", true)
	light, heavy := tp.Pod("light", true), tp.Pod("heavy", true)
	light.Serve("light", []int{8080}, nil)
	heavy.Serve("heavy", []int{8080}, nil)
	const vipTable = "10.96.7.11"
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeMesh(t, mesh, docs(
		svc("weighted", []string{vip4}, "http:80/TCP"),
		slice("weighted-light", "weighted", "IPv4", 1, []string{light.IP4.String()}, "http:8080/TCP"),
		slice("weighted-heavy", "weighted", "IPv4", 3, []string{heavy.IP4.String()}, "http:8080/TCP"),
		svc("weighted-table", []string{vipTable}, "http:80/TCP"),
		slice("weighted-table-light", "weighted-table", "IPv4", 2, []string{light.IP4.String()}, "http:8080/TCP"),
		slice("weighted-table-heavy", "weighted-table", "IPv4", 5, []string{heavy.IP4.String()}, "http:8080/TCP"),
	))
	sm := tp.StartSockmesh("-f", mesh)
	slots := map[string]int{}
	for _, s := range sm.Maps().Maps.Services {
		slots[s.Service] = s.Slots
	}
	if slots[vip4+":80/tcp"] != 4 || slots[vipTable+":80/tcp"] != 7 {
		t.Fatalf("slot tables %v, want 4 and 7 slots", slots)
	}

	const n = 2000
	for _, c := range []struct {
		vip          string
		light, heavy int
	}{{vip4, 1, 3}, {vipTable, 2, 5}} {
		res := client.Dial("tcp", c.vip+":80", n)
		if len(res.Errors) > 0 {
			t.Fatalf("%s: errors: %v", c.vip, res.Errors)
		}
		// Allow 4 standard deviations of a binomial(n, p): a correct
		// implementation fails about once in 16,000 runs; a uniform
		// choice (0.5) is 20 (1:3) or 12 (2:5) deviations away.
		p := float64(c.heavy) / float64(c.light+c.heavy)
		sd := math.Sqrt(n * p * (1 - p))
		got := float64(res.Servers["heavy"])
		if math.Abs(got-n*p) > 4*sd {
			t.Fatalf("%s: heavy got %v of %d connections, want %.0f ± %.0f (weights %d:%d)", c.vip, got, n, n*p, 4*sd, c.light, c.heavy)
		}
		t.Logf("weights %d:%d over %d connections: light=%d heavy=%d (heavy share %.3f, want %.3f)", c.light, c.heavy, n, res.Servers["light"], res.Servers["heavy"], got/n, p)
	}
}

func TestEndpointChangesFollowTheFile(t *testing.T) {
	w := newRoutingWorld(t)
	be1, be2 := w.be1.IP4.String(), w.be2.IP4.String()

	// Remove be2: new connections stop reaching it within 1 s.
	start := time.Now()
	writeMesh(t, w.meshFile, w.backendYAML([]string{be1}, nil))
	stoppedAfter := waitFor(t, 3*time.Second, func() bool {
		return w.client.Dial("tcp", vip4+":80", 20).Servers["be2"] == 0
	})
	if took := stoppedAfter.Sub(start); took > time.Second {
		t.Errorf("be2 still reached %v after it was removed, want < 1s", took)
	} else {
		t.Logf("removal took effect within %v", took)
	}
	if res := w.client.Dial("tcp", vip4+":80", 200); res.Servers["be1"] != 200 {
		t.Fatalf("after removing be2: %v errors %v", res.Servers, res.Errors)
	}

	// Add it back: it is used again.
	writeMesh(t, w.meshFile, w.backendYAML([]string{be1, be2}, nil))
	waitFor(t, 3*time.Second, func() bool {
		return w.client.Dial("tcp", vip4+":80", 20).Servers["be2"] > 0
	})

	// A service with no ready endpoint refuses connections.
	writeMesh(t, w.meshFile, w.backendYAML(nil, nil))
	waitFor(t, 3*time.Second, func() bool {
		return w.client.Dial("tcp", vip4+":80", 1).Errors["connection refused"] == 1
	})

	// Deleting the service makes the VIP behave as without a mesh.
	writeMesh(t, w.meshFile, svc("other", []string{"10.96.7.99"}, "http:80/TCP"))
	waitFor(t, 3*time.Second, func() bool {
		return w.client.Dial("tcp", vip4+":80", 1).Errors["network is unreachable"] == 1
	})

	// A broken edit is rejected and the last good state keeps serving.
	writeMesh(t, w.meshFile, w.backendYAML([]string{be1}, nil))
	waitFor(t, 3*time.Second, func() bool { return w.client.Dial("tcp", vip4+":80", 1).Servers["be1"] == 1 })
	writeMesh(t, w.meshFile, "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.7.10\n  ports: [{port: 70000}]\n")
	time.Sleep(500 * time.Millisecond)
	if res := w.client.Dial("tcp", vip4+":80", 20); res.Servers["be1"] != 20 {
		t.Fatalf("after a bad edit: %v errors %v, want the last good state", res.Servers, res.Errors)
	}
	if out := w.sm.Output(); !contains(out, "spec.ports[0].port") {
		t.Errorf("the bad edit was not reported with its field; log:\n%s", out)
	}
}

// TestCollidingVIPs routes through VIPs that share their home slot in the
// service table, so the programs must walk the run the agent laid out with
// the same hash; deleting the run's head moves the others back.
func TestCollidingVIPs(t *testing.T) {
	w := newRoutingWorld(t)
	var vips []string
	home := func(a netip.Addr) uint32 { return sockaddr.HomeSlot(sockaddr.NewServiceKey(a, 80, sockaddr.ProtoTCP)) }
	first := netip.MustParseAddr("10.100.0.0")
	for a := first; len(vips) < 4; a = a.Next() {
		if home(a) == home(first) {
			vips = append(vips, a.String())
		}
	}
	backends := []*harness.Pod{w.be1, w.be2}
	// The i-th VIP of the run goes to be1 or be2 by turns.
	mesh := func(vips []string, first int) string {
		var parts []string
		for i, v := range vips {
			name := fmt.Sprintf("c%d", first+i)
			parts = append(parts, svc(name, []string{v}, "http:80/TCP"),
				slice(name, name, "IPv4", 0, []string{backends[(first+i)%2].IP4.String()}, "http:8080/TCP"))
		}
		return docs(parts...)
	}
	check := func(vips []string, first int) {
		t.Helper()
		for i, v := range vips {
			be := fmt.Sprintf("be%d", (first+i)%2+1)
			if res := w.client.Dial("tcp", v+":80", 10); res.Servers[be] != 10 {
				t.Fatalf("%s (%d of a run of %d): %v errors %v, want %s", v, first+i+1, len(vips)+first, res.Servers, res.Errors, be)
			}
		}
	}
	writeMesh(t, w.meshFile, mesh(vips, 0))
	waitFor(t, 3*time.Second, func() bool { return w.client.Dial("tcp", vips[3]+":80", 1).Servers["be2"] == 1 })
	check(vips, 0)

	// Without the head of the run (c0 goes; c1..c3 keep their backends).
	writeMesh(t, w.meshFile, mesh(vips[1:], 1))
	waitFor(t, 3*time.Second, func() bool {
		return w.client.Dial("tcp", vips[0]+":80", 1).Errors["network is unreachable"] == 1
	})
	check(vips[1:], 1)
}

// TestChurnNeverFailsAConnect changes a service's backends, and the
// services sharing its run of table slots (so its entry moves back and
// forth), every 150 ms while a client connects to it: no connect may fail
// or reach anything but a backend. A layout the programs cannot follow,
// or a table swapped in without the service, would show as an
// unreachable VIP. (Serving a table one change old is not an error here.)
func TestChurnNeverFailsAConnect(t *testing.T) {
	w := newRoutingWorld(t)
	be1, be2 := w.be1.IP4.String(), w.be2.IP4.String()
	home := func(a netip.Addr) uint32 { return sockaddr.HomeSlot(sockaddr.NewServiceKey(a, 80, sockaddr.ProtoTCP)) }
	// Three VIPs sharing the home slot of web's (taken by web): the
	// target and two that come and go ahead of it or behind it.
	web := netip.MustParseAddr(vip4)
	var vips []string
	for a := netip.MustParseAddr("10.100.0.0"); len(vips) < 3; a = a.Next() {
		if home(a) == home(web) {
			vips = append(vips, a.String())
		}
	}
	target := vips[2]
	service := func(name, vip string, backends ...string) string {
		return docs(svc(name, []string{vip}, "http:80/TCP"), slice(name, name, "IPv4", 0, backends, "http:8080/TCP"))
	}
	base := w.backendYAML([]string{be1, be2}, nil)
	states := []string{
		docs(base, service("target", target, be1, be2), service("f0", vips[0], be1), service("f1", vips[1], be1)),
		docs(base, service("target", target, be1)),
		docs(base, service("f0", vips[0], be2), service("target", target, be2)),
		docs(base, service("f1", vips[1], be1), service("target", target, be1, be2)),
	}
	// f0 and f1 first, then the target behind them (three slots from
	// home): the first change deletes both, and the target must move back.
	writeMesh(t, w.meshFile, docs(base, service("f0", vips[0], be1), service("f1", vips[1], be1)))
	waitFor(t, 3*time.Second, func() bool { return len(w.client.Dial("tcp", vips[1]+":80", 1).Servers) == 1 })
	writeMesh(t, w.meshFile, states[0])
	waitFor(t, 3*time.Second, func() bool { return len(w.client.Dial("tcp", target+":80", 1).Servers) == 1 })
	// Each state long enough to outlast the file source's 100 ms
	// debounce, so every one reaches the kernel.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= 20; i++ {
			writeMesh(t, w.meshFile, states[i%len(states)])
			time.Sleep(150 * time.Millisecond)
		}
	}()
	servers, errs, dials := map[string]int{}, map[string]int{}, 0
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		res := w.client.Dial("tcp", target+":80", 50)
		for k, v := range res.Servers {
			servers[k] += v
		}
		for k, v := range res.Errors {
			errs[k] += v
		}
		dials += 50
	}
	if len(errs) > 0 || servers["be1"]+servers["be2"] != dials {
		t.Fatalf("%d connects during churn: servers %v, errors %v", dials, servers, errs)
	}
	if servers["be1"] == 0 || servers["be2"] == 0 {
		t.Fatalf("churn did not reach both backends: %v", servers)
	}
	t.Logf("%d connects during 20 changes: %v", dials, servers)
}

func TestStateSurvivesAgentRestart(t *testing.T) {
	w := newRoutingWorld(t)
	w.sm.Stop()
	// No agent runs: the pinned programs and maps keep routing.
	if res := w.client.Dial("tcp", vip4+":80", 20); res.Servers["be1"]+res.Servers["be2"] != 20 {
		t.Fatalf("without the agent: %v errors %v", res.Servers, res.Errors)
	}
	sm := w.sm.Restart("-f", w.meshFile)
	if res := w.client.Dial("tcp", vip4+":80", 20); res.Servers["be1"]+res.Servers["be2"] != 20 {
		t.Fatalf("after restart: %v errors %v", res.Servers, res.Errors)
	}
	if !contains(sm.Output(), "adopted kernel state") {
		t.Errorf("restarted agent did not adopt the pinned state; log:\n%s", sm.Output())
	}
}

// TestUpWithEmbeddedExample drives `sockmesh up` as the README does: no
// mesh file, the embedded example (web 10.96.0.10:80 -> 127.0.0.1:8080,
// 127.0.0.2:8080).
func TestUpWithEmbeddedExample(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	pod := tp.Pod("app", true)
	pod.Serve("local-web", []int{8080}, nil)
	tp.StartSockmesh()
	res := pod.Dial("tcp", "10.96.0.10:80", 10)
	if res.Servers["local-web"] != 10 || res.Peers["10.96.0.10:80"] != 10 {
		t.Fatalf("answers %v peers %v errors %v", res.Servers, res.Peers, res.Errors)
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
