package convert

import (
	"net/netip"
	"regexp"
	"slices"
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

// PodOf is a pod as the mesh knows it by address, or nil when it has no
// address of its own: not scheduled yet, finished (its address may be
// someone else's now), or on the host's network (its address is the
// node's, shared by every such pod).
func PodOf(pod *corev1.Pod, ns *corev1.Namespace) *mesh.Pod {
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	var addrs []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(addrs, a.Unmap()) {
			addrs = append(addrs, a.Unmap())
		}
	}
	add(pod.Status.PodIP)
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	if len(addrs) == 0 {
		return nil
	}
	return &mesh.Pod{Namespace: pod.Namespace, Name: pod.Name, Addrs: addrs, Workload: *WorkloadOf(pod, ns)}
}
