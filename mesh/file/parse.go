package file

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/mesh/convert"
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
	pods     map[string]*corev1.Pod // "namespace/name"
}

type sliceDoc struct {
	doc   document
	slice *discoveryv1.EndpointSlice
}

// Parse validates a set of files' contents (path → bytes) and returns the
// services they describe. All problems are returned together, joined.
func Parse(files map[string][]byte) ([]*mesh.Service, error) {
	m, err := ParseMesh(files)
	if err != nil {
		return nil, err
	}
	return m.Services, nil
}

// Mesh is what a set of files describes.
type Mesh struct {
	Services []*mesh.Service
	// Pods are the Pods with addresses (status.podIP or podIPs): a server
	// names its clients by them.
	Pods []*mesh.Pod
}

// ParseMesh is Parse, with the pods.
func ParseMesh(files map[string][]byte) (*Mesh, error) {
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
	p.identify()
	slices.SortFunc(p.services, func(a, b *mesh.Service) int { return strings.Compare(a.Key(), b.Key()) })
	return &Mesh{Services: p.services, Pods: p.podsWithAddrs()}, nil
}

// podsWithAddrs are the Pods given with addresses, with their workloads.
func (p *parsed) podsWithAddrs() []*mesh.Pod {
	var out []*mesh.Pod
	for _, key := range slices.Sorted(maps.Keys(p.pods)) {
		if mp := convert.PodOf(p.pods[key], nil); mp != nil {
			out = append(out, mp)
		}
	}
	return out
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
	case tm.APIVersion == "v1" && tm.Kind == "Pod":
		var pod corev1.Pod
		if err := decodeStrict(doc.data, &pod); err != nil {
			return &Error{File: doc.file, Line: doc.line, Object: "Pod", Msg: err.Error()}
		}
		if pod.Name == "" {
			return &Error{File: doc.file, Line: doc.line, Object: "Pod", Field: "metadata.name", Msg: "required"}
		}
		if pod.Namespace == "" {
			pod.Namespace = "default"
		}
		key := pod.Namespace + "/" + pod.Name
		if p.pods[key] != nil {
			return &Error{File: doc.file, Line: doc.line, Object: "Pod " + key, Msg: "defined more than once"}
		}
		if p.pods == nil {
			p.pods = map[string]*corev1.Pod{}
		}
		p.pods[key] = &pod
	case tm.Kind == "" || tm.APIVersion == "":
		return &Error{File: doc.file, Line: doc.line, Field: "apiVersion/kind", Msg: "missing; every document needs both"}
	default:
		return &Error{File: doc.file, Line: doc.line, Field: "kind", Msg: fmt.Sprintf("unsupported kind %s %s (supported: v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Pod)", tm.APIVersion, tm.Kind)}
	}
	return nil
}

// identify names the workload behind each endpoint whose EndpointSlice
// targetRef points at a Pod given in the files, as Istio would from the
// pod (its controller, labels and service account). An endpoint whose pod
// is not given keeps an unknown workload, as in Istio's metrics.
func (p *parsed) identify() {
	for _, svc := range p.services {
		for i := range svc.Endpoints {
			e := &svc.Endpoints[i]
			if pod := p.pods[svc.Namespace+"/"+e.Pod]; e.Pod != "" && pod != nil {
				e.Workload = convert.WorkloadOf(pod, nil)
			}
		}
	}
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

// serviceFrom converts a Service document, locating errors in the file.
func serviceFrom(doc document, svc *corev1.Service) (*mesh.Service, error) {
	s, err := convert.Service(svc)
	return s, located(doc, err)
}

// located adds a document's file and line to a conversion error.
func located(doc document, err error) error {
	var fe *convert.FieldError
	if errors.As(err, &fe) {
		return &Error{File: doc.file, Line: doc.line, Object: fe.Object, Field: fe.Field, Msg: fe.Msg}
	}
	if err != nil {
		return &Error{File: doc.file, Line: doc.line, Msg: err.Error()}
	}
	return nil
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
	if sd.slice.Name == "" {
		return &Error{File: sd.doc.file, Line: sd.doc.line, Object: "EndpointSlice", Field: "metadata.name", Msg: "required"}
	}
	return located(sd.doc, convert.Slice(sd.slice, byKey, nil))
}
