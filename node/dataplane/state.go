package dataplane

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
)

// Service is one VIP, port and protocol with the backends new connections
// may go to (already filtered for health and address family).
type Service struct {
	VIP      netip.Addr
	Port     uint16
	Proto    uint8
	Backends []Backend
	// Name says where the service came from (for dumps and errors).
	Name string
	// RequireAgent translates the service only while the agent's
	// heartbeat is fresh (Heartbeat): if the agent dies, traffic goes to
	// the original destination as if there were no mesh.
	RequireAgent bool
}

func (s Service) flags() sockaddr.ServiceFlags {
	if s.RequireAgent {
		return sockaddr.FlagAgentLive
	}
	return 0
}

// Backend is one destination with its relative weight.
type Backend struct {
	Addr   netip.Addr
	Port   uint16
	Weight uint32
}

func (s Service) key() sockaddr.ServiceKey { return sockaddr.NewServiceKey(s.VIP, s.Port, s.Proto) }

func (s Service) String() string {
	proto := "tcp"
	if s.Proto == sockaddr.ProtoUDP {
		proto = "udp"
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(s.VIP, s.Port), proto)
}

// Slots spreads backends over slots in proportion to their weights: a
// uniformly random slot is then a weighted random backend. Weights are
// divided by their greatest common divisor and, if the table would exceed
// sockaddr.MaxSlots, scaled down (every backend keeps at least one slot).
func Slots(backends []Backend) ([]sockaddr.Backend, error) {
	if len(backends) > sockaddr.MaxSlots {
		return nil, fmt.Errorf("%d backends, at most %d are supported per service", len(backends), sockaddr.MaxSlots)
	}
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b Backend) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	g, total := uint64(0), uint64(0)
	for _, b := range bs {
		g = gcd(g, uint64(max(b.Weight, 1)))
	}
	for _, b := range bs {
		total += uint64(max(b.Weight, 1)) / g
	}
	var out []sockaddr.Backend
	for _, b := range bs {
		n := uint64(max(b.Weight, 1)) / g
		if total > sockaddr.MaxSlots {
			n = max(1, (n*sockaddr.MaxSlots+total/2)/total)
		}
		v := sockaddr.NewBackend(b.Addr, b.Port)
		for range n {
			out = append(out, v)
		}
	}
	if len(out) > sockaddr.MaxSlots {
		// Rounding up the smallest weights can overshoot; trim the
		// largest runs, which lose the least relative weight.
		out = trimSlots(out, sockaddr.MaxSlots)
	}
	return out, nil
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// trimSlots removes slots from the backends holding the most until n remain.
func trimSlots(slots []sockaddr.Backend, n int) []sockaddr.Backend {
	type run struct {
		b     sockaddr.Backend
		count int
	}
	var runs []run
	for _, s := range slots {
		if len(runs) > 0 && runs[len(runs)-1].b == s {
			runs[len(runs)-1].count++
		} else {
			runs = append(runs, run{s, 1})
		}
	}
	for excess := len(slots) - n; excess > 0; excess-- {
		i := 0
		for j := range runs {
			if runs[j].count > runs[i].count {
				i = j
			}
		}
		runs[i].count--
	}
	out := make([]sockaddr.Backend, 0, n)
	for _, r := range runs {
		for range r.count {
			out = append(out, r.b)
		}
	}
	return out
}
