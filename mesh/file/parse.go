package file

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

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

// Error is one problem in the input, located as precisely as known.
type Error struct {
	File   string // path of the file
	Line   int    // first line of the YAML document, 1-based
	Object string // "Kind namespace/name", when known
	Field  string // path of the offending field, when known
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d", e.File, e.Line)
	if e.Object != "" {
		fmt.Fprintf(&b, ": %s", e.Object)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, ": %s", e.Field)
	}
	fmt.Fprintf(&b, ": %s", e.Msg)
	return b.String()
}

// document is one YAML document and where it came from.
type document struct {
	file string
	line int
	data []byte
}

// splitDocuments cuts a multi-document YAML stream at "---" lines.
func splitDocuments(file string, data []byte) []document {
	var docs []document
	var cur bytes.Buffer
	start, line := 1, 0
	flush := func() {
		if len(bytes.TrimSpace(stripComments(cur.Bytes()))) > 0 {
			docs = append(docs, document{file: file, line: start, data: slices.Clone(cur.Bytes())})
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.HasPrefix(text, "---") && strings.TrimSpace(strings.SplitN(text[3:], "#", 2)[0]) == "" {
			flush()
			start = line + 1
			continue
		}
		cur.WriteString(text)
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

func stripComments(b []byte) []byte {
	var out bytes.Buffer
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out.Write(l)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

type parsed struct {
	services []*mesh.Service
	slices   []sliceDoc
}

type sliceDoc struct {
	doc   document
	slice *discoveryv1.EndpointSlice
}

// Parse validates a set of files' contents (path → bytes) and returns the
// services they describe. All problems are returned together, joined.
func Parse(files map[string][]byte) ([]*mesh.Service, error) {
	var p parsed
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(files)) {
		for _, doc := range splitDocuments(name, files[name]) {
			if err := p.add(doc); err != nil {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, p.checkDuplicates()...)
	errs = append(errs, p.attachSlices()...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(p.services, func(a, b *mesh.Service) int { return strings.Compare(a.Key(), b.Key()) })
	return p.services, nil
}

func (p *parsed) add(doc document) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc.data, &tm); err != nil {
		return &Error{File: doc.file, Line: doc.line, Msg: fmt.Sprintf("invalid YAML: %v", err)}
	}
	switch {
	case tm.APIVersion == "v1" && tm.Kind == "Service":
		var svc corev1.Service
		if err := decodeStrict(doc.data, &svc); err != nil {
			return &Error{File: doc.file, Line: doc.line, Object: "Service", Msg: err.Error()}
		}
		s, err := serviceFrom(doc, &svc)
		if err != nil {
			return err
		}
		p.services = append(p.services, s)
	case tm.APIVersion == "discovery.k8s.io/v1" && tm.Kind == "EndpointSlice":
		var es discoveryv1.EndpointSlice
		if err := decodeStrict(doc.data, &es); err != nil {
			return &Error{File: doc.file, Line: doc.line, Object: "EndpointSlice", Msg: err.Error()}
		}
		if es.Namespace == "" {
			es.Namespace = "default"
		}
		p.slices = append(p.slices, sliceDoc{doc: doc, slice: &es})
	case tm.Kind == "" || tm.APIVersion == "":
		return &Error{File: doc.file, Line: doc.line, Field: "apiVersion/kind", Msg: "missing; every document needs both"}
	default:
		return &Error{File: doc.file, Line: doc.line, Field: "kind", Msg: fmt.Sprintf("unsupported kind %s %s (supported: v1 Service, discovery.k8s.io/v1 EndpointSlice)", tm.APIVersion, tm.Kind)}
	}
	return nil
}

// decodeStrict decodes a YAML document into v the way the API server does:
// unknown and duplicate fields are errors that name the field's path.
func decodeStrict(data []byte, v any) error {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("invalid YAML: %w", err)
	}
	strict, err := kjson.UnmarshalStrict(js, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func serviceFrom(doc document, svc *corev1.Service) (*mesh.Service, error) {
	ns := svc.Namespace
	if ns == "" {
		ns = "default"
	}
	fail := func(field, format string, args ...any) error {
		return &Error{File: doc.file, Line: doc.line, Object: "Service " + ns + "/" + svc.Name, Field: field, Msg: fmt.Sprintf(format, args...)}
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

// checkDuplicates rejects two services claiming the same VIP, port and
// protocol, and two documents defining the same service.
func (p *parsed) checkDuplicates() []error {
	var errs []error
	type vipPort struct {
		vip   netip.Addr
		port  uint16
		proto mesh.Protocol
	}
	owner := map[vipPort]string{}
	byKey := map[string]bool{}
	for _, s := range p.services {
		if byKey[s.Key()] {
			errs = append(errs, fmt.Errorf("Service %s: defined more than once", s.Key()))
			continue
		}
		byKey[s.Key()] = true
		for _, vip := range s.VIPs {
			for _, port := range s.Ports {
				k := vipPort{vip, port.Port, port.Protocol}
				if other, ok := owner[k]; ok {
					errs = append(errs, fmt.Errorf("Service %s: spec.ports: %s %s is already used by Service %s", s.Key(), netip.AddrPortFrom(vip, port.Port), port.Protocol, other))
					continue
				}
				owner[k] = s.Key()
			}
		}
	}
	return errs
}

// attachSlices turns EndpointSlices into the endpoints of their services.
func (p *parsed) attachSlices() []error {
	byKey := map[string]*mesh.Service{}
	for _, s := range p.services {
		byKey[s.Key()] = s
	}
	var errs []error
	for _, sd := range p.slices {
		if err := attachSlice(sd, byKey); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func attachSlice(sd sliceDoc, byKey map[string]*mesh.Service) error {
	es := sd.slice
	obj := "EndpointSlice " + es.Namespace + "/" + es.Name
	fail := func(field, format string, args ...any) error {
		return &Error{File: sd.doc.file, Line: sd.doc.line, Object: obj, Field: field, Msg: fmt.Sprintf(format, args...)}
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
		return fail("metadata.labels["+LabelServiceName+"]", "no Service %s/%s is defined", es.Namespace, svcName)
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
		if ep.Zone != nil {
			e.Zone = *ep.Zone
		}
		svc.Endpoints = append(svc.Endpoints, e)
	}
	return nil
}
