package mesh

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Protocol is a transport protocol of a service port.
type Protocol string

// Protocols a service port can carry.
const (
	TCP Protocol = "TCP"
	UDP Protocol = "UDP"
)

// DefaultDomain is the cluster domain services live under.
const DefaultDomain = "cluster.local"

// Service is one service: a set of virtual IPs and ports in front of a set
// of endpoints.
type Service struct {
	Namespace string
	Name      string
	// VIPs are the service's cluster IPs, IPv4 and/or IPv6. Empty for a
	// headless or ExternalName service.
	VIPs []netip.Addr
	// Headless services (clusterIP: None) resolve to their ready
	// endpoints' addresses instead of a VIP.
	Headless bool
	// ExternalName, when set, makes the service a DNS alias (CNAME) of
	// this host; it has no VIP and no endpoints.
	ExternalName string
	Ports        []Port
	Endpoints    []Endpoint
}

// Port is one port a service exposes.
type Port struct {
	Name     string
	Port     uint16
	Protocol Protocol
	// TargetPort is the endpoint port used when an endpoint lists no port of
	// this name (0: the same as Port).
	TargetPort uint16
	// NodePort, when not 0, also exposes the port on every node address.
	NodePort uint16
}

// Endpoint is one backend of a service.
type Endpoint struct {
	Address netip.Addr
	// Ports maps a service port name to this endpoint's port for it.
	Ports       []EndpointPort
	Ready       bool
	Serving     bool
	Terminating bool
	Node        string
	Zone        string
	Region      string
	// Weight is the relative share of new connections, at least 1.
	Weight uint32
	// ZoneHints are the zones whose clients should use this endpoint
	// (Kubernetes topology-aware routing); empty means no hint.
	ZoneHints []string
	// Pod names the pod behind the endpoint (EndpointSlice targetRef).
	Pod string
	// Workload is who the endpoint is, when the source knows its pod.
	Workload *Workload
}

// Workload is the identity of a pod, as Istio derives it (its telemetry
// labels use these names).
type Workload struct {
	Name              string // the owning Deployment/StatefulSet/..., or the pod
	Namespace         string
	ServiceAccount    string
	CanonicalService  string
	CanonicalRevision string
	// Enrolled is true when the pod or its namespace carries
	// sockmesh.io/dataplane-mode=enabled.
	Enrolled bool
}

// EndpointPort is one named port of an endpoint.
type EndpointPort struct {
	Name     string
	Port     uint16
	Protocol Protocol
}

// Key identifies a service: "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Hostname is the service's DNS name in domain.
func (s *Service) Hostname(domain string) string {
	return fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, domain)
}

// TargetFor returns the port an endpoint serves service port p on, and false
// when the endpoint does not serve it.
func (e *Endpoint) TargetFor(p Port) (uint16, bool) {
	for _, ep := range e.Ports {
		if ep.Name == p.Name && ep.Protocol == p.Protocol {
			return ep.Port, true
		}
	}
	if len(e.Ports) == 0 {
		if p.TargetPort != 0 {
			return p.TargetPort, true
		}
		return p.Port, true
	}
	return 0, false
}

// Healthy reports whether new connections may go to e: ready, or serving
// while terminating when nothing else is (the caller decides the latter).
func (e *Endpoint) Healthy() bool { return e.Ready }

// Pod is a workload instance the mesh knows by its addresses, whether or
// not it is an endpoint of a service: a server names a client that is
// only a client by it.
type Pod struct {
	Namespace, Name string
	Addrs           []netip.Addr
	Workload        Workload
}

// Key identifies a pod: "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Snapshot is an immutable view of the whole mesh at one version.
type Snapshot struct {
	Version  uint64
	Services []*Service // sorted by Key
	Pods     []*Pod     // sorted by Key
	// NodeAddrs are the addresses of the cluster's nodes, where NodePorts
	// are reachable.
	NodeAddrs []netip.Addr
}

// Service looks a service up by namespace and name.
func (s *Snapshot) Service(namespace, name string) *Service {
	key := namespace + "/" + name
	i, ok := slices.BinarySearchFunc(s.Services, key, func(svc *Service, k string) int {
		return strings.Compare(svc.Key(), k)
	})
	if !ok {
		return nil
	}
	return s.Services[i]
}
