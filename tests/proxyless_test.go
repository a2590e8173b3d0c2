package tests

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
)

// TestProxylessGRPC runs grpc-go's own xDS client (xds:/// target, SotW,
// bootstrap pointing at our control plane) against real gRPC servers in
// pods, and follows an endpoint change.
func TestProxylessGRPC(t *testing.T) {
	testutil.Privileged(t)
	tp := harness.New(t)
	client := tp.Pod("client", true)
	g1, g2 := tp.Pod("g1", true), tp.Pod("g2", true)
	g1.Start("grpc-serve", "-id", "g1", "-addr", ":50051")
	g2.Start("grpc-serve", "-id", "g2", "-addr", ":50051")

	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(addrs ...string) {
		writeMesh(t, mesh, docs(svc("greeter", []string{"10.96.8.1"}, "grpc:80/TCP"),
			slice("greeter", "greeter", "IPv4", 0, addrs, "grpc:50051/TCP")))
	}
	write(g1.IP4.String())
	bin, _, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := harness.NodeIP.String() + ":15010"
	tp.OnNode("control-plane", "xDS serving", bin, "control-plane", "-f", mesh, "--xds-address", xdsAddr, "--monitoring-address", "")

	bootstrap, _ := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      xdsAddr,
			"channel_creds":   []any{map[string]string{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": "grpc-client~" + tp.ID, "cluster": "test", "locality": map[string]string{}},
	})
	env := []string{"GRPC_XDS_BOOTSTRAP_CONFIG=" + string(bootstrap)}

	for _, target := range []string{"greeter.default.svc.cluster.local:80", "greeter.default.svc:80", "greeter.default:80"} {
		var res harness.DialResult
		client.RunJSONEnv(&res, env, "grpc-call", "-target", "xds:///"+target, "-n", "5")
		if res.Servers["g1"] != 5 {
			t.Fatalf("%s: answers %v errors %v", target, res.Servers, res.Errors)
		}
	}

	// Move the service to g2 while a client runs: it follows without a
	// restart (EDS update over the same stream).
	proc := client.StartEnv(env, "", "grpc-call", "-target", "xds:///greeter.default.svc.cluster.local:80", "-until", "g2", "-timeout", "20s")

	// The control plane sees grpc-go's client acknowledge every type (CSDS,
	// through sockmesh proxy-status).
	row := regexp.MustCompile(`(?m)^grpc-client~\S+\s+test\s+\S+\s+\S+\s+SYNCED\s+SYNCED\s+SYNCED\s+SYNCED\s*$`)
	var status string
	waitFor(t, 10*time.Second, func() bool {
		status, _ = tp.RunOnNode(bin, "proxy-status", "--xds-address", xdsAddr)
		return row.MatchString(status)
	})
	t.Logf("proxy-status with grpc-go's client connected:\n%s", status)
	write(g2.IP4.String())
	<-procDone(proc)
	var res harness.DialResult
	if err := json.Unmarshal([]byte(lastLine(proc.Output())), &res); err != nil {
		t.Fatalf("client output %q: %v", proc.Output(), err)
	}
	if res.Servers["g2"] != 1 {
		t.Fatalf("the running client never reached g2 after the endpoint change: %v errors %v", res.Servers, res.Errors)
	}
	t.Logf("client calls before reaching g2: %v", res.Servers)
}

func procDone(p *harness.Proc) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for {
			if done, _ := p.Exited(); done {
				close(ch)
				return
			}
			sleep()
		}
	}()
	return ch
}

func lastLine(s string) string {
	var last string
	for _, l := range splitLines(s) {
		if l != "" {
			last = l
		}
	}
	return last
}
