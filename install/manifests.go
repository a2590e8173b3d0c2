package install

import (
	"bytes"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// Labels every installed object carries; uninstall finds objects by them.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelPartOf    = "app.kubernetes.io/part-of"
	ManagedBy      = "sockmesh-installer"
)

// Names of the installed workloads.
const (
	ControlPlaneName = "sockmesh-control-plane"
	AgentName        = "sockmesh-agent"
)

func objectMeta(name, namespace, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      name,
		Namespace: namespace,
		Labels: map[string]string{
			LabelManagedBy: ManagedBy, LabelPartOf: "sockmesh",
			"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
		},
	}
}

func resources(r Resources) (corev1.ResourceRequirements, error) {
	var out corev1.ResourceRequirements
	conv := func(in map[string]string) (corev1.ResourceList, error) {
		if len(in) == 0 {
			return nil, nil
		}
		l := corev1.ResourceList{}
		for k, v := range in {
			q, err := resource.ParseQuantity(v)
			if err != nil {
				return nil, fmt.Errorf("resource %s=%q: %w", k, v, err)
			}
			l[corev1.ResourceName(k)] = q
		}
		return l, nil
	}
	var err error
	if out.Requests, err = conv(r.Requests); err != nil {
		return out, err
	}
	out.Limits, err = conv(r.Limits)
	return out, err
}

// Manifests renders the objects `sockmesh install` applies, in apply order
// (namespace and RBAC before what uses them).
func Manifests(v *Values) ([]runtime.Object, error) {
	ns := v.Namespace
	image := fmt.Sprintf("%s/sockmesh:%s", v.Hub, v.Tag)
	cpRes, err := resources(v.ControlPlane.Resources)
	if err != nil {
		return nil, fmt.Errorf("controlPlane: %w", err)
	}
	cpLabels := map[string]string{"app.kubernetes.io/name": ControlPlaneName}
	out := []runtime.Object{
		&corev1.Namespace{TypeMeta: typeMeta("v1", "Namespace"), ObjectMeta: objectMeta(ns, "", "namespace")},
		&corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"), ObjectMeta: objectMeta(ControlPlaneName, ns, "control-plane")},
		// Least privilege: the control plane reads the mesh, nothing else.
		&rbacv1.ClusterRole{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"), ObjectMeta: objectMeta(ControlPlaneName, "", "control-plane"),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces", "nodes"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			}},
		&rbacv1.ClusterRoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"), ObjectMeta: objectMeta(ControlPlaneName, "", "control-plane"),
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: ControlPlaneName},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: ControlPlaneName, Namespace: ns}}},
		&corev1.ConfigMap{TypeMeta: typeMeta("v1", "ConfigMap"), ObjectMeta: objectMeta("sockmesh", ns, "config"),
			Data: map[string]string{"values.yaml": mustYAML(v)}},
		&corev1.Service{TypeMeta: typeMeta("v1", "Service"), ObjectMeta: withAnnotations(objectMeta(ControlPlaneName, ns, "control-plane"), promAnnotations(15014)),
			Spec: corev1.ServiceSpec{Selector: cpLabels, Ports: []corev1.ServicePort{
				{Name: "grpc-xds", Port: 15010, TargetPort: intstr.FromInt32(15010), Protocol: corev1.ProtocolTCP},
				{Name: "https-xds", Port: 15012, TargetPort: intstr.FromInt32(15012), Protocol: corev1.ProtocolTCP},
				{Name: "http-monitoring", Port: 15014, TargetPort: intstr.FromInt32(15014), Protocol: corev1.ProtocolTCP},
			}}},
		&appsv1.Deployment{TypeMeta: typeMeta("apps/v1", "Deployment"), ObjectMeta: objectMeta(ControlPlaneName, ns, "control-plane"),
			Spec: appsv1.DeploymentSpec{
				Replicas: &v.ControlPlane.Replicas,
				Selector: &metav1.LabelSelector{MatchLabels: cpLabels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: cpLabels, Annotations: promAnnotations(15014)},
					Spec: corev1.PodSpec{
						ServiceAccountName: ControlPlaneName,
						SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(65532))},
						Containers: []corev1.Container{{
							Name: "control-plane", Image: image, ImagePullPolicy: corev1.PullPolicy(v.ImagePullPolicy),
							Args: []string{"control-plane", "--xds-address", ":15010", "--monitoring-address", ":15014", "--log-level", v.ControlPlane.LogLevel},
							Ports: []corev1.ContainerPort{
								{Name: "grpc-xds", ContainerPort: 15010}, {Name: "https-xds", ContainerPort: 15012}, {Name: "http-monitoring", ContainerPort: 15014},
							},
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(15010)}}, PeriodSeconds: 5},
							Resources:      cpRes,
							SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
								Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
						}},
					},
				},
			}},
	}
	if v.Agent.Enabled {
		ds, err := agentDaemonSet(v, image)
		if err != nil {
			return nil, err
		}
		out = append(out[:2], append([]runtime.Object{
			&corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"), ObjectMeta: objectMeta(AgentName, ns, "agent"),
				AutomountServiceAccountToken: ptr(false)}, // the agent talks only xDS
		}, out[2:]...)...)
		out = append(out, ds)
	}
	return out, nil
}

func agentDaemonSet(v *Values, image string) (*appsv1.DaemonSet, error) {
	res, err := resources(v.Agent.Resources)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	labels := map[string]string{"app.kubernetes.io/name": AgentName}
	args := []string{"agent", "--xds-address", fmt.Sprintf("%s.%s.svc:15010", ControlPlaneName, v.Namespace),
		"--node-id", "$(NODE_NAME)", "--pin-dir", "/sys/fs/bpf/sockmesh", "--metrics-address", ":15020",
		"--dns-address", "0.0.0.0:15053", "--log-level", v.Agent.LogLevel}
	if v.Agent.ClusterDNS != "" {
		args = append(args, "--cluster-dns", v.Agent.ClusterDNS)
	}
	hostPath := func(name, path string, t corev1.HostPathType) (corev1.Volume, corev1.VolumeMount) {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &t}}},
			corev1.VolumeMount{Name: name, MountPath: path}
	}
	bpffs, bpffsMount := hostPath("bpffs", "/sys/fs/bpf", corev1.HostPathDirectoryOrCreate)
	bidir := corev1.MountPropagationBidirectional
	bpffsMount.MountPropagation = &bidir // bpffs mounted by the agent must reach the host
	cgroup, cgroupMount := hostPath("cgroup", "/sys/fs/cgroup", corev1.HostPathDirectory)
	proc, procMount := hostPath("host-proc", "/proc", corev1.HostPathDirectory)
	procMount.MountPath, procMount.ReadOnly = "/host/proc", true
	return &appsv1.DaemonSet{TypeMeta: typeMeta("apps/v1", "DaemonSet"), ObjectMeta: objectMeta(AgentName, v.Namespace, "agent"),
		Spec: appsv1.DaemonSetSpec{
			Selector:       &metav1.LabelSelector{MatchLabels: labels},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: promAnnotations(15020)},
				Spec: corev1.PodSpec{
					ServiceAccountName: AgentName, AutomountServiceAccountToken: ptr(false),
					HostNetwork: true, HostPID: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet,
					PriorityClassName: "system-node-critical",
					Tolerations:       []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name: "agent", Image: image, ImagePullPolicy: corev1.PullPolicy(v.ImagePullPolicy), Args: args,
						Env:             []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
						Ports:           []corev1.ContainerPort{{Name: "http-metrics", ContainerPort: 15020}, {Name: "dns-udp", ContainerPort: 15053, Protocol: corev1.ProtocolUDP}},
						ReadinessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/metrics", Port: intstr.FromInt32(15020)}}, PeriodSeconds: 5},
						Resources:       res,
						SecurityContext: &corev1.SecurityContext{Privileged: ptr(true), RunAsUser: ptr(int64(0))},
						VolumeMounts:    []corev1.VolumeMount{bpffsMount, cgroupMount, procMount},
					}},
					Volumes: []corev1.Volume{bpffs, cgroup, proc},
				},
			},
		}}, nil
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

func withAnnotations(m metav1.ObjectMeta, a map[string]string) metav1.ObjectMeta {
	m.Annotations = a
	return m
}

func promAnnotations(port int) map[string]string {
	return map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": fmt.Sprint(port), "prometheus.io/path": "/metrics"}
}

func ptr[T any](v T) *T { return &v }

func mustYAML(v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

// Unstructured converts rendered objects for the dynamic client.
func Unstructured(objs []runtime.Object) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{Object: m}
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		unstructured.RemoveNestedField(u.Object, "status")
		unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "creationTimestamp")
		out = append(out, u)
	}
	return out, nil
}

// ManifestYAML writes objects as one multi-document YAML stream.
func ManifestYAML(objs []runtime.Object) ([]byte, error) {
	us, err := Unstructured(objs)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for i, u := range us {
		y, err := yaml.Marshal(u.Object)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(y)
	}
	return b.Bytes(), nil
}
