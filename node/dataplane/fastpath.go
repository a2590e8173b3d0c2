package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockmesh/sockmesh/bpf/sockmap"
)

// FastPath is the loaded, attached same-node fast path of one agent
// instance: sockets of enrolled cgroups that connect to each other on this
// node exchange data socket to socket (see bpf/sockmap).
type FastPath struct {
	cfg  Config
	log  *slog.Logger
	objs *sockmap.Objects

	mu           sync.Mutex
	links        []link.Link
	enrolled     map[uint64]string // cgroup id -> path
	enrollErrors uint64
	exes         map[sockmap.ExeKey]sockmap.ExeVerdict // written to sm_fp_exes
	exeErrors    uint64
	pids         map[int]sockmap.ExeKey // processes seen by ClassifyProcs
}

// OpenFastPath loads the fast path programs, adopts what a previous instance
// pinned in cfg.PinDir, and attaches them to cfg.Cgroup. Nothing is enrolled
// yet: call Enroll or EnrollTree.
func OpenFastPath(cfg Config, log *slog.Logger) (_ *FastPath, err error) {
	if err := cfg.prepare(); err != nil {
		return nil, err
	}
	objs, err := sockmap.Load(cfg.mapDir())
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	f := &FastPath{cfg: cfg, log: log, objs: objs, enrolled: map[uint64]string{},
		exes: map[sockmap.ExeKey]sockmap.ExeVerdict{}, pids: map[int]sockmap.ExeKey{}}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	var cgID uint64
	it := objs.SmFpCgroups.Iterate()
	var v uint8
	for it.Next(&cgID, &v) {
		f.enrolled[cgID] = ""
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dataplane: read enrolled cgroups: %w", err)
	}
	// sk_msg first, so every socket sockops adds gets the redirect program;
	// then the splice watch, then sockops, which starts adding sockets.
	if err := sockmap.AttachMsg(objs); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	if err := f.attachSpliceWatch(); err != nil {
		return nil, err
	}
	links, err := cfg.attachCgroup([]cgroupAttachment{{sockmap.ProgSockops, ebpf.AttachCGroupSockOps, objs.SmFpSockops}}, log)
	f.links = append(f.links, links...)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// attachSpliceWatch attaches the splice tracepoint program and pins its
// link. A raw tracepoint link cannot be updated in place, so a link pinned
// by a previous run is replaced after the new one is attached: for a moment
// both run, which is harmless (they write the same maps the same way).
func (f *FastPath) attachSpliceWatch() error {
	pin := filepath.Join(f.cfg.linkDir(), sockmap.ProgSplice)
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: sockmap.SpliceTracepoint, Program: f.objs.SmFpSplice})
	if err != nil {
		return fmt.Errorf("dataplane: attach %s: %w", sockmap.ProgSplice, err)
	}
	f.links = append(f.links, l)
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("dataplane: replace pinned link %s: %w", pin, err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("dataplane: pin link %s: %w", pin, err)
	}
	return nil
}

// DisableFastPath undoes a fast path a previous instance left in
// cfg.PinDir, for an agent started without it: no new socket joins (the
// sockops link goes), while sockets already on it keep working and keep
// their splice watch until they close. Their maps and the splice watch
// stay pinned while any such socket is left; the next run, or Cleanup,
// removes them.
func DisableFastPath(cfg Config) error {
	links := cfg.linkDir()
	if err := detachPinned(filepath.Join(links, sockmap.ProgSockops)); err != nil {
		return fmt.Errorf("dataplane: detach fast path: %w", err)
	}
	socks, err := ebpf.LoadPinnedMap(filepath.Join(cfg.mapDir(), sockmap.MapHold), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	defer socks.Close()
	var k uint64
	if err := socks.NextKey(nil, &k); err == nil {
		return nil // sockets are still on the fast path
	}
	var errs []error
	names, err := sockmap.MapNames()
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	paths := []string{filepath.Join(links, sockmap.ProgSplice)}
	for _, m := range names {
		paths = append(paths, filepath.Join(cfg.mapDir(), m))
	}
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Enroll makes the set of enrolled cgroups equal to ids (cgroup id ->
// path, the path only for display). Sockets created in an enrolled cgroup
// after it is enrolled join the fast path; sockets already on it stay when
// their cgroup leaves.
func (f *FastPath) Enroll(ids map[uint64]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for id, path := range ids {
		if _, ok := f.enrolled[id]; ok {
			f.enrolled[id] = path
			continue
		}
		if err := f.objs.SmFpCgroups.Put(id, uint8(1)); err != nil {
			errs = append(errs, fmt.Errorf("enroll cgroup %s: %w", path, err))
			continue
		}
		f.enrolled[id] = path
	}
	for id, path := range f.enrolled {
		if _, ok := ids[id]; ok {
			continue
		}
		if err := f.objs.SmFpCgroups.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("unenroll cgroup %s: %w", path, err))
			continue
		}
		delete(f.enrolled, id)
	}
	f.enrollErrors += uint64(len(errs))
	return errors.Join(errs...)
}

// EnrollTree enrolls root and every cgroup below it, unenrolls cgroups
// that are gone, and classifies the executables of the processes in them
// (see ClassifyProcs).
func (f *FastPath) EnrollTree(root string) error {
	ids := map[uint64]string{}
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && path != root {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			ids[st.Ino] = path // a cgroup's id is its inode number
			dirs = append(dirs, path)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dataplane: walk cgroups under %s: %w", root, err)
	}
	return errors.Join(f.Enroll(ids), f.ClassifyProcs(dirs))
}

// ClassifyProcs makes sure the executable of every process in the cgroup
// directories dirs has a verdict in sm_fp_exes: safe if it cannot splice
// from a socket (SpliceRisk), unsafe otherwise. Until it has one, its
// sockets receive nothing redirected. A verdict already in the map is
// kept: the splice tracepoint's "unsafe" is the better knowledge.
//
// A process seen before costs one stat of /proc/PID/exe (which also notices
// an exec); only a new executable is read.
func (f *FastPath) ClassifyProcs(dirs []string) error {
	var errs []error
	seen := map[int]bool{}
	defer func() {
		f.mu.Lock()
		for pid := range f.pids {
			if !seen[pid] {
				delete(f.pids, pid)
			}
		}
		f.mu.Unlock()
	}()
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		for _, field := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(field)
			if err != nil {
				continue
			}
			seen[pid] = true
			if err := f.classify(pid); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (f *FastPath) classify(pid int) error {
	key, err := exeKeyOf(pid)
	if err == nil {
		f.mu.Lock()
		_, known := f.exes[key]
		if known {
			f.pids[pid] = key
		}
		f.mu.Unlock()
		if known {
			return nil
		}
	}
	var exe string
	var libs []string
	if err == nil {
		exe, libs, err = mappedObjects(pid)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil // exited, or a kernel thread
		}
		return fmt.Errorf("classify pid %d: %w", pid, err)
	}
	risky, why := SpliceRisk(exe, libs)
	verdict := sockmap.ExeSafe
	if risky {
		verdict = sockmap.ExeUnsafe
	}
	target, _ := os.Readlink(exe)
	err = f.objs.SmFpExes.Update(key, verdict, ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		f.mu.Lock()
		f.exeErrors++
		f.mu.Unlock()
		return fmt.Errorf("classify %s: %w", target, err)
	}
	if err == nil {
		f.log.Info("fast path: executable classified", "exe", target, "pid", pid, "receives", !risky, "why", why)
	}
	f.mu.Lock()
	f.exes[key] = verdict
	f.pids[pid] = key
	f.mu.Unlock()
	return nil
}

// Enrolled returns the enrolled cgroups' paths by id.
func (f *FastPath) Enrolled() map[uint64]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[uint64]string, len(f.enrolled))
	for k, v := range f.enrolled {
		out[k] = v
	}
	return out
}

// FastPathCounters are the fast path's counters and the size of its maps.
type FastPathCounters struct {
	sockmap.Stats
	Enrolled     int    `json:"enrolledCgroups"`
	EnrollErrors uint64 `json:"enrollErrors"`
	// Executables this agent classified, and failures to store a verdict.
	Executables int    `json:"executables"`
	ExeErrors   uint64 `json:"executableErrors"`
	// Filled by Dump only: entries in sm_fp_socks, sm_fp_keys and
	// sm_fp_targets now.
	Sockets    int `json:"sockets"`
	Keys       int `json:"keys"`
	TargetsNow int `json:"targetsNow"`
}

// Open is how many sockets are on the fast path and not closed yet, from
// the counters alone (cheap enough for every metrics scrape).
func (c FastPathCounters) Open() uint64 {
	if c.SocksClosed > c.SocksAdded {
		return 0
	}
	return c.SocksAdded - c.SocksClosed
}

// Counters reads the programs' counters; it does not walk any map.
func (f *FastPath) Counters() (FastPathCounters, error) {
	st, err := sockmap.ReadStats(f.objs.SmFpStats)
	if err != nil {
		return FastPathCounters{}, err
	}
	c := FastPathCounters{Stats: st}
	f.mu.Lock()
	c.Enrolled = len(f.enrolled)
	c.EnrollErrors = f.enrollErrors
	c.Executables = len(f.exes)
	c.ExeErrors = f.exeErrors
	f.mu.Unlock()
	return c, nil
}

// Dump is Counters plus the number of entries in the socket maps, counted
// by walking them: for the admin /maps page and tests, not for metrics.
func (f *FastPath) Dump() (FastPathCounters, error) {
	c, err := f.Counters()
	if err != nil {
		return c, err
	}
	for _, m := range []struct {
		m *ebpf.Map
		n *int
	}{{f.objs.SmFpSocks, &c.Sockets}, {f.objs.SmFpKeys, &c.Keys}, {f.objs.SmFpTargets, &c.TargetsNow}} {
		if *m.n, err = countKeys(m.m); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Close releases this process's handles; pins stay (see Dataplane.Close).
func (f *FastPath) Close() error {
	for _, l := range f.links {
		l.Close()
	}
	f.links = nil
	return f.objs.Close()
}

// countKeys counts a map's entries by walking its keys.
func countKeys(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	n := 0
	var prev any // nil: start from the first key
	for {
		if err := m.NextKey(prev, next); errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		} else if err != nil {
			return n, fmt.Errorf("count %s: %w", m, err)
		}
		n++
		copy(key, next)
		prev = key
	}
}
