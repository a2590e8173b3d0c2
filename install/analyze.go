package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
)

// AnalyzeExitCode is the exit status when analysis finds errors or
// warnings (istioctl's).
const AnalyzeExitCode = 79

// EnrollLabel enrolls a namespace (or a pod) in the mesh.
const EnrollLabel = "sockmesh.io/dataplane-mode"

// Level of a finding.
type Level string

// Levels, as istioctl names them.
const (
	LevelError   Level = "Error"
	LevelWarning Level = "Warning"
	LevelInfo    Level = "Info"
)

// Finding is one problem analyze reports. Codes are stable: scripts and
// docs may depend on them.
type Finding struct {
	Code    string
	Level   Level
	Object  string
	Message string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s [%s] (%s) %s", f.Level, f.Code, f.Object, f.Message)
}

// Codes of the analyzers.
const (
	CodeNoEndpoints     = "SM0101"
	CodeUnnamedPort     = "SM0102"
	CodePortProtocol    = "SM0103"
	CodeDuplicateVIP    = "SM0104"
	CodeNotEnrolled     = "SM0105"
	CodeSelectorNoMatch = "SM0106"
)

// Objects is what analyze looks at.
type Objects struct {
	Services   []corev1.Service
	Slices     []discoveryv1.EndpointSlice
	Pods       []corev1.Pod
	Namespaces []corev1.Namespace
	// Live is true when the objects come from a cluster (so an empty pod
	// list means no pods, not "not given").
	Live bool
}

// LiveObjects lists everything analyze needs from a cluster.
func LiveObjects(ctx context.Context, c kubernetes.Interface) (*Objects, error) {
	o := &Objects{Live: true}
	svcs, err := c.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	eps, err := c.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pods, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	nss, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	o.Services, o.Slices, o.Pods, o.Namespaces = svcs.Items, eps.Items, pods.Items, nss.Items
	return o, nil
}

// FileObjects reads Services, EndpointSlices, Pods and Namespaces from
// YAML files; other kinds are ignored.
func FileObjects(paths []string) (*Objects, error) {
	o := &Objects{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			if u.Object == nil {
				continue
			}
			if u.GetNamespace() == "" && u.GetKind() != "Namespace" {
				u.SetNamespace("default")
			}
			var into any
			switch u.GetAPIVersion() + "/" + u.GetKind() {
			case "v1/Service":
				o.Services = append(o.Services, corev1.Service{})
				into = &o.Services[len(o.Services)-1]
			case "discovery.k8s.io/v1/EndpointSlice":
				o.Slices = append(o.Slices, discoveryv1.EndpointSlice{})
				into = &o.Slices[len(o.Slices)-1]
			case "v1/Pod":
				o.Pods = append(o.Pods, corev1.Pod{})
				into = &o.Pods[len(o.Pods)-1]
			case "v1/Namespace":
				o.Namespaces = append(o.Namespaces, corev1.Namespace{})
				into = &o.Namespaces[len(o.Namespaces)-1]
			default:
				continue
			}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
				return nil, fmt.Errorf("%s: %s %s: %w", p, u.GetKind(), u.GetName(), err)
			}
		}
	}
	return o, nil
}

// Analyze runs every analyzer over o. Findings are sorted by code, then
// object.
func Analyze(o *Objects) []Finding {
	var out []Finding
	add := func(code string, level Level, obj, format string, args ...any) {
		out = append(out, Finding{Code: code, Level: level, Object: obj, Message: fmt.Sprintf(format, args...)})
	}
	ready := map[string]int{} // namespace/service -> ready endpoints
	for _, es := range o.Slices {
		key := es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName]
		for _, e := range es.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				ready[key]++
			}
		}
	}
	enrolledNS := map[string]bool{}
	for _, ns := range o.Namespaces {
		enrolledNS[ns.Name] = ns.Labels[EnrollLabel] == "enabled"
	}
	type vipPort struct {
		vip   netip.Addr
		port  int32
		proto corev1.Protocol
	}
	owner := map[vipPort]string{}
	for _, svc := range o.Services {
		obj := "Service " + svc.Namespace + "/" + svc.Name
		key := svc.Namespace + "/" + svc.Name
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		if ready[key] == 0 {
			add(CodeNoEndpoints, LevelWarning, obj, "has no ready endpoints: connections to it are refused")
		}
		for i, p := range svc.Spec.Ports {
			if p.Name == "" && len(svc.Spec.Ports) > 1 {
				add(CodeUnnamedPort, LevelError, obj, "spec.ports[%d] (port %d) has no name: endpoints cannot be matched to it", i, p.Port)
			}
			if p.AppProtocol == nil && p.Protocol != corev1.ProtocolUDP && !namedForProtocol(p.Name) {
				add(CodePortProtocol, LevelInfo, obj, "port %d: neither appProtocol nor a protocol-prefixed name (http-, grpc-, tcp-...): L7 telemetry treats it as TCP", p.Port)
			}
		}
		var vips []string
		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			vips = append(vips, svc.Spec.ClusterIPs...)
			if len(svc.Spec.ClusterIPs) == 0 && svc.Spec.ClusterIP != "" {
				vips = append(vips, svc.Spec.ClusterIP)
			}
		}
		// Like mesh/convert, but lenient: a service with other errors still
		// claims its addresses, so every finding shows up in one run.
		vips = append(vips, svc.Spec.ExternalIPs...)
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP != "" {
				vips = append(vips, ing.IP)
			}
		}
		for _, v := range vips {
			a, err := netip.ParseAddr(v)
			if err != nil {
				continue
			}
			for _, p := range svc.Spec.Ports {
				proto := p.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				k := vipPort{a.Unmap(), p.Port, proto}
				if other, ok := owner[k]; ok && other != obj {
					add(CodeDuplicateVIP, LevelError, obj, "%s %s is also claimed by %s: only one of them is reachable", netip.AddrPortFrom(k.vip, uint16(k.port)), proto, other)
					continue
				}
				owner[k] = obj
			}
		}
		if len(svc.Spec.Selector) > 0 && (o.Live || len(o.Pods) > 0) {
			sel := labels.SelectorFromSet(svc.Spec.Selector)
			matched := 0
			for _, pod := range o.Pods {
				if pod.Namespace == svc.Namespace && sel.Matches(labels.Set(pod.Labels)) {
					matched++
					if len(o.Namespaces) > 0 && !enrolledNS[pod.Namespace] && pod.Labels[EnrollLabel] != "enabled" {
						add(CodeNotEnrolled, LevelWarning, "Pod "+pod.Namespace+"/"+pod.Name,
							"backs %s but neither its namespace nor the pod has %s=enabled: it is not in the mesh", obj, EnrollLabel)
					}
				}
			}
			if matched == 0 {
				add(CodeSelectorNoMatch, LevelWarning, obj, "selector %s matches no pod", sel)
			}
		}
	}
	slices.SortFunc(out, func(a, b Finding) int {
		if c := strings.Compare(a.Code, b.Code); c != 0 {
			return c
		}
		return strings.Compare(a.Object, b.Object)
	})
	return out
}

// namedForProtocol follows Istio's port naming: <protocol>[-<suffix>].
func namedForProtocol(name string) bool {
	proto, _, _ := strings.Cut(strings.ToLower(name), "-")
	return slices.Contains([]string{"http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "udp", "mongo", "mysql", "redis"}, proto)
}

// WriteFindings prints findings and returns whether any is an error or a
// warning.
func WriteFindings(w io.Writer, fs []Finding) bool {
	failed := false
	for _, f := range fs {
		fmt.Fprintln(w, f)
		failed = failed || f.Level != LevelInfo
	}
	if len(fs) == 0 {
		fmt.Fprintln(w, "✔ No validation issues found.")
	}
	return failed
}
