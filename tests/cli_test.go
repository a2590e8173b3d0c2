package tests

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
)

func TestPrecheckAndVersion(t *testing.T) {
	testutil.Privileged(t)
	bin, _, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "precheck").CombinedOutput()
	if err != nil {
		t.Fatalf("precheck failed on the machine sockmesh is developed on: %v\n%s", err, out)
	}
	for _, want := range []string{"FEATURE", "cgroup sock_addr programs", "sockaddr programs pass the verifier", "ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("precheck output lacks %q:\n%s", want, out)
		}
	}
	out, err = exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "sockmesh ") {
		t.Fatalf("version: %v %q", err, out)
	}
}

func TestBadMeshFileIsRefusedAtStart(t *testing.T) {
	testutil.Privileged(t)
	bin, _, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeMesh(t, mesh, "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n")
	out, err := exec.Command(bin, "up", "-f", mesh, "--cgroup", "/nonexistent-cgroup").CombinedOutput()
	if err == nil {
		t.Fatal("up started with an invalid mesh")
	}
	if !strings.Contains(string(out), "mesh.yaml:1: Service default/web: spec.clusterIP: required") {
		t.Fatalf("error does not name file, object and field:\n%s", out)
	}
}

// TestControlPlaneAndAgentApart runs the two halves as separate processes,
// as on a cluster, and checks the agent's admin and metrics endpoints.
func TestControlPlaneAndAgentApart(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client, be := tp.Pod("client", true), tp.Pod("be", true)
	be.Serve("be", []int{8080}, nil)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeMesh(t, mesh, docs(svc("web", []string{vip4}, "http:80/TCP"), slice("web", "web", "IPv4", 0, []string{be.IP4.String()}, "http:8080/TCP")))
	bin, _, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr, admin, metrics := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	cp := exec.Command(bin, "control-plane", "-f", mesh, "--xds-address", xdsAddr)
	var cpOut strings.Builder
	cp.Stdout, cp.Stderr = &cpOut, &cpOut
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cp.Process.Signal(syscall.SIGTERM)
		cp.Wait()
		if t.Failed() {
			t.Logf("control plane:\n%s", cpOut.String())
		}
	}()
	agent := exec.Command(bin, "agent", "--xds-address", xdsAddr, "--cgroup", tp.Mesh, "--pin-dir", tp.PinDir,
		"--admin-address", admin, "--metrics-address", metrics, "--node-id", "node-a", "--dns-address", "")
	var agOut strings.Builder
	agent.Stdout, agent.Stderr = &agOut, &agOut
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
		if t.Failed() {
			t.Logf("agent:\n%s", agOut.String())
		}
	}()
	sm := &harness.Sockmesh{Admin: admin, Metrics: metrics}
	sm = harness.Attach(t, sm)
	sm.WaitReady()

	res := client.Dial("tcp", vip4+":80", 10)
	if res.Servers["be"] != 10 || res.Peers[vip4+":80"] != 10 {
		t.Fatalf("answers %v peers %v errors %v", res.Servers, res.Peers, res.Errors)
	}

	m := sm.Get("/metrics")
	for _, want := range []string{"sockmesh_agent_ready 1", "sockmesh_dataplane_services 1", `sockmesh_sockaddr_events_total{event="translated"} 10`, "sockmesh_xds_nacks_total 0"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	var dump struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := json.Unmarshal([]byte(sm.Get("/config_dump")), &dump); err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, c := range dump.Configs {
		types = append(types, c["@type"].(string))
	}
	want := []string{"type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump"}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Fatalf("config_dump types %v, want %v", types, want)
	}
}
