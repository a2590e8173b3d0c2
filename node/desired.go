package node

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/node/dataplane"
	"github.com/sockmesh/sockmesh/node/xdsclient"
	"github.com/sockmesh/sockmesh/xds"
)

// desired turns an xDS state into the services the dataplane should route.
// A listener that routes to a cluster whose endpoints have not arrived is
// left out until they do. Malformed resources are errors: the state is
// NACKed and the previous one stays.
func desired(st *xdsclient.State, zone string) ([]dataplane.Service, error) {
	var out []dataplane.Service
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(st.Listeners)) {
		l := st.Listeners[name]
		if l.GetApiListener() != nil || l.GetAddress() == nil {
			continue // not a socket listener (e.g. for proxyless gRPC)
		}
		svc, cluster, ok, err := listenerService(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %q: %w", name, err))
			continue
		}
		if !ok {
			continue
		}
		cla, ok := st.Assignments[cluster]
		if !ok {
			continue
		}
		svc.Backends = backends(cla, svc.VIP.Is4(), zone)
		out = append(out, svc)
	}
	return out, errors.Join(errs...)
}

// listenerService reads the VIP, port, protocol and target cluster of a
// listener. ok is false for listeners that route nowhere sockmesh can
// follow (no TCP or UDP proxy).
func listenerService(l *listenerv3.Listener) (svc dataplane.Service, cluster string, ok bool, err error) {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return svc, "", false, errors.New("address is not a socket address")
	}
	vip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return svc, "", false, fmt.Errorf("address %q: %w", sa.GetAddress(), err)
	}
	port := sa.GetPortValue()
	if port == 0 || port > 65535 {
		return svc, "", false, fmt.Errorf("port %d out of range", port)
	}
	svc = dataplane.Service{VIP: vip.Unmap(), Port: uint16(port), Name: l.GetName()}
	switch sa.GetProtocol() {
	case corev3.SocketAddress_TCP:
		svc.Proto = sockaddr.ProtoTCP
	case corev3.SocketAddress_UDP:
		svc.Proto = sockaddr.ProtoUDP
	default:
		return svc, "", false, fmt.Errorf("protocol %s not supported", sa.GetProtocol())
	}
	cluster, err = xds.ListenerCluster(l)
	if err != nil || cluster == "" {
		return svc, "", false, err
	}
	return svc, cluster, true, nil
}

// backends picks the endpoints new connections may use, with Envoy's
// semantics: the lowest priority that has healthy endpoints; HEALTHY and
// UNKNOWN count as healthy; if none is, DRAINING ones (serving while
// terminating, as Kubernetes falls back to) are used. Only endpoints of the
// VIP's address family qualify.
//
// Kubernetes topology hints are honoured as kube-proxy does: when the node
// knows its zone and every chosen endpoint carries hints, only the
// endpoints hinted for this zone are used (if there are any).
func backends(cla *endpointv3.ClusterLoadAssignment, ipv4 bool, zone string) []dataplane.Backend {
	type cand struct {
		prio     uint32
		draining bool
		hints    []string
		b        dataplane.Backend
	}
	var cands []cand
	for _, loc := range cla.GetEndpoints() {
		for _, lbe := range loc.GetLbEndpoints() {
			sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
			addr, err := netip.ParseAddr(sa.GetAddress())
			if err != nil || addr.Unmap().Is4() != ipv4 || sa.GetPortValue() == 0 || sa.GetPortValue() > 65535 {
				continue
			}
			c := cand{prio: loc.GetPriority(), b: dataplane.Backend{Addr: addr.Unmap(), Port: uint16(sa.GetPortValue()), Weight: 1}}
			for _, h := range lbe.GetMetadata().GetFilterMetadata()["sockmesh"].GetFields()["zoneHints"].GetListValue().GetValues() {
				c.hints = append(c.hints, h.GetStringValue())
			}
			if w := lbe.GetLoadBalancingWeight(); w != nil {
				c.b.Weight = max(w.GetValue(), 1)
			}
			switch lbe.GetHealthStatus() {
			case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
			case corev3.HealthStatus_DRAINING:
				c.draining = true
			default:
				continue
			}
			cands = append(cands, c)
		}
	}
	for _, draining := range []bool{false, true} {
		best, found := uint32(0), false
		for _, c := range cands {
			if c.draining == draining && (!found || c.prio < best) {
				best, found = c.prio, true
			}
		}
		if !found {
			continue
		}
		var chosen []cand
		for _, c := range cands {
			if c.draining == draining && c.prio == best {
				chosen = append(chosen, c)
			}
		}
		return hinted(chosen, zone, func(c cand) []string { return c.hints }, func(c cand) dataplane.Backend { return c.b })
	}
	return nil
}

// hinted applies topology hints to the chosen endpoints (see backends).
func hinted[C any](chosen []C, zone string, hints func(C) []string, backend func(C) dataplane.Backend) []dataplane.Backend {
	all := make([]dataplane.Backend, 0, len(chosen))
	var local []dataplane.Backend
	useHints := zone != ""
	for _, c := range chosen {
		all = append(all, backend(c))
		h := hints(c)
		if len(h) == 0 {
			useHints = false
		}
		if slices.Contains(h, zone) {
			local = append(local, backend(c))
		}
	}
	if useHints && len(local) > 0 {
		return local
	}
	return all
}
