package node

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/sockmesh/sockmesh/node/telemetry"
	"github.com/sockmesh/sockmesh/node/xdsclient"
	"github.com/sockmesh/sockmesh/xds"
)

// directory answers telemetry's questions about peers from one accepted
// xDS state, indexed once: who has this address (an endpoint, with its
// service, or a pod of the workloads cluster), and which service a client
// reached by a VIP or a name.
type directory struct {
	st *xdsclient.State
	// endpoints: address -> the first endpoint with it, in cluster-name
	// order, and its cluster.
	endpoints map[netip.Addr]located
	// pods: address -> its pod's entry in xds.WorkloadsCluster.
	pods map[netip.Addr]*endpointv3.LbEndpoint
	// vips: VIP -> the cluster its first listener (by name) routes to.
	vips map[netip.Addr]string
	// names: a service's DNS names -> its first cluster; short names
	// ("web") are keyed "web/namespace".
	names map[string]string
}

type located struct {
	cluster string
	lbe     *endpointv3.LbEndpoint
}

func newDirectory(st *xdsclient.State) *directory {
	d := &directory{st: st, endpoints: map[netip.Addr]located{}, pods: map[netip.Addr]*endpointv3.LbEndpoint{},
		vips: map[netip.Addr]string{}, names: map[string]string{}}
	for _, name := range slices.Sorted(maps.Keys(st.Assignments)) {
		for _, loc := range st.Assignments[name].GetEndpoints() {
			for _, lbe := range loc.GetLbEndpoints() {
				a, err := netip.ParseAddr(lbe.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
				if err != nil {
					continue
				}
				a = a.Unmap()
				if name == xds.WorkloadsCluster {
					if _, ok := d.pods[a]; !ok {
						d.pods[a] = lbe
					}
				} else if _, ok := d.endpoints[a]; !ok {
					d.endpoints[a] = located{name, lbe}
				}
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(st.Listeners)) {
		l := st.Listeners[name]
		vip, err := netip.ParseAddr(l.GetAddress().GetSocketAddress().GetAddress())
		if err != nil {
			continue
		}
		if c, err := xds.ListenerCluster(l); err == nil && c != "" {
			if _, ok := d.vips[vip.Unmap()]; !ok {
				d.vips[vip.Unmap()] = c
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(st.Clusters)) {
		svc := st.Clusters[name].GetMetadata().GetFilterMetadata()["sockmesh"].GetFields()
		fqdn, sname, sns := svc["hostname"].GetStringValue(), svc["service"].GetStringValue(), svc["namespace"].GetStringValue()
		if fqdn == "" {
			continue
		}
		for _, n := range []string{fqdn, sname + "." + sns, sname + "." + sns + ".svc", sname + "/" + sns} {
			if _, ok := d.names[n]; !ok {
				d.names[n] = name
			}
		}
	}
	return d
}

// identify names the endpoint that has one of addrs, and its service.
// The workload comes from the endpoint, or else from the pod with one of
// the addresses (xds.WorkloadsCluster): a pod that is no endpoint of any
// service is named too, with no service.
func (d *directory) identify(addrs []netip.Addr) (telemetry.Destination, bool) {
	var dst telemetry.Destination
	found := false
	for _, a := range addrs {
		if e, ok := d.endpoints[a.Unmap()]; ok {
			dst, found = serviceOf(d.st.Clusters[e.cluster]), true
			dst.Peer = workloadOf(e.lbe)
			break
		}
	}
	if dst.Workload == "" {
		for _, a := range addrs {
			if lbe, ok := d.pods[a.Unmap()]; ok {
				dst.Peer, found = workloadOf(lbe), true
				break
			}
		}
	}
	return dst, found
}

// service says which service a client in namespace ns reached by host: a
// VIP (the cluster its listener routes to), an endpoint's address, or the
// service's name as Kubernetes DNS resolves it ("web", "web.ns",
// "web.ns.svc", the FQDN). The destination workload is named when every
// endpoint of the service belongs to one workload; else, as the client
// cannot tell which one answered, it stays unknown.
func (d *directory) service(host, ns string) (telemetry.Destination, bool) {
	if host == "" {
		return telemetry.Destination{}, false
	}
	var cluster string
	if ip, err := netip.ParseAddr(host); err == nil {
		if cluster = d.vips[ip.Unmap()]; cluster == "" {
			return d.identify([]netip.Addr{ip}) // a pod, dialled directly
		}
	} else {
		host = strings.TrimSuffix(host, ".")
		if cluster = d.names[host]; cluster == "" && !strings.Contains(host, ".") {
			cluster = d.names[host+"/"+ns]
		}
	}
	c, ok := d.st.Clusters[cluster]
	if !ok {
		return telemetry.Destination{}, false
	}
	dst := serviceOf(c)
	var workloads []telemetry.Peer
	for _, loc := range d.st.Assignments[cluster].GetEndpoints() {
		for _, lbe := range loc.GetLbEndpoints() {
			if w := workloadOf(lbe); !slices.Contains(workloads, w) {
				workloads = append(workloads, w)
			}
		}
	}
	if len(workloads) == 1 {
		dst.Peer = workloads[0]
	}
	return dst, true
}

// serviceOf reads the service a cluster stands for from its metadata.
func serviceOf(c *clusterv3.Cluster) telemetry.Destination {
	svc := c.GetMetadata().GetFilterMetadata()["sockmesh"].GetFields()
	return telemetry.Destination{
		Service:          svc["hostname"].GetStringValue(),
		ServiceName:      svc["service"].GetStringValue(),
		ServiceNamespace: svc["namespace"].GetStringValue(),
	}
}

// workloadOf reads the workload an endpoint belongs to from its metadata.
func workloadOf(lbe *endpointv3.LbEndpoint) telemetry.Peer {
	wl := lbe.GetMetadata().GetFilterMetadata()["sockmesh"].GetFields()
	str := func(k string) string { return wl[k].GetStringValue() }
	p := telemetry.Peer{
		Workload:          str("workload"),
		Namespace:         str("workloadNamespace"),
		CanonicalService:  str("canonicalService"),
		CanonicalRevision: str("canonicalRevision"),
		App:               str("canonicalService"),
		Version:           str("canonicalRevision"),
	}
	if sa := str("serviceAccount"); sa != "" && p.Namespace != "" {
		p.Principal = "spiffe://cluster.local/ns/" + p.Namespace + "/sa/" + sa
	}
	return p
}
