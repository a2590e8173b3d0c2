package install

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDuplicateVIPSeesLoadBalancerIPs: a load-balancer ingress IP routes
// like a cluster IP, so one that another service uses as its VIP is a
// conflict.
func TestDuplicateVIPSeesLoadBalancerIPs(t *testing.T) {
	svc := func(name, clusterIP, lbIP string) corev1.Service {
		s := corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: clusterIP,
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		}
		if lbIP != "" {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
		}
		return s
	}
	findings := Analyze(&Objects{Services: []corev1.Service{
		svc("web", "10.96.50.1", ""),
		svc("lb", "10.96.50.2", "10.96.50.1"),
	}})
	var dup []string
	for _, f := range findings {
		if f.Code == CodeDuplicateVIP {
			dup = append(dup, f.String())
		}
	}
	if len(dup) != 1 || !strings.Contains(dup[0], "(Service shop/lb) 10.96.50.1:80 TCP is also claimed by Service shop/web") {
		t.Fatalf("duplicate-VIP findings %q", dup)
	}
}
