package telemetry

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/sockmesh/sockmesh/bpf/l7"
	"github.com/sockmesh/sockmesh/node/telemetry/gobin"
)

// Tracer owns what every probed process shares: the maps the programs
// write to (their keys carry the pid), and the programs loaded for each
// executable. Kernel memory stays the same however many processes are
// probed, and a process of an executable already seen is probed without
// loading (or verifying) anything: only its links are made.
type Tracer struct {
	// ServersOnly attaches only the server probes (set before Attach).
	ServersOnly bool

	events bool
	maps   *l7.Maps
	reader *ringbuf.Reader
	readMu sync.Mutex

	mu    sync.Mutex
	progs map[fileID]*progSet
}

// progSet is the programs loaded for one executable, and how many
// processes use them.
type progSet struct {
	progs *l7.Programs
	users int
}

// NewTracer makes the shared maps. events turns on one ring-buffer event
// per request (Read), for access logs and tests; requests are always
// aggregated in the kernel (Stats).
func NewTracer(events bool) (*Tracer, error) {
	maps, err := l7.NewMaps()
	if err != nil {
		return nil, err
	}
	t := &Tracer{events: events, maps: maps, progs: map[fileID]*progSet{}}
	if events {
		if t.reader, err = ringbuf.NewReader(maps.SmHttpEvents); err != nil {
			maps.Close()
			return nil, err
		}
	}
	return t, nil
}

// Process is one probed process.
type Process struct {
	t     *Tracer
	id    fileID
	links []link.Link
	// Kinds are the kinds of requests seen in it (whose probes all
	// attached), and Libraries the libraries they are seen in.
	Kinds     []Kind
	Libraries []string
	// Probes counts the probe points attached.
	Probes int
}

// Attach probes process pid, which runs the executable at path, for each
// kind of request whose functions the binary links. It fails with
// gobin.ErrNotGo or gobin.ErrNoFunc when there is nothing to probe.
func (t *Tracer) Attach(path string, pid int) (_ *Process, err error) {
	id, pl, err := planFor(path)
	if err != nil {
		return nil, err
	}
	if len(pl.groups) == 0 {
		return nil, fmt.Errorf("%s: %w: %s", path, gobin.ErrNoFunc, strings.Join(pl.missing, "; "))
	}
	multi := multiUprobes()
	ps, err := t.acquire(id, pl, multi)
	if err != nil {
		return nil, err
	}
	p := &Process{t: t, id: id}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, err
	}
	progs := ps.progs.ByName()
	// A probe two groups share (gRPC's stream read, for a program that
	// serves and calls) is attached once: twice would count twice.
	type point struct {
		prog string
		addr uint64
	}
	attached := map[point]bool{}
	for _, pg := range pl.groups {
		g, addrs := groups[pg.group], pg.addrs
		if t.ServersOnly && !g.kind.Server() {
			continue
		}
		// Attach the end probes first: a start without its end would
		// hold a slot until it goes stale.
		for i := len(g.probes) - 1; i >= 0; i-- {
			pr := g.probes[i]
			var at []uint64
			for _, a := range addrs[i] {
				if k := (point{pr.prog, a}); !attached[k] {
					attached[k] = true
					at = append(at, a)
				}
			}
			if len(at) == 0 {
				continue // optional and not linked, or already attached
			}
			p.Probes += len(at)
			if multi {
				l, err := ex.UprobeMulti(nil, progs[pr.prog], &link.UprobeMultiOptions{Addresses: at, PID: uint32(pid)})
				if err != nil {
					return nil, fmt.Errorf("uprobe %s at %#x: %w", pr.fn, at, err)
				}
				p.links = append(p.links, l)
				continue
			}
			for _, a := range at {
				l, err := ex.Uprobe(pr.fn, progs[pr.prog], &link.UprobeOptions{Address: a, PID: pid})
				if err != nil {
					return nil, fmt.Errorf("uprobe %s at %#x: %w", pr.fn, a, err)
				}
				p.links = append(p.links, l)
			}
		}
		p.Libraries = append(p.Libraries, g.name)
		if !slices.Contains(p.Kinds, g.kind) {
			p.Kinds = append(p.Kinds, g.kind)
		}
	}
	if len(p.Kinds) == 0 {
		return nil, fmt.Errorf("%s: %w: clients only, and only servers are probed", path, gobin.ErrNoFunc)
	}
	return p, nil
}

// acquire returns the programs of executable id, loading them on first
// use.
func (t *Tracer) acquire(id fileID, pl *plan, multi bool) (*progSet, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.progs[id]
	if ps == nil {
		progs, err := l7.Load(l7.Offsets(pl.off), t.events, multi, t.maps)
		if err != nil {
			return nil, err
		}
		ps = &progSet{progs: progs}
		t.progs[id] = ps
	}
	ps.users++
	return ps, nil
}

// release drops a use of executable id's programs, unloading them with
// the last.
func (t *Tracer) release(id fileID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.progs[id]
	if ps == nil {
		return
	}
	if ps.users--; ps.users <= 0 {
		ps.progs.Close()
		delete(t.progs, id)
	}
}

// runs reports whether the executable at path is the one p was probed in.
func (p *Process) runs(path string) bool {
	id, err := fileOf(path)
	return err == nil && id == p.id
}

// Close detaches the process's probes. Its aggregates stay in the maps
// until Forget.
func (p *Process) Close() error {
	closeLinks(p.links)
	p.links = nil
	p.t.release(p.id)
	return nil
}

// Stats reads the in-kernel aggregates, by process, summed over CPUs.
func (t *Tracer) Stats() (map[uint32]map[StatsKey]Totals, error) {
	out := map[uint32]map[StatsKey]Totals{}
	var k l7.HTTPStatsKey
	var per []l7.HTTPStats
	it := t.maps.SmHttpStats.Iterate()
	for it.Next(&k, &per) {
		if out[k.Pid] == nil {
			out[k.Pid] = map[StatsKey]Totals{}
		}
		key := statsKey(k)
		tot := out[k.Pid][key]
		tot.add(sumCPUs(per))
		out[k.Pid][key] = tot
	}
	return out, it.Err()
}

// Forget reads process pid's aggregates and removes them from the maps
// (the process is gone; its pid may come back as another).
func (t *Tracer) Forget(pid uint32) (map[StatsKey]Totals, error) {
	out := map[StatsKey]Totals{}
	var keys []l7.HTTPStatsKey
	var k l7.HTTPStatsKey
	var per []l7.HTTPStats
	it := t.maps.SmHttpStats.Iterate()
	for it.Next(&k, &per) {
		if k.Pid != pid {
			continue
		}
		key := statsKey(k)
		tot := out[key]
		tot.add(sumCPUs(per))
		out[key] = tot
		keys = append(keys, k)
	}
	for _, k := range keys {
		t.maps.SmHttpStats.Delete(&k)
	}
	return out, it.Err()
}

func statsKey(k l7.HTTPStatsKey) StatsKey {
	return StatsKey{Kind: Kind(k.Kind), Status: int(k.Status), GRPCStatus: grpcStatus(k.GrpcStatus), Peer: peerString(k.Peer[:])}
}

func sumCPUs(per []l7.HTTPStats) Totals {
	var tot Totals
	for _, s := range per {
		tot.add(Totals{Count: s.Count, DurationSumNs: s.DurationSumNs, DurationBuckets: s.DurationBuckets, BytesSum: s.BytesSum,
			BytesBuckets: s.BytesBuckets, ReqBytesSum: s.ReqBytesSum, ReqBytesBuckets: s.ReqBytesBuckets})
	}
	return tot
}

// Read returns the requests that finished since the last call, of every
// process, waiting up to wait for the first one. The programs never wake
// the reader (batched wake-ups are most of the probes' cost), so it polls.
func (t *Tracer) Read(wait time.Duration) ([]Request, error) {
	if t.reader == nil {
		return nil, errors.New("telemetry: tracer made without events")
	}
	t.readMu.Lock()
	defer t.readMu.Unlock()
	var out []Request
	deadline := time.Now().Add(wait)
	for {
		// Poll in 10 ms steps (no wake-ups come); with no wait, do not
		// wait at all: return what is there.
		next := time.Now().Add(10 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		t.reader.SetDeadline(next)
		rec, err := t.reader.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if len(out) > 0 || time.Now().After(deadline) {
				return out, nil
			}
			continue
		}
		if err != nil {
			return out, err
		}
		r, err := decodeEvent(rec.RawSample)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
}

// Open counts the requests started and not finished: their start slots
// (a slow scan of every slot; for tests).
func (t *Tracer) Open() (int, error) {
	n := 0
	var k uint32
	var v l7.Start
	it := t.maps.SmHttpStart.Iterate()
	for it.Next(&k, &v) {
		if v.Key != 0 {
			n++
		}
	}
	return n, it.Err()
}

// Drops returns how many requests the programs could not count or report.
func (t *Tracer) Drops() (uint64, error) {
	var per []uint64
	if err := t.maps.SmHttpDrops.Lookup(uint32(0), &per); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// RunTime is the time the loaded programs ran and how many times, from
// the kernel's BPF statistics (zero unless they are enabled:
// ebpf.EnableStats). The uprobes' own cost (the trap, the emulated
// instruction) is not in it.
func (t *Tracer) RunTime() (time.Duration, uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var d time.Duration
	var n uint64
	for _, ps := range t.progs {
		for _, prog := range ps.progs.ByName() {
			st, err := prog.Stats()
			if err != nil {
				return 0, 0, err
			}
			d += st.Runtime
			n += st.RunCount
		}
	}
	return d, n, nil
}

// Close frees the maps and any programs still loaded (their processes'
// links must be closed first).
func (t *Tracer) Close() error {
	if t.reader != nil {
		t.reader.Close()
	}
	t.mu.Lock()
	for id, ps := range t.progs {
		ps.progs.Close()
		delete(t.progs, id)
	}
	t.mu.Unlock()
	return t.maps.Close()
}

// HTTPTracer is a Tracer with one process: what tests and benchmarks use.
type HTTPTracer struct {
	*Tracer
	*Process
	pid uint32
}

// TraceHTTP probes process pid, which runs the executable at path, with
// its own Tracer.
func TraceHTTP(path string, pid int, events bool) (*HTTPTracer, error) {
	t, err := NewTracer(events)
	if err != nil {
		return nil, err
	}
	p, err := t.Attach(path, pid)
	if err != nil {
		t.Close()
		return nil, err
	}
	return &HTTPTracer{Tracer: t, Process: p, pid: uint32(pid)}, nil
}

// Stats reads the process's aggregates.
func (h *HTTPTracer) Stats() (map[StatsKey]Totals, error) {
	all, err := h.Tracer.Stats()
	if all[h.pid] == nil {
		return map[StatsKey]Totals{}, err
	}
	return all[h.pid], err
}

// Close detaches the probes and frees everything.
func (h *HTTPTracer) Close() error {
	h.Process.Close()
	return h.Tracer.Close()
}
