package kube

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/mesh/convert"
)

// The real API server test is tests.TestKubernetesSource; this one checks
// the conversion details against client-go's fake clientset.
func TestSourceConvertsClusterObjects(t *testing.T) {
	port, node := int32(8080), "node-1"
	ready := true
	client := fake.NewClientset(
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.5", ClusterIPs: []string{"10.96.0.5"},
				ExternalIPs: []string{"192.0.2.10"},
				Ports:       []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 30080}},
			},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}}}},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-x", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: &port}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-1", Namespace: "shop"}}},
		},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Labels: map[string]string{"app": "web", "version": "v3"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{convert.EnrollLabel: "enabled"}}},
		// A slice whose Service is not (yet) known is ignored, not fatal.
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "orphan", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "nope"}},
			AddressType: discoveryv1.AddressTypeIPv4,
		},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{LabelRegion: "r1", LabelZone: "z1"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.50"}, {Type: corev1.NodeHostName, Address: "node-1"}}}},
	)
	reg := mesh.NewRegistry()
	src, err := New(Config{Debounce: 10 * time.Millisecond}, client, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for reg.Snapshot().Service("shop", "web") == nil {
		if time.Now().After(deadline) {
			t.Fatal("service never arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s := reg.Snapshot().Service("shop", "web")
	want := []netip.Addr{netip.MustParseAddr("10.96.0.5"), netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.7")}
	if len(s.VIPs) != 3 || s.VIPs[0] != want[0] || s.VIPs[1] != want[1] || s.VIPs[2] != want[2] {
		t.Fatalf("VIPs %v, want %v", s.VIPs, want)
	}
	if len(s.Endpoints) != 1 || s.Endpoints[0].Zone != "z1" || s.Endpoints[0].Region != "r1" || s.Endpoints[0].Node != node {
		t.Fatalf("endpoints %+v", s.Endpoints)
	}
	if w := s.Endpoints[0].Workload; w == nil || w.CanonicalService != "web" || w.CanonicalRevision != "v3" || !w.Enrolled {
		t.Fatalf("workload %+v", w)
	}
	if s.Ports[0].NodePort != 30080 {
		t.Fatalf("node port %d", s.Ports[0].NodePort)
	}
	if a := reg.Snapshot().NodeAddrs; len(a) != 1 || a[0] != netip.MustParseAddr("192.0.2.50") {
		t.Fatalf("node addresses %v", a)
	}

	// A delete propagates.
	if err := client.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for reg.Snapshot().Service("shop", "web") != nil {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("deleted service still in the registry")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }
