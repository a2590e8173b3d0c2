package tests

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
)

func sockmeshCLI(t *testing.T, args ...string) string {
	t.Helper()
	bin, _, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("sockmesh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestProxyStatusAndConfig runs the CLI against a running control plane
// and agent.
func TestProxyStatusAndConfig(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	be := tp.Pod("be", true)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeMesh(t, mesh, docs(svc("web", []string{vip4}, "http:80/TCP"), slice("web", "web", "IPv4", 0, []string{be.IP4.String()}, "http:8080/TCP")))
	sm := tp.StartSockmesh("-f", mesh)

	out := sockmeshCLI(t, "proxy-status", "--xds-address", sm.XDS)
	row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(tp.ID) + `\s+Kubernetes\s+\S+\s+\S+\s+SYNCED\s+SYNCED\s+SYNCED\s+NOT SENT\s*$`)
	if !row.MatchString(out) {
		t.Fatalf("proxy-status:\n%s", out)
	}
	if out := sockmeshCLI(t, "proxy-status", tp.ID, "--xds-address", sm.XDS, "-o", "json"); !strings.Contains(out, `"configStatus": "SYNCED"`) {
		t.Fatalf("proxy-status -o json:\n%s", out)
	}

	out = sockmeshCLI(t, "proxy-config", tp.ID, "maps", "--xds-address", sm.XDS)
	if !strings.Contains(out, vip4+":80/tcp") || !strings.Contains(out, be.IP4.String()+":8080 (1)") || !strings.Contains(out, "outbound|80||web.default.svc.cluster.local") {
		t.Fatalf("proxy-config maps:\n%s", out)
	}
	out = sockmeshCLI(t, "proxy-config", tp.ID, "listeners", "--admin", sm.Admin)
	if !strings.Contains(out, vip4+"_80") || !strings.Contains(out, "web.default.svc.cluster.local:80") {
		t.Fatalf("proxy-config listeners:\n%s", out)
	}
	if out := sockmeshCLI(t, "proxy-config", tp.ID, "endpoints", "--admin", sm.Admin, "-o", "yaml"); !strings.Contains(out, "configs:") {
		t.Fatalf("proxy-config -o yaml:\n%s", out)
	}

	// grpcurl, which knows nothing of sockmesh, lists and calls the
	// services through reflection.
	grpcurl, err := harness.Tool("github.com/fullstorydev/grpcurl/cmd/grpcurl")
	if err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command(grpcurl, "-plaintext", sm.XDS, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(list), "envoy.service.status.v3.ClientStatusDiscoveryService") ||
		!strings.Contains(string(list), "envoy.service.discovery.v3.AggregatedDiscoveryService") {
		t.Fatalf("grpcurl list: %v\n%s", err, list)
	}
	call, err := exec.Command(grpcurl, "-plaintext", "-d", "{}", sm.XDS, "envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus").CombinedOutput()
	if err != nil || !strings.Contains(string(call), `"id": "`+tp.ID+`"`) || !strings.Contains(string(call), "SYNCED") {
		t.Fatalf("grpcurl FetchClientStatus: %v\n%s", err, call)
	}
	t.Logf("grpcurl list:\n%s", list)
}

// TestNACKIsVisibleAndNotResent makes the agent reject an update (its
// service map holds 2 entries, the mesh needs 3), and checks that
// proxy-status shows the error, routing that fit keeps working, and the
// control plane does not re-send in a loop.
func TestNACKIsVisibleAndNotResent(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client, be := tp.Pod("client", true), tp.Pod("be", true)
	be.Serve("be", []int{8080}, nil)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	one := docs(svc("web", []string{vip4}, "http:80/TCP"), slice("web", "web", "IPv4", 0, []string{be.IP4.String()}, "http:8080/TCP"))
	writeMesh(t, mesh, one)
	sm := tp.StartSockmesh("-f", mesh, "--max-services", "2")

	writeMesh(t, mesh, docs(one, svc("a", []string{"10.96.7.20"}, "http:80/TCP"), svc("b", []string{"10.96.7.21"}, "http:80/TCP")))
	var out string
	waitFor(t, 5*time.Second, func() bool {
		out = sockmeshCLI(t, "proxy-status", "--xds-address", sm.XDS)
		return strings.Contains(out, "ERROR")
	})
	if !strings.Contains(out, "program kernel") || !strings.Contains(out, "service table full") {
		t.Fatalf("proxy-status does not show the NACK's detail:\n%s", out)
	}
	if res := client.Dial("tcp", vip4+":80", 10); res.Servers["be"] != 10 {
		t.Fatalf("routing after the NACK: %v errors %v", res.Servers, res.Errors)
	}
	pushes := func() string {
		m := regexp.MustCompile(`(?m)^sockmesh_xds_pushes_total (\d+)$`).FindStringSubmatch(sm.Get("/monitor/metrics"))
		if m == nil {
			t.Fatal("no sockmesh_xds_pushes_total")
		}
		return m[1]
	}
	before := pushes()
	time.Sleep(time.Second)
	if after := pushes(); after != before {
		t.Fatalf("control plane kept pushing after the NACK: %s -> %s", before, after)
	}
}
