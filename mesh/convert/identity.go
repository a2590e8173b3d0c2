package convert

import (
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/sockmesh/sockmesh/mesh"
)

// EnrollLabel enrolls a namespace, or a single pod, in the mesh.
const EnrollLabel = "sockmesh.io/dataplane-mode"

// replicaSetSuffix is the pod-template hash a Deployment's ReplicaSet
// appends to the Deployment's name.
var replicaSetSuffix = regexp.MustCompile(`-[0-9a-z]{6,10}$`)

// WorkloadOf derives a pod's identity the way Istio does for its telemetry
// labels: the workload is the pod's controller (a ReplicaSet's Deployment
// name with the hash removed, a Job's CronJob likewise), or the pod itself;
// the canonical service and revision come from the first label present of
// service.istio.io/canonical-name, app.kubernetes.io/name, app (else the
// workload name) and service.istio.io/canonical-revision,
// app.kubernetes.io/version, version (else "latest").
func WorkloadOf(pod *corev1.Pod, ns *corev1.Namespace) *mesh.Workload {
	w := &mesh.Workload{Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: pod.Spec.ServiceAccountName}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		w.Name = ref.Name
		switch ref.Kind {
		case "ReplicaSet":
			if h := pod.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(ref.Name, "-"+h) {
				w.Name = strings.TrimSuffix(ref.Name, "-"+h)
			} else {
				w.Name = replicaSetSuffix.ReplaceAllString(ref.Name, "")
			}
		case "Job":
			w.Name = regexp.MustCompile(`-\d+$`).ReplaceAllString(ref.Name, "")
		}
	}
	w.CanonicalService = firstLabel(pod.Labels, w.Name, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	w.CanonicalRevision = firstLabel(pod.Labels, "latest", "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
	w.Enrolled = pod.Labels[EnrollLabel] == "enabled" || (ns != nil && ns.Labels[EnrollLabel] == "enabled")
	return w
}

func firstLabel(labels map[string]string, fallback string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return fallback
}
