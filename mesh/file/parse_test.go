package file

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sockmesh/sockmesh/mesh"
)

const goodMesh = `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, fd00::10]
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
# a comment-only document in between is ignored
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations: {sockmesh.io/weight: "3"}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.0.0.1]
  zone: z1
  nodeName: n1
  targetRef: {kind: Pod, name: web-7d4b9c8f6d-x2x9z, namespace: shop}
- addresses: [10.0.0.2]
  conditions: {ready: false, serving: true, terminating: true}
  targetRef: {kind: Pod, name: not-in-the-files, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c8f6d-x2x9z
  namespace: shop
  labels: {app: web, version: v2, pod-template-hash: 7d4b9c8f6d}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c8f6d, uid: u1, controller: true}
spec:
  serviceAccountName: web-sa
  containers: [{name: web, image: web}]
`

func TestParseGood(t *testing.T) {
	svcs, err := Parse(map[string][]byte{"mesh.yaml": []byte(goodMesh)})
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 {
		t.Fatalf("got %d services", len(svcs))
	}
	s := svcs[0]
	if s.Key() != "shop/web" || len(s.VIPs) != 2 || s.VIPs[1] != netip.MustParseAddr("fd00::10") {
		t.Fatalf("service %+v", s)
	}
	if s.Ports[0].TargetPort != 8080 || s.Ports[0].Protocol != mesh.TCP || s.Ports[1].Protocol != mesh.UDP {
		t.Fatalf("ports %+v", s.Ports)
	}
	if len(s.Endpoints) != 2 {
		t.Fatalf("endpoints %+v", s.Endpoints)
	}
	e0, e1 := s.Endpoints[0], s.Endpoints[1]
	if !e0.Ready || e0.Weight != 3 || e0.Zone != "z1" || e0.Node != "n1" {
		t.Fatalf("endpoint 0 %+v", e0)
	}
	if e1.Ready || !e1.Serving || !e1.Terminating {
		t.Fatalf("endpoint 1 %+v", e1)
	}
	// The pod given in the files names endpoint 0's workload, as Istio
	// would; endpoint 1's pod is not given: unknown.
	if w := e0.Workload; w == nil || w.Name != "web" || w.Namespace != "shop" || w.ServiceAccount != "web-sa" ||
		w.CanonicalService != "web" || w.CanonicalRevision != "v2" {
		t.Fatalf("endpoint 0 workload %+v", w)
	}
	if e1.Workload != nil {
		t.Fatalf("endpoint 1 workload %+v, want none", e1.Workload)
	}
	if p, ok := e0.TargetFor(s.Ports[0]); !ok || p != 8080 {
		t.Fatalf("target for http: %d %v", p, ok)
	}
	if _, ok := e0.TargetFor(s.Ports[1]); ok {
		t.Fatal("endpoint serves dns although its slice lists only http")
	}
}

func TestParseErrors(t *testing.T) {
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n"
	for _, tc := range []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"syntax", "apiVersion: v1\nkind: [Service\n", []string{"m.yaml:1", "invalid YAML"}},
		{"unknown kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", []string{"kind", "unsupported kind v1 ConfigMap"}},
		{"pod without name", "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n", []string{"Pod", "metadata.name", "required"}},
		{"missing kind", "metadata: {name: x}\n", []string{"apiVersion/kind", "missing"}},
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.10, portz: []}\n", []string{"Service", `unknown field "spec.portz"`}},
		{"missing VIP", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n", []string{"Service default/web", "spec.clusterIP", "required"}},
		{"bad VIP", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n", []string{"spec.clusterIP[0]", "not an IP address"}},
		{"loopback VIP", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 127.0.0.5\n  ports: [{port: 80}]\n", []string{"cannot be a service VIP"}},
		{"port out of range", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 70000}]\n", []string{"spec.ports[0].port", "70000 is out of range"}},
		{"sctp", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, protocol: SCTP}]\n", []string{"spec.ports[0].protocol", "SCTP"}},
		{"unnamed ports", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}, {port: 81}]\n", []string{"spec.ports[0].name", "required"}},
		{"duplicate VIP:port", svc + "---\napiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n",
			[]string{"Service default/other", "10.96.0.10:80 TCP is already used by Service default/web"}},
		{"duplicate service", svc + "---\n" + svc, []string{"Service default/web: defined more than once"}},
		{"slice without service", svc + "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels: {kubernetes.io/service-name: nope}\naddressType: IPv4\nendpoints: []\n",
			[]string{"m.yaml:8", "EndpointSlice default/s", "no Service default/nope"}},
		{"slice bad address", svc + "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nendpoints: [{addresses: [fd00::1]}]\n",
			[]string{"endpoints[0].addresses[0]", "not an IPv4 address"}},
		{"slice bad weight", svc + "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels: {kubernetes.io/service-name: web}\n  annotations: {sockmesh.io/weight: \"0\"}\naddressType: IPv4\nendpoints: []\n",
			[]string{"sockmesh.io/weight", "from 1 to 1000"}},
		{"slice FQDN", svc + "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels: {kubernetes.io/service-name: web}\naddressType: FQDN\nendpoints: []\n",
			[]string{"addressType", "FQDN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(map[string][]byte{"m.yaml": []byte(tc.yaml)})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	bad := "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n"
	_, err := Parse(map[string][]byte{"a.yaml": []byte(bad)})
	if err == nil || !strings.Contains(err.Error(), "a.yaml:1") || !strings.Contains(err.Error(), "a.yaml:4") {
		t.Fatalf("want errors at lines 1 and 4, got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodMesh))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		Parse(map[string][]byte{"f.yaml": b}) // must not panic
	})
}

func TestParsePods(t *testing.T) {
	pod := func(name, extra string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + ", namespace: shop, labels: {app: " + name + "}}\n" +
			"spec: {containers: [{name: c, image: i}]" + extra
	}
	m, err := ParseMesh(map[string][]byte{"pods.yaml": []byte(strings.Join([]string{
		pod("loadgen", "}\nstatus: {podIP: 10.0.9.9, podIPs: [{ip: 10.0.9.9}, {ip: 'fd00::9'}]}\n"),
		pod("pending", "}\n"), // no address yet
		pod("hostnet", ", hostNetwork: true}\nstatus: {podIP: 192.168.1.5}\n"),
		pod("done", "}\nstatus: {podIP: 10.0.9.7, phase: Succeeded}\n"),
	}, "---\n"))})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Pods) != 1 {
		t.Fatalf("pods %+v, want only loadgen", m.Pods)
	}
	p := m.Pods[0]
	if p.Key() != "shop/loadgen" || len(p.Addrs) != 2 || p.Addrs[1] != netip.MustParseAddr("fd00::9") ||
		p.Workload.Name != "loadgen" || p.Workload.CanonicalService != "loadgen" {
		t.Fatalf("pod %+v", p)
	}
}
