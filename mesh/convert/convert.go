package convert

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sockmesh/sockmesh/mesh"
)

// Annotations and labels sockmesh reads.
const (
	// LabelServiceName ties an EndpointSlice to its Service (Kubernetes').
	LabelServiceName = discoveryv1.LabelServiceName
	// AnnotationWeight gives every endpoint of an EndpointSlice a relative
	// weight (a whole number from 1 to 1000; default 1).
	AnnotationWeight = "sockmesh.io/weight"
)

// ErrNoService means an EndpointSlice names a Service that is not known.
var ErrNoService = errors.New("no such service")

// FieldError is a problem with one field of one object.
type FieldError struct {
	Object string // "Kind namespace/name"
	Field  string // path of the field, when known
	Msg    string
	Err    error // a sentinel, when one applies
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Object + ": " + e.Msg
	}
	return e.Object + ": " + e.Field + ": " + e.Msg
}

func (e *FieldError) Unwrap() error { return e.Err }

// Service converts a v1 Service. Its errors are *FieldError.
func Service(svc *corev1.Service) (*mesh.Service, error) {
	ns := svc.Namespace
	if ns == "" {
		ns = "default"
	}
	fail := func(field, format string, args ...any) error {
		return &FieldError{Object: "Service " + ns + "/" + svc.Name, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if svc.Name == "" {
		return nil, fail("metadata.name", "required")
	}
	out := &mesh.Service{Namespace: ns, Name: svc.Name}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return externalNameFrom(out, svc, fail)
	}

	ips := svc.Spec.ClusterIPs
	field := "spec.clusterIPs"
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips, field = []string{svc.Spec.ClusterIP}, "spec.clusterIP"
	}
	if svc.Spec.ClusterIP != "" && len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIP != svc.Spec.ClusterIPs[0] {
		return nil, fail("spec.clusterIP", "%q differs from spec.clusterIPs[0] %q", svc.Spec.ClusterIP, svc.Spec.ClusterIPs[0])
	}
	switch {
	case len(ips) == 0:
		return nil, fail("spec.clusterIP", "required: sockmesh does not allocate service VIPs, give one (or \"None\" for a headless service)")
	case len(ips) == 1 && ips[0] == corev1.ClusterIPNone:
		out.Headless = true
	default:
		if len(ips) > 2 {
			return nil, fail(field, "at most two addresses (one IPv4, one IPv6), got %d", len(ips))
		}
		for i, s := range ips {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return nil, fail(fmt.Sprintf("%s[%d]", field, i), "%q is not an IP address", s)
			}
			a = a.Unmap()
			if !a.IsGlobalUnicast() && !a.IsPrivate() {
				return nil, fail(fmt.Sprintf("%s[%d]", field, i), "%s cannot be a service VIP (loopback, multicast, link-local or unspecified)", a)
			}
			for _, b := range out.VIPs {
				if b.Is4() == a.Is4() {
					return nil, fail(fmt.Sprintf("%s[%d]", field, i), "two addresses of the same family")
				}
			}
			out.VIPs = append(out.VIPs, a)
		}
	}
	if !out.Headless {
		// externalIPs and LoadBalancer ingress IPs route like cluster IPs.
		extra := slices.Clone(svc.Spec.ExternalIPs)
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP != "" {
				extra = append(extra, ing.IP)
			}
		}
		for i, s := range extra {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return nil, fail(fmt.Sprintf("spec.externalIPs/status.loadBalancer.ingress[%d]", i), "%q is not an IP address", s)
			}
			if a = a.Unmap(); !slices.Contains(out.VIPs, a) {
				out.VIPs = append(out.VIPs, a)
			}
		}
	}
	if len(svc.Spec.Ports) == 0 && !out.Headless {
		return nil, fail("spec.ports", "at least one port is required (except for headless and ExternalName services)")
	}
	seen := map[string]bool{}
	for i, sp := range svc.Spec.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		if sp.Port < 1 || sp.Port > 65535 {
			return nil, fail(f+".port", "%d is out of range 1-65535", sp.Port)
		}
		proto := mesh.Protocol(sp.Protocol)
		switch proto {
		case "":
			proto = mesh.TCP
		case mesh.TCP, mesh.UDP:
		default:
			return nil, fail(f+".protocol", "%q is not supported (TCP or UDP)", sp.Protocol)
		}
		if len(svc.Spec.Ports) > 1 && sp.Name == "" {
			return nil, fail(f+".name", "required when a service has more than one port")
		}
		if seen[sp.Name] {
			return nil, fail(f+".name", "duplicate port name %q", sp.Name)
		}
		seen[sp.Name] = true
		port := mesh.Port{Name: sp.Name, Port: uint16(sp.Port), Protocol: proto}
		if sp.NodePort > 0 && sp.NodePort <= 65535 {
			port.NodePort = uint16(sp.NodePort)
		}
		switch {
		case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal != 0:
			if sp.TargetPort.IntVal < 1 || sp.TargetPort.IntVal > 65535 {
				return nil, fail(f+".targetPort", "%d is out of range 1-65535", sp.TargetPort.IntVal)
			}
			port.TargetPort = uint16(sp.TargetPort.IntVal)
		case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
			// a named target port: endpoints must list it by name
		}
		out.Ports = append(out.Ports, port)
	}
	return out, nil
}

// externalNameFrom reads an ExternalName service: a DNS alias, with no VIP
// or endpoints of its own.
func externalNameFrom(out *mesh.Service, svc *corev1.Service, fail func(field, format string, args ...any) error) (*mesh.Service, error) {
	name := strings.TrimSuffix(svc.Spec.ExternalName, ".")
	if name == "" {
		return nil, fail("spec.externalName", "required for type ExternalName")
	}
	if _, ok := dns.IsDomainName(name); !ok || len(name) > 253 {
		return nil, fail("spec.externalName", "%q is not a DNS name", svc.Spec.ExternalName)
	}
	if svc.Spec.ClusterIP != "" || len(svc.Spec.ClusterIPs) > 0 {
		return nil, fail("spec.clusterIP", "must be empty for type ExternalName")
	}
	out.ExternalName = name
	for i, sp := range svc.Spec.Ports {
		if sp.Port < 1 || sp.Port > 65535 {
			return nil, fail(fmt.Sprintf("spec.ports[%d].port", i), "%d is out of range 1-65535", sp.Port)
		}
		proto := mesh.Protocol(sp.Protocol)
		if proto == "" {
			proto = mesh.TCP
		}
		out.Ports = append(out.Ports, mesh.Port{Name: sp.Name, Port: uint16(sp.Port), Protocol: proto})
	}
	return out, nil
}

// Slice adds the endpoints of an EndpointSlice to the service it belongs
// to, found in byKey ("namespace/name"). A slice whose service is not there
// is ErrNoService (wrapped in a *FieldError). nodes, if not nil, gives the
// locality of endpoints whose slice names no zone.
func Slice(es *discoveryv1.EndpointSlice, byKey map[string]*mesh.Service, nodes func(name string) (region, zone string)) error {
	obj := "EndpointSlice " + es.Namespace + "/" + es.Name
	fail := func(field, format string, args ...any) error {
		return &FieldError{Object: obj, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if es.Name == "" {
		return fail("metadata.name", "required")
	}
	svcName := es.Labels[LabelServiceName]
	if svcName == "" {
		return fail("metadata.labels", "label %s is required", LabelServiceName)
	}
	svc := byKey[es.Namespace+"/"+svcName]
	if svc == nil {
		return &FieldError{Object: obj, Field: "metadata.labels[" + LabelServiceName + "]", Msg: fmt.Sprintf("no Service %s/%s is defined", es.Namespace, svcName), Err: ErrNoService}
	}
	weight := uint32(1)
	if w, ok := es.Annotations[AnnotationWeight]; ok {
		n, err := strconv.ParseUint(w, 10, 32)
		if err != nil || n < 1 || n > 1000 {
			return fail("metadata.annotations["+AnnotationWeight+"]", "%q is not a whole number from 1 to 1000", w)
		}
		weight = uint32(n)
	}
	var family func(netip.Addr) bool
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4:
		family = netip.Addr.Is4
	case discoveryv1.AddressTypeIPv6:
		family = func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }
	default:
		return fail("addressType", "%q is not supported (IPv4 or IPv6)", es.AddressType)
	}
	var ports []mesh.EndpointPort
	for i, ep := range es.Ports {
		f := fmt.Sprintf("ports[%d]", i)
		if ep.Port == nil || *ep.Port < 1 || *ep.Port > 65535 {
			return fail(f+".port", "required, in range 1-65535")
		}
		proto := mesh.TCP
		if ep.Protocol != nil {
			proto = mesh.Protocol(*ep.Protocol)
		}
		if proto != mesh.TCP && proto != mesh.UDP {
			return fail(f+".protocol", "%q is not supported (TCP or UDP)", proto)
		}
		name := ""
		if ep.Name != nil {
			name = *ep.Name
		}
		ports = append(ports, mesh.EndpointPort{Name: name, Port: uint16(*ep.Port), Protocol: proto})
	}
	for i, ep := range es.Endpoints {
		f := fmt.Sprintf("endpoints[%d]", i)
		if len(ep.Addresses) == 0 {
			return fail(f+".addresses", "at least one address is required")
		}
		addr, err := netip.ParseAddr(ep.Addresses[0])
		if err != nil || !family(addr) || addr.Zone() != "" {
			return fail(f+".addresses[0]", "%q is not an %s address", ep.Addresses[0], es.AddressType)
		}
		e := mesh.Endpoint{Address: addr, Ports: ports, Ready: true, Serving: true, Weight: weight}
		// Kubernetes: an unset ready or serving condition means ready.
		if c := ep.Conditions.Ready; c != nil {
			e.Ready = *c
		}
		if c := ep.Conditions.Serving; c != nil {
			e.Serving = *c
		} else {
			e.Serving = e.Ready
		}
		if c := ep.Conditions.Terminating; c != nil {
			e.Terminating = *c
		}
		if ep.NodeName != nil {
			e.Node = *ep.NodeName
		}
		if ep.Hints != nil {
			for _, z := range ep.Hints.ForZones {
				e.ZoneHints = append(e.ZoneHints, z.Name)
			}
		}
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			e.Pod = ep.TargetRef.Name
		}
		if ep.Zone != nil {
			e.Zone = *ep.Zone
		}
		if nodes != nil && e.Node != "" {
			region, zone := nodes(e.Node)
			e.Region = region
			if e.Zone == "" {
				e.Zone = zone
			}
		}
		svc.Endpoints = append(svc.Endpoints, e)
	}
	return nil
}
