package xds

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	matcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sockmesh/sockmesh/mesh"
)

// MetadataKey is the filter_metadata key under which sockmesh puts what
// xDS has no field for.
const MetadataKey = "sockmesh"

// Names of the Envoy extensions the translation uses.
const (
	tcpProxyFilter = "envoy.filters.network.tcp_proxy"
	udpProxyFilter = "envoy.filters.udp_listener.udp_proxy"
)

// Resources is one translation of the mesh, by type.
type Resources struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
}

// ClusterName is the Istio-style name of the cluster for one service port:
// "outbound|PORT||HOST" for TCP; UDP, which Istio does not have, uses the
// "outbound-udp" direction so the names of a TCP and a UDP port with the same
// number do not collide.
func ClusterName(svc *mesh.Service, p mesh.Port, domain string) string {
	dir := "outbound"
	if p.Protocol == mesh.UDP {
		dir = "outbound-udp"
	}
	return fmt.Sprintf("%s|%d||%s", dir, p.Port, svc.Hostname(domain))
}

// ListenerName names the listener of one VIP and port: "VIP_PORT" as Istio
// names its outbound listeners, with "_udp" appended for UDP.
func ListenerName(vip netip.Addr, p mesh.Port) string {
	name := fmt.Sprintf("%s_%d", vip, p.Port)
	if p.Protocol == mesh.UDP {
		name += "_udp"
	}
	return name
}

// Translate turns a snapshot of the mesh into Envoy resources. The result
// depends only on the snapshot's content, in a stable order.
func Translate(snap *mesh.Snapshot, domain string) (*Resources, error) {
	var out Resources
	for _, svc := range snap.Services {
		ports := svc.Ports
		if len(ports) == 0 {
			// A service without ports (headless or ExternalName) still
			// needs a name in DNS: a port-0 cluster carries its metadata.
			ports = []mesh.Port{{Protocol: mesh.TCP}}
		}
		for _, port := range ports {
			cluster := ClusterName(svc, port, domain)
			meta, err := serviceMetadata(svc, port, domain)
			if err != nil {
				return nil, fmt.Errorf("service %s port %d: %w", svc.Key(), port.Port, err)
			}
			out.Clusters = append(out.Clusters, buildCluster(cluster, meta))
			cla, err := buildAssignment(cluster, svc, port)
			if err != nil {
				return nil, fmt.Errorf("service %s port %d: %w", svc.Key(), port.Port, err)
			}
			out.Endpoints = append(out.Endpoints, cla)
			for _, vip := range svc.VIPs {
				l, err := buildListener(vip, port, cluster, meta)
				if err != nil {
					return nil, fmt.Errorf("service %s port %d: %w", svc.Key(), port.Port, err)
				}
				out.Listeners = append(out.Listeners, l)
			}
			if port.NodePort != 0 {
				// A NodePort answers on every node's address: connects to
				// it from the mesh are routed like the cluster IP.
				np := port
				np.Port = port.NodePort
				for _, addr := range snap.NodeAddrs {
					l, err := buildListener(addr, np, cluster, meta)
					if err != nil {
						return nil, fmt.Errorf("service %s node port %d: %w", svc.Key(), port.NodePort, err)
					}
					l.Name = "nodeport_" + l.Name
					out.Listeners = append(out.Listeners, l)
				}
			}
			if port.Protocol == mesh.TCP && port.Port != 0 {
				ls, rc, err := buildProxyless(svc, port, cluster, domain)
				if err != nil {
					return nil, fmt.Errorf("service %s port %d: %w", svc.Key(), port.Port, err)
				}
				out.Listeners = append(out.Listeners, ls...)
				out.Routes = append(out.Routes, rc)
			}
		}
	}
	if len(snap.Pods) > 0 {
		c, cla, err := buildWorkloads(snap.Pods)
		if err != nil {
			return nil, err
		}
		out.Clusters = append(out.Clusters, c)
		out.Endpoints = append(out.Endpoints, cla)
	}
	return &out, nil
}

// WorkloadsCluster is the cluster whose endpoints are every pod the mesh
// knows by address, with its workload in the endpoint's metadata (as a
// service's endpoints have it). No listener routes to it: agents read it to
// name the clients their servers see, even ones that are no endpoint of
// any service. Envoy keeps it as an unused cluster.
const WorkloadsCluster = "sockmesh|workloads"

func buildWorkloads(pods []*mesh.Pod) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment, error) {
	meta, err := structpb.NewStruct(map[string]any{"workloads": true})
	if err != nil {
		return nil, nil, err
	}
	c := buildCluster(WorkloadsCluster, &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: meta}})
	loc := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{}, LoadBalancingWeight: wrapperspb.UInt32(1)}
	for _, p := range pods {
		md := endpointMetadata(mesh.Endpoint{Workload: &p.Workload})
		md["pod"] = p.Name
		s, err := structpb.NewStruct(md)
		if err != nil {
			return nil, nil, fmt.Errorf("pod %s: %w", p.Key(), err)
		}
		for _, a := range p.Addrs {
			loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(a, 0, corev3.SocketAddress_TCP),
				}},
				Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: s}},
			})
		}
	}
	return c, &endpointv3.ClusterLoadAssignment{ClusterName: WorkloadsCluster, Endpoints: []*endpointv3.LocalityLbEndpoints{loc}}, nil
}

// serviceMetadata is what agents need beyond Envoy's fields, in
// filter_metadata["sockmesh"]: the service's identity, its DNS name and
// VIPs (for the agent's DNS server), headless and ExternalName, and the
// port's name, number and protocol.
func serviceMetadata(svc *mesh.Service, p mesh.Port, domain string) (*corev3.Metadata, error) {
	vips := []any{}
	for _, v := range svc.VIPs {
		vips = append(vips, v.String())
	}
	fields := map[string]any{
		"service":    svc.Name,
		"namespace":  svc.Namespace,
		"hostname":   svc.Hostname(domain),
		"vips":       vips,
		"port":       p.Name,
		"portNumber": float64(p.Port),
		"protocol":   string(p.Protocol),
	}
	if svc.Headless {
		fields["headless"] = true
	}
	if svc.ExternalName != "" {
		fields["externalName"] = svc.ExternalName
	}
	s, err := structpb.NewStruct(fields)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: s}}, nil
}

func buildCluster(name string, meta *corev3.Metadata) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(10 * time.Second),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		},
		Metadata: meta,
	}
}

type localityKey struct{ region, zone string }

// endpointMetadata is an endpoint's node and, when known, its workload's
// identity (Istio's telemetry label names come from these).
func endpointMetadata(ep mesh.Endpoint) map[string]any {
	md := map[string]any{}
	if ep.Node != "" {
		md["node"] = ep.Node
	}
	if len(ep.ZoneHints) > 0 {
		hints := make([]any, len(ep.ZoneHints))
		for i, z := range ep.ZoneHints {
			hints[i] = z
		}
		md["zoneHints"] = hints
	}
	if w := ep.Workload; w != nil {
		md["workload"] = w.Name
		md["workloadNamespace"] = w.Namespace
		md["serviceAccount"] = w.ServiceAccount
		md["canonicalService"] = w.CanonicalService
		md["canonicalRevision"] = w.CanonicalRevision
		md["enrolled"] = w.Enrolled
	}
	return md
}

func buildAssignment(cluster string, svc *mesh.Service, port mesh.Port) (*endpointv3.ClusterLoadAssignment, error) {
	proto := socketProtocol(port.Protocol)
	groups := map[localityKey]*endpointv3.LocalityLbEndpoints{}
	for _, ep := range svc.Endpoints {
		target, ok := ep.TargetFor(port)
		if port.Port == 0 {
			target, ok = 0, true // port-less (headless) service: addresses only
		}
		if !ok {
			continue
		}
		lk := localityKey{ep.Region, ep.Zone}
		g := groups[lk]
		if g == nil {
			g = &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Region: ep.Region, Zone: ep.Zone}}
			groups[lk] = g
		}
		weight := max(ep.Weight, 1)
		lbe := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(ep.Address, target, proto),
			}},
			HealthStatus:        healthStatus(ep),
			LoadBalancingWeight: wrapperspb.UInt32(weight),
		}
		if md := endpointMetadata(ep); len(md) > 0 {
			s, err := structpb.NewStruct(md)
			if err != nil {
				return nil, fmt.Errorf("endpoint %s: %w", ep.Address, err)
			}
			lbe.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: s}}
		}
		g.LbEndpoints = append(g.LbEndpoints, lbe)
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	for _, lk := range slices.SortedFunc(maps.Keys(groups), func(a, b localityKey) int {
		return cmp.Or(cmp.Compare(a.region, b.region), cmp.Compare(a.zone, b.zone))
	}) {
		g := groups[lk]
		var total uint32
		for _, e := range g.LbEndpoints {
			total += e.GetLoadBalancingWeight().GetValue()
		}
		// gRPC's xDS client drops localities without a weight.
		g.LoadBalancingWeight = wrapperspb.UInt32(max(total, 1))
		cla.Endpoints = append(cla.Endpoints, g)
	}
	return cla, nil
}

// healthStatus maps Kubernetes endpoint conditions to Envoy's: ready is
// HEALTHY; serving while terminating is DRAINING (no new connections unless
// nothing else is left); anything else is UNHEALTHY.
func healthStatus(ep mesh.Endpoint) corev3.HealthStatus {
	switch {
	case ep.Ready && !ep.Terminating:
		return corev3.HealthStatus_HEALTHY
	case ep.Serving && ep.Terminating:
		return corev3.HealthStatus_DRAINING
	default:
		return corev3.HealthStatus_UNHEALTHY
	}
}

func socketProtocol(p mesh.Protocol) corev3.SocketAddress_Protocol {
	if p == mesh.UDP {
		return corev3.SocketAddress_UDP
	}
	return corev3.SocketAddress_TCP
}

func socketAddress(a netip.Addr, port uint16, proto corev3.SocketAddress_Protocol) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      proto,
		Address:       a.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func buildListener(vip netip.Addr, port mesh.Port, cluster string, meta *corev3.Metadata) (*listenerv3.Listener, error) {
	l := &listenerv3.Listener{
		Name:             ListenerName(vip, port),
		Address:          socketAddress(vip, port.Port, socketProtocol(port.Protocol)),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		// Like Istio's outbound VIP listeners: traffic reaches them by
		// capture, never by a bind on the VIP.
		BindToPort: wrapperspb.Bool(false),
		Metadata:   meta,
	}
	if port.Protocol == mesh.UDP {
		route, err := anypb.New(&udpproxyv3.Route{Cluster: cluster})
		if err != nil {
			return nil, err
		}
		cfg, err := anypb.New(&udpproxyv3.UdpProxyConfig{
			StatPrefix: cluster,
			RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{Matcher: &matcherv3.Matcher{
				OnNoMatch: &matcherv3.Matcher_OnMatch{OnMatch: &matcherv3.Matcher_OnMatch_Action{
					Action: &xdscorev3.TypedExtensionConfig{Name: "route", TypedConfig: route},
				}},
			}},
		})
		if err != nil {
			return nil, err
		}
		l.UdpListenerConfig = &listenerv3.UdpListenerConfig{}
		l.ListenerFilters = []*listenerv3.ListenerFilter{{
			Name:       udpProxyFilter,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: cfg},
		}}
		return l, nil
	}
	cfg, err := anypb.New(&tcpproxyv3.TcpProxy{
		StatPrefix:       cluster,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	})
	if err != nil {
		return nil, err
	}
	l.FilterChains = []*listenerv3.FilterChain{{
		Filters: []*listenerv3.Filter{{
			Name:       tcpProxyFilter,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg},
		}},
	}}
	return l, nil
}

// Snapshot builds a go-control-plane snapshot from resources. Each type's
// version is a hash of its content, so it changes only when content does.
func (r *Resources) Snapshot() (*cachev3.Snapshot, error) {
	snap := &cachev3.Snapshot{}
	for typ, items := range map[types.ResponseType][]types.Resource{
		types.Listener: r.Listeners,
		types.Route:    r.Routes,
		types.Cluster:  r.Clusters,
		types.Endpoint: r.Endpoints,
	} {
		v, err := contentVersion(items)
		if err != nil {
			return nil, err
		}
		snap.Resources[typ] = cachev3.NewResources(v, items)
	}
	// snap.Consistent() is not used: it does not see route references in
	// api_listeners, which proxyless gRPC listeners are made of. Translate
	// emits every referenced route and assignment by construction.
	return snap, nil
}

// contentVersion hashes the deterministic encoding of items.
func contentVersion(items []types.Resource) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, it := range items {
		b, err := opts.Marshal(it)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// ProxylessNames are the names a gRPC client may use as an xds:/// target
// for a service port, longest first: HOST:PORT with the full hostname,
// NAME.NAMESPACE.svc, and NAME.NAMESPACE. A name without a port means
// port 80 to gRPC only, so only the forms with ports are listed.
func ProxylessNames(svc *mesh.Service, p mesh.Port, domain string) []string {
	return []string{
		fmt.Sprintf("%s:%d", svc.Hostname(domain), p.Port),
		fmt.Sprintf("%s.%s.svc:%d", svc.Name, svc.Namespace, p.Port),
		fmt.Sprintf("%s.%s:%d", svc.Name, svc.Namespace, p.Port),
	}
}

// buildProxyless makes what a proxyless gRPC client resolves a target with:
// per name, a Listener whose api_listener is an HttpConnectionManager with
// RDS and the router filter; and one RouteConfiguration sending every
// request to the service port's cluster. The route configuration is named
// after the first (fully qualified) listener name.
func buildProxyless(svc *mesh.Service, p mesh.Port, cluster, domain string) ([]types.Resource, *routev3.RouteConfiguration, error) {
	names := ProxylessNames(svc, p, domain)
	routeName := names[0]
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, nil, err
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: cluster,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: routeName,
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	})
	if err != nil {
		return nil, nil, err
	}
	var listeners []types.Resource
	for _, n := range names {
		listeners = append(listeners, &listenerv3.Listener{
			Name:        n,
			ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
		})
	}
	domains := slices.Clone(names)
	for _, n := range names {
		host, _, _ := strings.Cut(n, ":")
		domains = append(domains, host)
	}
	rc := &routev3.RouteConfiguration{
		Name: routeName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    routeName,
			Domains: domains,
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
				}},
			}},
		}},
	}
	return listeners, rc, nil
}
