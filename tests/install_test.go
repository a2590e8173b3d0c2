package tests

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockmesh/sockmesh/tests/harness"
)

// runCLI runs sockmesh and returns its output and exit code.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	bin, _, err := harness.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestInstallLifecycle drives install, re-install, dry run, status and
// uninstall --purge against a real API server.
func TestInstallLifecycle(t *testing.T) {
	api := kubeAPI(t)
	ctx := context.Background()
	kc := api.Kubeconfig
	ns := "sockmesh-it"

	// The server's dry run accepts every manifest and persists nothing. It
	// needs the namespace to exist to check what goes in it.
	out, code := runCLI(t, "install", "--kubeconfig", kc, "--set", "namespace="+ns, "--dry-run")
	if code != 0 || !strings.Contains(out, "not checked: namespace "+ns+" does not exist yet") {
		t.Fatalf("install --dry-run into a new namespace (exit %d):\n%s", code, out)
	}
	if _, err := api.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run created the namespace: %v", err)
	}
	dry := "sockmesh-dry"
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: dry}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, code = runCLI(t, "install", "--kubeconfig", kc, "--set", "namespace="+dry, "--dry-run")
	if code != 0 || strings.Count(out, "(server dry run)") != 9 || strings.Contains(out, "not checked") {
		t.Fatalf("install --dry-run into an existing namespace (exit %d):\n%s", code, out)
	}
	if _, err := api.Client.AppsV1().Deployments(dry).Get(ctx, "sockmesh-control-plane", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run created the Deployment: %v", err)
	}

	out, code = runCLI(t, "install", "--kubeconfig", kc, "--set", "namespace="+ns)
	if code != 0 || strings.Count(out, " created") != 9 {
		t.Fatalf("install (exit %d):\n%s", code, out)
	}
	ds, err := api.Client.AppsV1().DaemonSets(ns).Get(ctx, "sockmesh-agent", metav1.GetOptions{})
	if err != nil || !*ds.Spec.Template.Spec.Containers[0].SecurityContext.Privileged || !ds.Spec.Template.Spec.HostNetwork {
		t.Fatalf("agent DaemonSet: %v", err)
	}
	// Re-running changes nothing.
	out, code = runCLI(t, "install", "--kubeconfig", kc, "--set", "namespace="+ns)
	if code != 0 || strings.Count(out, " unchanged") != 9 {
		t.Fatalf("second install is not a no-op (exit %d):\n%s", code, out)
	}
	// A --set changes exactly what it names.
	out, code = runCLI(t, "install", "--kubeconfig", kc, "--set", "namespace="+ns, "--set", "agent.logLevel=debug")
	if code != 0 || strings.Count(out, " configured") != 2 || !strings.Contains(out, "DaemonSet "+ns+"/sockmesh-agent configured") ||
		!strings.Contains(out, "ConfigMap "+ns+"/sockmesh configured") {
		t.Fatalf("--set agent.logLevel should change the DaemonSet and the values ConfigMap only (exit %d):\n%s", code, out)
	}

	// No kubelet runs here: status --wait must time out and say why.
	out, code = runCLI(t, "status", "--kubeconfig", kc, "-n", ns, "--wait", "2s")
	if code == 0 || !strings.Contains(out, "not ready after 2s") || !strings.Contains(out, "0 of 1 replicas available") ||
		!strings.Contains(out, "scheduled on no node") {
		t.Fatalf("status --wait (exit %d):\n%s", code, out)
	}

	out, code = runCLI(t, "uninstall", "--kubeconfig", kc, "-n", ns, "--purge")
	if code != 0 {
		t.Fatalf("uninstall --purge (exit %d):\n%s", code, out)
	}
	for name, err := range map[string]error{
		"deployment":  get(api.Client.AppsV1().Deployments(ns).Get(ctx, "sockmesh-control-plane", metav1.GetOptions{})),
		"daemonset":   get(api.Client.AppsV1().DaemonSets(ns).Get(ctx, "sockmesh-agent", metav1.GetOptions{})),
		"service":     get(api.Client.CoreV1().Services(ns).Get(ctx, "sockmesh-control-plane", metav1.GetOptions{})),
		"configmap":   get(api.Client.CoreV1().ConfigMaps(ns).Get(ctx, "sockmesh", metav1.GetOptions{})),
		"sa":          get(api.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "sockmesh-agent", metav1.GetOptions{})),
		"clusterrole": get(api.Client.RbacV1().ClusterRoles().Get(ctx, "sockmesh-control-plane", metav1.GetOptions{})),
		"binding":     get(api.Client.RbacV1().ClusterRoleBindings().Get(ctx, "sockmesh-control-plane", metav1.GetOptions{})),
	} {
		if !apierrors.IsNotFound(err) {
			t.Errorf("%s left behind by uninstall --purge: %v", name, err)
		}
	}
	// Without kube-controller-manager a namespace stays Terminating; it
	// must at least be deleted.
	if n, err := api.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil && n.DeletionTimestamp == nil {
		t.Errorf("namespace %s not deleted", ns)
	}
}

func get[T any](_ T, err error) error { return err }

// TestAnalyze checks findings on crafted configurations, offline (files)
// and live (the API server), and the istioctl-style exit code.
func TestAnalyze(t *testing.T) {
	api := kubeAPI(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(`apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.50.1
  selector: {app: web}
  ports: [{port: 80}, {name: grpc-api, port: 81}]
---
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: shop}
spec:
  clusterIP: 10.96.50.2
  externalIPs: [10.96.50.1]
  selector: {app: nothing}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
`), 0o644)
	out, code := runCLI(t, "analyze", "-f", bad)
	if code != 79 {
		t.Fatalf("analyze exit %d, want 79:\n%s", code, out)
	}
	for _, want := range []string{
		"Warning [SM0101] (Service shop/web) has no ready endpoints",
		"Error [SM0102] (Service shop/web) spec.ports[0] (port 80) has no name",
		"Info [SM0103] (Service shop/web) port 80",
		"Error [SM0104] (Service shop/web2) 10.96.50.1:80 TCP is also claimed by Service shop/web",
		"Warning [SM0105] (Pod shop/web-1) backs Service shop/web",
		"Warning [SM0106] (Service shop/web2) selector app=nothing matches no pod",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("analyze output lacks %q:\n%s", want, out)
		}
	}
	good := filepath.Join(t.TempDir(), "good.yaml")
	os.WriteFile(good, []byte("apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {type: ExternalName, externalName: example.test}\n"), 0o644)
	if out, code := runCLI(t, "analyze", "-f", good); code != 0 || !strings.Contains(out, "No validation issues found") {
		t.Fatalf("clean config: exit %d\n%s", code, out)
	}

	// Live: a Service created through the API with no endpoints.
	ctx := context.Background()
	svc := &corev1Service{Name: "lonely"}
	if err := svc.create(ctx, api); err != nil {
		t.Fatal(err)
	}
	defer svc.delete(ctx, api)
	out, code = runCLI(t, "analyze", "--kubeconfig", api.Kubeconfig)
	if code != 79 || !strings.Contains(out, "[SM0101] (Service default/lonely)") {
		t.Fatalf("live analyze (exit %d):\n%s", code, out)
	}
}
