package install

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestValuesLayers(t *testing.T) {
	def, err := LoadValues("", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(t.TempDir(), "o.yaml")
	os.WriteFile(overlay, []byte("controlPlane:\n  replicas: 3\n"), 0o644)
	got, err := LoadValues("default", []string{overlay}, []string{"agent.clusterDNS=10.96.0.10", "tag=v9"})
	if err != nil {
		t.Fatal(err)
	}
	want := *def
	want.ControlPlane.Replicas = 3
	want.Agent.ClusterDNS = "10.96.0.10"
	want.Tag = "v9"
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("overlay and --set changed more than they name:\ngot  %+v\nwant %+v", *got, want)
	}
	min, _ := LoadValues("minimal", nil, nil)
	if min.Agent.Enabled || min.Namespace != def.Namespace {
		t.Fatalf("minimal profile: %+v", min)
	}
	objs, _ := Manifests(min)
	for _, o := range objs {
		if k := o.GetObjectKind().GroupVersionKind().Kind; k == "DaemonSet" {
			t.Fatal("minimal profile renders an agent")
		}
	}
	for _, bad := range [][]string{{"agent.nope=1"}, {"agent.clusterDNS=not-an-ip"}, {"controlPlane.replicas=0"}, {"noequals"}} {
		if _, err := LoadValues("", nil, bad); err == nil {
			t.Errorf("--set %v accepted", bad)
		}
	}
	if _, err := LoadValues("huge", nil, nil); err == nil || !strings.Contains(err.Error(), "unknown profile") {
		t.Errorf("unknown profile: %v", err)
	}
}

func TestManifestsNameTheIstioPorts(t *testing.T) {
	v, _ := LoadValues("default", nil, nil)
	objs, err := Manifests(v)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ManifestYAML(objs)
	if err != nil {
		t.Fatal(err)
	}
	y := string(b)
	for _, want := range []string{"name: grpc-xds", "name: https-xds", "name: http-monitoring", "prometheus.io/port: \"15020\"",
		"privileged: true", "hostNetwork: true", "hostPID: true", "path: /sys/fs/bpf", "path: /sys/fs/cgroup", "kind: ClusterRole"} {
		if !strings.Contains(y, want) {
			t.Errorf("manifests lack %q", want)
		}
	}
	if strings.Contains(y, "verbs:\n  - '*'") || strings.Contains(y, "create") {
		t.Error("RBAC grants more than read access")
	}
}
