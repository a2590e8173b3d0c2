package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sockmesh/sockmesh/bpf/l7"
	"github.com/sockmesh/sockmesh/node/telemetry/gobin"
)

// WatchConfig says which processes to instrument.
type WatchConfig struct {
	// Cgroup is the cgroup v2 directory (absolute) whose processes, and
	// their descendants', are instrumented.
	Cgroup string
	// CgroupMount is where cgroup v2 is mounted, to read /proc/PID/cgroup.
	CgroupMount string
	// Interval is how often processes are rescanned and events read.
	Interval time.Duration
	// Cluster is reported as destination_cluster.
	Cluster string
	// Identify says who a process is from its pod's addresses (the agent
	// answers from the endpoints it got over xDS): a server, or a client
	// seen by its server; nil leaves it unknown.
	Identify func(addrs []netip.Addr) (Destination, bool)
	// Service says which service a client in namespace ns asked for by
	// host (a VIP or a name, from a URL or a gRPC target); nil or false
	// leaves it unknown.
	Service func(host, ns string) (Destination, bool)
	// ServersOnly leaves clients unprobed (no reporter "source" series).
	ServersOnly bool
	// AccessLog, if set, receives one JSON line per request. The probes
	// then also send an event per request, which costs the servers more.
	AccessLog io.Writer
}

// Watcher finds Go HTTP servers among the processes of a cgroup, probes
// them, and turns their requests into metrics. Processes that exit are
// detached.
type Watcher struct {
	cfg WatchConfig
	log *slog.Logger

	// tr holds the maps and programs every probed process shares (made
	// in Run).
	tr *Tracer

	mu      sync.Mutex
	traced  map[int]*Process
	addrs   map[int][]netip.Addr
	skipped map[int]bool
	// retired keeps the totals of processes that exited, so counters
	// never go backwards.
	retired map[Series]Totals
	// closing counts processes being detached.
	closing sync.WaitGroup
	// attachErrors counts for /metrics the processes that could not be
	// probed.
	attachErrors uint64

	logMu sync.Mutex // the access log's encoder
	enc   *json.Encoder
}

// NewWatcher returns a watcher; Metrics exposes what it observes.
func NewWatcher(cfg WatchConfig, log *slog.Logger) *Watcher {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	return &Watcher{cfg: cfg, log: log, traced: map[int]*Process{}, addrs: map[int][]netip.Addr{}, skipped: map[int]bool{}, retired: map[Series]Totals{}}
}

// Metrics returns the Prometheus collector of the watcher's requests.
func (w *Watcher) Metrics() *Metrics { return NewMetrics(w.totals, w.health) }

// health reports the watcher's own state.
func (w *Watcher) health() Health {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := Health{Processes: len(w.traced), AttachErrors: w.attachErrors}
	for _, p := range w.traced {
		h.Probes += p.Probes
	}
	if w.tr != nil {
		h.Dropped, _ = w.tr.Drops()
	}
	return h
}

// totals sums live and retired aggregates by series.
func (w *Watcher) totals() map[Series]Totals {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[Series]Totals{}
	for s, t := range w.retired {
		out[s] = t
	}
	if w.tr == nil {
		return out
	}
	stats, err := w.tr.Stats()
	if err != nil {
		w.log.Warn("telemetry: read stats", "err", err)
	}
	for pid, st := range stats {
		w.foldInto(out, int(pid), st)
	}
	return out
}

// self names the process pid as a destination, as far as it is known.
func (w *Watcher) self(pid int) Destination {
	return w.identify(w.addrs[pid])
}

func (w *Watcher) identify(addrs []netip.Addr) Destination {
	d := Destination{Peer: Peer{Cluster: w.cfg.Cluster}}
	if w.cfg.Identify != nil && len(addrs) > 0 {
		if found, ok := w.cfg.Identify(addrs); ok {
			d = found
			if d.Cluster == "" {
				d.Cluster = w.cfg.Cluster
			}
		}
	}
	return d
}

// peers names both sides of requests of one key made or served by a
// process that is self.
func (w *Watcher) peers(self Destination, k StatsKey) (src Peer, dst Destination) {
	if k.Kind.Server() {
		// The peer is the client's address.
		var addrs []netip.Addr
		if a, err := netip.ParseAddr(k.Peer); err == nil {
			addrs = append(addrs, a.Unmap())
		}
		if len(addrs) > 0 {
			src = w.identify(addrs).Peer
		}
		return src, self
	}
	// The peer is what the client asked for.
	dst = Destination{Peer: Peer{Cluster: w.cfg.Cluster}}
	if w.cfg.Service != nil {
		if d, ok := w.cfg.Service(HostOf(k.Peer), self.Namespace); ok {
			dst = d
			if dst.Cluster == "" {
				dst.Cluster = w.cfg.Cluster
			}
		}
	}
	if dst.Service == "" {
		// Istio names an unknown destination service by the host asked.
		dst.Service = HostOf(k.Peer)
	}
	return self.Peer, dst
}

// HostOf is the host in what a client asked for: a URL's host
// ("name:8080", "[fd00::1]:80") or a gRPC target ("dns:///name:50051",
// "passthrough:///10.0.0.1:80"), without scheme, port or brackets.
func HostOf(target string) string {
	if i := strings.Index(target, ":///"); i >= 0 {
		target = target[i+4:]
	} else if i := strings.Index(target, "://"); i >= 0 {
		target = target[i+3:]
		if j := strings.Index(target, "/"); j >= 0 {
			target = target[j+1:] // dns://resolver/name:port
		}
	}
	if h, _, err := net.SplitHostPort(target); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(target, "["), "]")
}

// foldInto adds process pid's aggregates to out, by series. w.mu is held.
func (w *Watcher) foldInto(out map[Series]Totals, pid int, stats map[StatsKey]Totals) {
	self := w.self(pid)
	for k, t := range stats {
		s := Series{Kind: k.Kind, Status: k.Status, GRPCStatus: k.GRPCStatus}
		s.Source, s.Destination = w.peers(self, k)
		cur := out[s]
		cur.add(t)
		out[s] = cur
	}
}

// Traced returns how many processes carry probes now.
func (w *Watcher) Traced() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.traced)
}

// Run scans and reads until ctx ends, then detaches everything.
func (w *Watcher) Run(ctx context.Context) error {
	tr, err := NewTracer(w.cfg.AccessLog != nil)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	tr.ServersOnly = w.cfg.ServersOnly
	w.mu.Lock()
	w.tr = tr
	w.mu.Unlock()
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	defer func() {
		w.mu.Lock()
		for pid, p := range w.traced {
			p.Close()
			delete(w.traced, pid)
		}
		w.mu.Unlock()
		w.closing.Wait()
		tr.Close()
	}()
	if pw, err := l7.WatchProcs(w.cfg.Cgroup); err != nil {
		w.log.Warn("telemetry: no process events, scanning only", "err", err)
	} else {
		var followed sync.WaitGroup
		followed.Add(1)
		go func() { defer followed.Done(); w.follow(pw) }()
		defer followed.Wait()
		defer pw.Close()
	}
	if w.cfg.AccessLog != nil {
		var drained sync.WaitGroup
		drained.Add(1)
		go func() { defer drained.Done(); w.drainAccessLog(ctx, 100*time.Millisecond) }()
		defer drained.Wait()
	}
	for {
		w.scan()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// scan attaches to new Go HTTP servers in the cgroup and detaches from
// processes that are gone.
func (w *Watcher) scan() {
	w.mu.Lock()
	defer w.mu.Unlock()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		w.log.Warn("telemetry: read /proc", "err", err)
		return
	}
	alive := map[int]bool{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if !w.inCgroup(pid) {
			continue
		}
		alive[pid] = true
		w.consider(pid)
	}
	for pid := range w.traced {
		if !alive[pid] {
			w.retire(pid, "exited")
		}
	}
	for pid := range w.skipped {
		if !alive[pid] {
			delete(w.skipped, pid)
		}
	}
}

// consider probes process pid if it is a Go program with HTTP or gRPC
// servers or clients, not probed yet.
// w.mu is held.
func (w *Watcher) consider(pid int) {
	if w.traced[pid] != nil || w.skipped[pid] {
		return
	}
	exe := "/proc/" + strconv.Itoa(pid) + "/exe"
	p, err := w.tr.Attach(exe, pid)
	switch {
	case err == nil:
		w.traced[pid] = p
		w.addrs[pid] = localAddrs(pid)
		w.log.Info("telemetry: probing", "pid", pid, "libraries", strings.Join(p.Libraries, ", "), "probes", p.Probes)
	case errors.Is(err, gobin.ErrNotGo), errors.Is(err, gobin.ErrNoFunc):
		w.skipped[pid] = true // nothing to probe: look no further
	default:
		w.skipped[pid] = true
		w.attachErrors++
		w.log.Warn("telemetry: cannot probe", "pid", pid, "err", err)
	}
}

// retire removes the probes of process pid, keeping its totals. w.mu is
// held.
func (w *Watcher) retire(pid int, why string) {
	p := w.traced[pid]
	if p == nil {
		return
	}
	stats, err := w.tr.Forget(uint32(pid))
	if err != nil {
		w.log.Warn("telemetry: read stats", "pid", pid, "err", err)
	}
	w.foldInto(w.retired, pid, stats)
	if w.cfg.AccessLog != nil {
		// Its last requests are in the ring buffer still: a client
		// often exits right after them.
		if reqs, err := w.tr.Read(0); err == nil {
			w.logRequests(reqs)
		}
	}
	// Detaching waits for the kernel (a grace period per link): not while
	// holding w.mu, which the next process's probing needs.
	w.closing.Add(1)
	go func() { defer w.closing.Done(); p.Close() }()
	delete(w.traced, pid)
	delete(w.addrs, pid)
	w.log.Info("telemetry: process "+why+", probes removed", "pid", pid)
}

// follow reacts to process events as they come: an exec is considered at
// once (probed before it serves), an exit retired at once. A process that
// exec'd another program is looked at anew.
func (w *Watcher) follow(pw *l7.ProcWatch) {
	for {
		e, err := pw.Read()
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			w.log.Warn("telemetry: process events", "err", err)
			continue
		}
		w.log.Debug("telemetry: process event", "pid", e.Pid, "exited", e.Exited)
		pid := int(e.Pid)
		w.mu.Lock()
		switch {
		case e.Exited == 1:
			w.retire(pid, "exited")
			delete(w.skipped, pid)
		case w.traced[pid] != nil && w.traced[pid].runs("/proc/"+strconv.Itoa(pid)+"/exe"):
			// Probed already, on what it runs now (the event came late).
		default:
			w.retire(pid, "ran another program") // the old program's probes, if any
			delete(w.skipped, pid)
			w.consider(pid)
		}
		w.mu.Unlock()
	}
}

func (w *Watcher) inCgroup(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			p := filepath.Join(w.cfg.CgroupMount, rest)
			return p == w.cfg.Cgroup || strings.HasPrefix(p, w.cfg.Cgroup+"/")
		}
	}
	return false
}
