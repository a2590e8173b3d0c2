package convert

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sockmesh/sockmesh/mesh"
)

func TestWorkloadOf(t *testing.T) {
	yes := true
	owned := func(kind, name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &yes}}
	}
	for _, tc := range []struct {
		name string
		pod  corev1.Pod
		ns   *corev1.Namespace
		want mesh.Workload
	}{
		{"deployment with Istio labels",
			corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "reviews-v2-5d8f9c7b4-x2x9q", Namespace: "shop",
				Labels:          map[string]string{"pod-template-hash": "5d8f9c7b4", "app": "reviews", "version": "v2"},
				OwnerReferences: owned("ReplicaSet", "reviews-v2-5d8f9c7b4")}, Spec: corev1.PodSpec{ServiceAccountName: "bookinfo-reviews"}},
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{EnrollLabel: "enabled"}}},
			mesh.Workload{Name: "reviews-v2", Namespace: "shop", ServiceAccount: "bookinfo-reviews", CanonicalService: "reviews", CanonicalRevision: "v2", Enrolled: true}},
		{"canonical labels win, pod enrolled alone",
			corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "data",
				Labels: map[string]string{"service.istio.io/canonical-name": "postgres", "app.kubernetes.io/name": "db",
					"service.istio.io/canonical-revision": "15", EnrollLabel: "enabled"},
				OwnerReferences: owned("StatefulSet", "db")}},
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "data"}},
			mesh.Workload{Name: "db", Namespace: "data", ServiceAccount: "default", CanonicalService: "postgres", CanonicalRevision: "15", Enrolled: true}},
		{"bare pod, no labels",
			corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "debug", Namespace: "default"}},
			nil,
			mesh.Workload{Name: "debug", Namespace: "default", ServiceAccount: "default", CanonicalService: "debug", CanonicalRevision: "latest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := *WorkloadOf(&tc.pod, tc.ns); got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
