package dns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/miekg/dns"

	"github.com/sockmesh/sockmesh/node/xdsclient"
)

// record is what the server knows about one name.
type record struct {
	a, aaaa []netip.Addr
	cname   string
	srv     []*dns.SRV
}

// Table maps the mesh's DNS names (lower case, fully qualified) to records.
// It is immutable once built.
type Table struct {
	domain string // "cluster.local."
	names  map[string]*record
	// exists holds every name in the domain that has records or names
	// below it: such a name without records of the asked type is NODATA,
	// anything else in the domain NXDOMAIN.
	exists map[string]bool
}

// NewTable returns an empty table for domain.
func NewTable(domain string) *Table {
	return &Table{domain: dns.Fqdn(strings.ToLower(domain)), names: map[string]*record{}, exists: map[string]bool{}}
}

func (t *Table) rec(name string) *record {
	name = dns.Fqdn(strings.ToLower(name))
	r := t.names[name]
	if r == nil {
		r = &record{}
		t.names[name] = r
		for n := name; dns.IsSubDomain(t.domain, n); {
			t.exists[n] = true
			i, end := dns.NextLabel(n, 0)
			if end {
				break
			}
			n = n[i:]
		}
	}
	return r
}

func addAddr(r *record, a netip.Addr) {
	a = a.Unmap()
	list := &r.aaaa
	if a.Is4() {
		list = &r.a
	}
	if !slices.Contains(*list, a) {
		*list = append(*list, a)
	}
}

// BuildTable reads the DNS view of the mesh from an accepted xDS state:
// each cluster's filter_metadata["sockmesh"] names its service, VIPs,
// headless or ExternalName nature and port; a headless service's ready
// endpoints come from its ClusterLoadAssignment.
func BuildTable(st *xdsclient.State, domain string) *Table {
	t := NewTable(domain)
	for name, c := range st.Clusters {
		md := c.GetMetadata().GetFilterMetadata()["sockmesh"].GetFields()
		host := md["hostname"].GetStringValue()
		if host == "" || !dns.IsSubDomain(t.domain, dns.Fqdn(strings.ToLower(host))) {
			continue
		}
		r := t.rec(host)
		if ext := md["externalName"].GetStringValue(); ext != "" {
			r.cname = dns.Fqdn(ext)
			continue
		}
		headless := md["headless"].GetBoolValue()
		var endpoints []netip.Addr
		if headless {
			for _, loc := range st.Assignments[name].GetEndpoints() {
				for _, e := range loc.GetLbEndpoints() {
					if h := e.GetHealthStatus(); h != corev3.HealthStatus_HEALTHY && h != corev3.HealthStatus_UNKNOWN {
						continue
					}
					if a, err := netip.ParseAddr(e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()); err == nil {
						endpoints = append(endpoints, a)
						addAddr(r, a)
						// Kubernetes names each endpoint of a headless
						// service by its dashed address.
						addAddr(t.rec(dashed(a)+"."+dns.Fqdn(host)), a)
					}
				}
			}
		} else {
			for _, v := range md["vips"].GetListValue().GetValues() {
				if a, err := netip.ParseAddr(v.GetStringValue()); err == nil {
					addAddr(r, a)
				}
			}
		}
		port, portName := uint16(md["portNumber"].GetNumberValue()), md["port"].GetStringValue()
		if port == 0 || portName == "" {
			continue
		}
		srvName := fmt.Sprintf("_%s._%s.%s", portName, strings.ToLower(md["protocol"].GetStringValue()), dns.Fqdn(host))
		sr := t.rec(srvName)
		targets := []string{dns.Fqdn(strings.ToLower(host))}
		if headless {
			targets = targets[:0]
			for _, a := range endpoints {
				targets = append(targets, dashed(a)+"."+dns.Fqdn(strings.ToLower(host)))
			}
		}
		for _, target := range targets {
			sr.srv = append(sr.srv, &dns.SRV{
				Hdr:      dns.RR_Header{Name: dns.Fqdn(strings.ToLower(srvName)), Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: localTTL},
				Priority: 0, Weight: 100 / uint16(len(targets)), Port: port, Target: target,
			})
		}
	}
	for _, r := range t.names {
		slices.SortFunc(r.a, netip.Addr.Compare)
		slices.SortFunc(r.aaaa, netip.Addr.Compare)
		slices.SortFunc(r.srv, func(a, b *dns.SRV) int { return strings.Compare(a.Target, b.Target) })
	}
	return t
}

// dashed writes an address the way Kubernetes names headless endpoints:
// 10-0-0-1, fd00--1.
func dashed(a netip.Addr) string {
	return strings.NewReplacer(".", "-", ":", "-").Replace(a.Unmap().String())
}
