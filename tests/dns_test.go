package tests

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// TestMeshDNS resolves mesh names from a meshed pod with four resolvers
// (Go's, glibc's getent, Python's getaddrinfo, dig over UDP and TCP). The
// pod's nameserver is an "original" DNS server in another pod that answers
// 192.0.2.99 for everything; sockmesh captures what is sent to it while the
// agent is alive, and lets it through when the agent stops.
func TestMeshDNS(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client := tp.Pod("client", true)
	orig := tp.Pod("dnsorig", false)
	db1, db2 := tp.Pod("db1", true), tp.Pod("db2", true)
	orig.Start("dns-serve", "-addr", ":53", "-default", "192.0.2.99")
	client.ResolvConf("nameserver " + orig.IP4.String() + "\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 attempts:1 timeout:2\n")

	bin, podbin, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	// The upstream for names outside the mesh, on the node's loopback.
	tp.OnNode("upstream", "ready", podbin, "dns-serve", "-addr", "127.0.0.1:5300", "-record", "api.example.test=192.0.2.1")

	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	base := []string{
		svc("web", []string{"10.96.9.10", "fd96::9:10"}, "http:80/TCP"),
		"apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n  ports: [{name: pg, port: 5432}]\n",
		slice("db", "db", "IPv4", 0, []string{db1.IP4.String(), db2.IP4.String()}, "pg:5432/TCP"),
		"apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  type: ExternalName\n  externalName: api.example.test\n",
	}
	writeMesh(t, mesh, docs(base...))
	up := func() *harness.Proc {
		return tp.OnNode("sockmesh", "agent ready", bin, "up", "-f", mesh, "--cgroup", tp.Mesh, "--pin-dir", tp.PinDir,
			"--xds-address", "127.0.0.1:15010", "--admin-address", "127.0.0.1:15000", "--metrics-address", "", "--monitoring-address", "",
			"--dns-address", harness.NodeIP.String()+":15053", "--dns-upstream", "127.0.0.1:5300", "--cluster-dns", orig.IP4.String(),
			"--node-id", tp.ID)
	}
	sm := up()
	defer func() {
		if t.Failed() {
			t.Logf("sockmesh:\n%s", sm.Output())
		}
	}()

	goLookup := func(name, typ string) map[string]any {
		var out map[string]any
		client.RunJSON(&out, "resolve", "-name", name, "-type", typ)
		return out
	}
	sh := func(bin string, args ...string) string {
		out, _ := client.Exec(bin, args...)
		return strings.TrimSpace(out)
	}
	getent := func(name string) string {
		var addrs []string
		for _, l := range strings.Split(sh("getent", "ahosts", name), "\n") {
			if f := strings.Fields(l); len(f) > 0 && !slices.Contains(addrs, f[0]) {
				addrs = append(addrs, f[0])
			}
		}
		slices.Sort(addrs)
		return strings.Join(addrs, " ")
	}
	python := func(name string) string {
		return sh("/usr/bin/python3", "-c", "import socket,sys; print(' '.join(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], None)})))", name)
	}
	// musl checks that a reply comes from the nameserver it asked: a C
	// program built against it sees whether the VIP-style reversal holds.
	gai := filepath.Join(t.TempDir(), "gai")
	if out, err := exec.Command("musl-gcc", "-static", "-O2", "-o", gai, "testdata/gai.c").CombinedOutput(); err != nil {
		t.Fatalf("musl-gcc (apt-get install musl-tools): %v\n%s", err, out)
	}
	dig := func(args ...string) string {
		return strings.Join(strings.Fields(sh("dig", append([]string{"+short", "+time=2", "+tries=1"}, args...)...)), " ")
	}

	// Capture starts with the agent's first heartbeat.
	waitFor(t, 5*time.Second, func() bool { return dig("web.default.svc.cluster.local") == "10.96.9.10" })

	if got := strings.Join(anyStrings(goLookup("web", "A")["addrs"]), " "); got != "10.96.9.10 fd96::9:10" {
		t.Errorf("Go resolver, web (search list): %q", got)
	}
	if got := getent("web.default"); got != "10.96.9.10 fd96::9:10" {
		t.Errorf("glibc getent, web.default: %q", got)
	}
	if got := python("web.default.svc.cluster.local"); got != "10.96.9.10 fd96::9:10" {
		t.Errorf("python getaddrinfo: %q", got)
	}
	if got := sh(gai, "web.default.svc.cluster.local"); got != "10.96.9.10 fd96::9:10" {
		t.Errorf("musl getaddrinfo: %q", got)
	}
	if got := dig("+tcp", "AAAA", "web.default.svc.cluster.local"); got != "fd96::9:10" {
		t.Errorf("dig over TCP, AAAA: %q", got)
	}
	want := db1.IP4.String() + " " + db2.IP4.String()
	if got := getent("db.default.svc.cluster.local"); got != want {
		t.Errorf("headless service: %q, want %q", got, want)
	}
	if got := dig("SRV", "_http._tcp.web.default.svc.cluster.local"); got != "0 100 80 web.default.svc.cluster.local." {
		t.Errorf("dig SRV: %q", got)
	}
	if got := anyStrings(goLookup("_pg._tcp.db.default.svc.cluster.local", "SRV")["srv"]); len(got) != 2 || !strings.HasPrefix(got[0], strings.ReplaceAll(db1.IP4.String(), ".", "-")+".db.default.svc.cluster.local.:5432") {
		t.Errorf("Go SRV for the headless service: %v", got)
	}
	if got := dig("ext.default.svc.cluster.local"); got != "api.example.test. 192.0.2.1" {
		t.Errorf("ExternalName: %q", got)
	}
	if got := python("ext.default.svc.cluster.local"); got != "192.0.2.1" {
		t.Errorf("ExternalName through getaddrinfo: %q", got)
	}
	if got := dig("api.example.test"); got != "192.0.2.1" {
		t.Errorf("forwarded external name: %q", got)
	}
	if got := sh("dig", "+time=2", "+tries=1", "nope.default.svc.cluster.local"); !strings.Contains(got, "NXDOMAIN") {
		t.Errorf("unknown mesh name: %s", got)
	}

	// The answers follow the YAML.
	writeMesh(t, mesh, docs(append(base, svc("added", []string{"10.96.9.20"}, "http:80/TCP"))...))
	waitFor(t, 5*time.Second, func() bool { return dig("added.default.svc.cluster.local") == "10.96.9.20" })
	writeMesh(t, mesh, docs(base...))
	waitFor(t, 5*time.Second, func() bool {
		return strings.Contains(sh("dig", "+time=2", "+tries=1", "added.default.svc.cluster.local"), "NXDOMAIN")
	})

	// Agent stopped: the original server answers, as if sockmesh were
	// not there.
	sm.Stop()
	if got := dig("web.default.svc.cluster.local"); got != "192.0.2.99" {
		t.Fatalf("with the agent stopped, dig got %q, want the original server's 192.0.2.99", got)
	}
	if got := strings.Join(anyStrings(goLookup("web.default.svc.cluster.local", "A")["addrs"]), " "); got != "192.0.2.99" {
		t.Fatalf("with the agent stopped, Go resolver got %q", got)
	}
	sm = up()
	waitFor(t, 5*time.Second, func() bool { return dig("web.default.svc.cluster.local") == "10.96.9.10" })
}

func anyStrings(v any) []string {
	var out []string
	b, _ := json.Marshal(v)
	json.Unmarshal(b, &out)
	return out
}
