package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// svc renders a v1 Service with one VIP per family given and ports
// "name:port/PROTO".
func svc(name string, vips []string, ports ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: default\nspec:\n  clusterIPs: [%s]\n  ports:\n", name, strings.Join(vips, ", "))
	for _, p := range ports {
		n, rest, _ := strings.Cut(p, ":")
		port, proto, _ := strings.Cut(rest, "/")
		fmt.Fprintf(&b, "  - name: %s\n    port: %s\n    protocol: %s\n", n, port, proto)
	}
	return b.String()
}

// slice renders an EndpointSlice for service with ready endpoints addrs,
// serving ports "name:port/PROTO", and weight (0: none given).
func slice(name, service, family string, weight int, addrs []string, ports ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s\n  namespace: default\n  labels:\n    kubernetes.io/service-name: %s\n", name, service)
	if weight > 0 {
		fmt.Fprintf(&b, "  annotations:\n    sockmesh.io/weight: %q\n", fmt.Sprint(weight))
	}
	fmt.Fprintf(&b, "addressType: %s\nports:\n", family)
	for _, p := range ports {
		n, rest, _ := strings.Cut(p, ":")
		port, proto, _ := strings.Cut(rest, "/")
		fmt.Fprintf(&b, "- name: %s\n  port: %s\n  protocol: %s\n", n, port, proto)
	}
	b.WriteString("endpoints:\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: true}\n", a)
	}
	return b.String()
}

func docs(parts ...string) string { return strings.Join(parts, "---\n") }

// writeMesh writes content to path atomically (write, then rename), as
// editors and config management do.
func writeMesh(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func splitLines(s string) []string { return strings.Split(s, "\n") }

func sleep() { time.Sleep(20 * time.Millisecond) }
