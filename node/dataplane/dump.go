package dataplane

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
)

// Dump is the decoded content of the service maps, as the kernel has it.
type Dump struct {
	Services   []DumpService  `json:"services"`
	Stats      sockaddr.Stats `json:"stats"`
	SyncErrors uint64         `json:"syncErrors"`
}

// DumpService is one service entry and the backends of its slot table.
type DumpService struct {
	Service  string        `json:"service"` // VIP:port/proto
	Source   string        `json:"source,omitempty"`
	Revision uint32        `json:"revision"`
	Slots    int           `json:"slots"`
	Backends []DumpBackend `json:"backends"`
}

// DumpBackend is one backend and how many slots it holds.
type DumpBackend struct {
	Address string `json:"address"`
	Slots   int    `json:"slots"`
}

// Counters are the cheap numbers of the dataplane, for metrics.
type Counters struct {
	Services   int
	SyncErrors uint64
	Stats      sockaddr.Stats
}

// Counters reads the programs' counters and says how many service entries
// the agent wrote; unlike Dump it reads no service or slot entry, so a
// Prometheus scrape costs the same with 10 or 10,000 services.
func (d *Dataplane) Counters() (Counters, error) {
	d.mu.Lock()
	c := Counters{Services: len(d.current), SyncErrors: d.syncErrors}
	d.mu.Unlock()
	var err error
	c.Stats, err = sockaddr.ReadStats(d.objs.SmStats)
	return c, err
}

// Dump reads the maps back from the kernel (not from the agent's memory),
// so what it shows is what connects see.
func (d *Dataplane) Dump() (*Dump, error) {
	d.mu.Lock()
	names := map[sockaddr.ServiceKey]string{}
	for k, e := range d.current {
		names[k] = e.name
	}
	syncErrors := d.syncErrors
	// Under the lock: after a swap, Sync writes the table swapped out.
	services, err := d.table.Installed()
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}

	out := &Dump{SyncErrors: syncErrors}
	for key, val := range services {
		proto := "tcp"
		if key.Proto == sockaddr.ProtoUDP {
			proto = "udp"
		}
		ds := DumpService{
			Service:  fmt.Sprintf("%s/%s", netip.AddrPortFrom(sockaddr.AddrFrom(key.Vip.W), sockaddr.PortFrom(key.Port)), proto),
			Source:   names[key],
			Revision: val.Rev,
			Slots:    int(val.Slots),
		}
		counts := map[string]int{}
		for i := range val.Slots {
			var b sockaddr.Backend
			if val.Inline() {
				b = val.Table[i]
			} else if err := d.objs.SmSlots.Lookup(sockaddr.SlotKey{Rev: val.Rev, Slot: i}, &b); err != nil {
				return nil, fmt.Errorf("read slot %d of %s: %w", i, ds.Service, err)
			}
			counts[netip.AddrPortFrom(sockaddr.AddrFrom(b.Addr.W), sockaddr.PortFrom(b.Port)).String()]++
		}
		for addr, n := range counts {
			ds.Backends = append(ds.Backends, DumpBackend{Address: addr, Slots: n})
		}
		slices.SortFunc(ds.Backends, func(a, b DumpBackend) int { return cmp.Compare(a.Address, b.Address) })
		out.Services = append(out.Services, ds)
	}
	slices.SortFunc(out.Services, func(a, b DumpService) int { return cmp.Compare(a.Service, b.Service) })
	stats, err := sockaddr.ReadStats(d.objs.SmStats)
	if err != nil {
		return nil, err
	}
	out.Stats = stats
	return out, nil
}
