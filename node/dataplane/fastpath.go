package dataplane

import (
	"bytes"
	"encoding/binary"
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
	"github.com/cilium/ebpf/ringbuf"

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
	exes         map[sockmap.ExeKey]sockmap.ExeVerdict // classified by this instance
	exeErrors    uint64

	classifyMu sync.Mutex // one judge at a time: the scan or an event
	events     *ringbuf.Reader
	eventsDone chan struct{}
}

// OpenFastPath loads the fast path programs, adopts what a previous instance
// pinned in cfg.PinDir, and attaches them to cfg.Cgroup. Nothing is enrolled
// yet: call Enroll or EnrollTree.
func OpenFastPath(cfg Config, log *slog.Logger) (_ *FastPath, err error) {
	if err := sockmap.QueueLength(); err != nil {
		return nil, fmt.Errorf("dataplane: fast path: %w", err)
	}
	if err := cfg.prepare(); err != nil {
		return nil, err
	}
	objs, err := sockmap.Load(cfg.mapDir(), logMigration(log))
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	f := &FastPath{cfg: cfg, log: log, objs: objs, enrolled: map[uint64]string{},
		exes: map[sockmap.ExeKey]sockmap.ExeVerdict{}}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	var cgID uint64
	it := objs.SmFpCgroups.Iterate()
	var v sockmap.CgroupState
	for it.Next(&cgID, &v) {
		f.enrolled[cgID] = ""
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dataplane: read enrolled cgroups: %w", err)
	}
	// sk_msg first, so every socket sockops adds gets the redirect program;
	// then the tracepoints, then sockops, which starts adding sockets.
	if err := sockmap.AttachMsg(objs); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	if err := f.attachTracepoints(); err != nil {
		return nil, err
	}
	if f.events, err = ringbuf.NewReader(objs.SmFpEvents); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	f.eventsDone = make(chan struct{})
	go f.readEvents()
	links, err := cfg.attachCgroup([]cgroupAttachment{{sockmap.ProgSockops, ebpf.AttachCGroupSockOps, objs.SmFpSockops}}, log)
	f.links = append(f.links, links...)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// attachTracepoints attaches the raw tracepoint programs and the splice
// watch, and pins their links. A tracepoint link cannot be updated in place,
// so a link pinned by a previous run is replaced after the new one is
// attached: for a moment both run, which is harmless (they write the same
// maps the same way).
func (f *FastPath) attachTracepoints() error {
	for _, tp := range sockmap.Tracepoints {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp.Event, Program: tp.Program(f.objs)})
		if err != nil {
			return fmt.Errorf("dataplane: attach %s to %s: %w", tp.Name, tp.Event, err)
		}
		if err := f.pinLink(l, tp.Name); err != nil {
			return err
		}
	}
	ids, err := syscallTracepointIDs(sockmap.SpliceWatch)
	if err != nil {
		f.log.Info("fast path: splice watch on raw sys_enter (costs every system call more)", "reason", err)
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: sockmap.RawSpliceWatch.Event, Program: sockmap.RawSpliceWatch.Program(f.objs)})
		if err != nil {
			return fmt.Errorf("dataplane: attach %s: %w", sockmap.RawSpliceWatch.Name, err)
		}
		if err := f.pinLink(l, sockmap.RawSpliceWatch.Name); err != nil {
			return err
		}
		for _, tp := range sockmap.SpliceWatch {
			if err := detachPinned(filepath.Join(f.cfg.linkDir(), tp.Name)); err != nil {
				return fmt.Errorf("dataplane: %w", err)
			}
		}
		return nil
	}
	for i, tp := range sockmap.SpliceWatch {
		l, err := attachPerfTracepoint(ids[i], tp.Program(f.objs))
		if err != nil {
			return fmt.Errorf("dataplane: attach %s to syscalls:%s: %w", tp.Name, tp.Event, err)
		}
		if err := f.pinLink(l, tp.Name); err != nil {
			return err
		}
	}
	if err := detachPinned(filepath.Join(f.cfg.linkDir(), sockmap.RawSpliceWatch.Name)); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	return nil
}

// pinLink keeps l and pins it as name, replacing an older pin.
func (f *FastPath) pinLink(l link.Link, name string) error {
	f.links = append(f.links, l)
	pin := filepath.Join(f.cfg.linkDir(), name)
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
// their splice watch until they close. Their maps and the tracepoints
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
	if err := socks.NextKey(nil, make([]byte, socks.KeySize())); err == nil {
		return nil // sockets are still on the fast path
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("dataplane: %w", err)
	}
	var errs []error
	names, err := sockmap.MapNames()
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	var paths []string
	for _, l := range sockmap.LinkNames() {
		if l != sockmap.ProgSockops {
			paths = append(paths, filepath.Join(links, l))
		}
	}
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
	var errs []error
	fresh := map[uint64]string{}
	for id, path := range ids {
		if _, ok := f.enrolled[id]; ok {
			f.enrolled[id] = path
			continue
		}
		if err := f.objs.SmFpCgroups.Put(id, sockmap.CgroupEnrolled); err != nil {
			errs = append(errs, fmt.Errorf("enroll cgroup %s: %w", path, err))
			continue
		}
		f.enrolled[id] = path
		fresh[id] = path
	}
	defer func() {
		// Servers that listened before: outside the lock, it reads /proc.
		if err := f.seedListeners(fresh); err != nil {
			f.log.Warn("fast path: listeners from before", "err", err)
		}
	}()
	defer f.mu.Unlock()
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
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dataplane: walk cgroups under %s: %w", root, err)
	}
	return errors.Join(f.Enroll(ids), f.ClassifyProcs(ids))
}

// ClassifyProcs judges every enrolled cgroup in ids (id -> directory) by
// its processes (rule 1 of bpf/sockmap): safe, and so its sockets may
// receive redirected data, only if every process runs an executable that
// cannot splice from a socket (SpliceRisk). Each executable gets its
// verdict in sm_fp_exes once; a verdict already there is kept, as the
// splice tracepoint's "unsafe" is the better knowledge.
//
// A cgroup's dirty mark is cleared before its processes are read: an exec
// or a move into it after that marks it again, so a verdict computed from
// a stale list never stands. A process seen before costs a stat of
// /proc/PID/exe and a map lookup.
func (f *FastPath) ClassifyProcs(ids map[uint64]string) error {
	f.classifyMu.Lock()
	defer f.classifyMu.Unlock()
	return f.classifyProcsLocked(ids)
}

func (f *FastPath) classifyProcsLocked(ids map[uint64]string) error {
	var errs []error
	for id, dir := range ids {
		f.mu.Lock()
		_, enrolled := f.enrolled[id]
		f.mu.Unlock()
		if !enrolled {
			continue
		}
		if err := f.objs.SmFpDirty.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("clear dirty mark of %s: %w", dir, err))
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		state := sockmap.CgroupSafe
		for _, field := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(field)
			if err != nil {
				continue
			}
			v, err := f.classify(pid)
			if err != nil {
				errs = append(errs, err)
				state = sockmap.CgroupEnrolled
			} else if v != sockmap.ExeSafe {
				state = sockmap.CgroupEnrolled
			}
		}
		if err := f.objs.SmFpCgroups.Update(id, state, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// classify returns the verdict on process pid's executable, reading the
// executable if it is new. A process that is gone, or a kernel thread,
// counts as safe: it opens no socket.
func (f *FastPath) classify(pid int) (sockmap.ExeVerdict, error) {
	proc := "/proc/" + strconv.Itoa(pid)
	key, err := exeKeyOf(proc + "/exe")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return sockmap.ExeSafe, nil
		}
		return 0, fmt.Errorf("classify pid %d: %w", pid, err)
	}
	return f.judge(key, proc+"/exe", proc+"/root")
}

// judge returns the verdict on the executable key, found at path in the
// file system rooted at root, reading it if sm_fp_exes has none.
func (f *FastPath) judge(key sockmap.ExeKey, path, root string) (sockmap.ExeVerdict, error) {
	var verdict sockmap.ExeVerdict
	if err := f.objs.SmFpExes.Lookup(key, &verdict); err == nil {
		return verdict, nil
	}
	target, err := os.Readlink(path)
	if err != nil {
		target = path
	}
	var risky bool
	var why string
	libs, err := neededLibs(root, path)
	if err != nil {
		risky, why = true, err.Error()
	} else {
		risky, why = SpliceRisk(path, libs)
	}
	verdict = sockmap.ExeSafe
	if risky {
		verdict = sockmap.ExeUnsafe
	}
	err = f.objs.SmFpExes.Update(key, verdict, ebpf.UpdateNoExist)
	if errors.Is(err, ebpf.ErrKeyExist) {
		// Judged meanwhile, perhaps by the splice tracepoint: that stands.
		err = f.objs.SmFpExes.Lookup(key, &verdict)
	}
	if err != nil {
		f.mu.Lock()
		f.exeErrors++
		f.mu.Unlock()
		return 0, fmt.Errorf("classify %s: %w", target, err)
	}
	f.log.Info("fast path: executable classified", "exe", target, "receives", !risky, "why", why)
	f.mu.Lock()
	f.exes[key] = verdict
	f.mu.Unlock()
	return verdict, nil
}

// readEvents judges, as they come, the executables the exec and
// cgroup-attach tracepoints report (sm_fp_events), and looks at their
// cgroups again, so a cgroup made dirty by a program started in it is
// safe again within milliseconds if the program is, not at the next scan.
func (f *FastPath) readEvents() {
	defer close(f.eventsDone)
	for {
		rec, err := f.events.Read()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				f.log.Warn("fast path: reading exec events", "error", err)
			}
			return
		}
		var ev sockmap.ExecEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.LittleEndian, &ev); err != nil {
			f.log.Warn("fast path: bad exec event", "error", err)
			continue
		}
		f.judgeEvent(ev)
	}
}

func (f *FastPath) judgeEvent(ev sockmap.ExecEvent) {
	proc := "/proc/" + strconv.Itoa(int(ev.Pid))
	name := make([]byte, 0, len(ev.Filename))
	for _, c := range ev.Filename {
		if c == 0 {
			break
		}
		name = append(name, byte(c))
	}
	// The file execve was given, in the process's root; or what the
	// process runs now, if that is still the same file.
	var candidates []string
	if strings.HasPrefix(string(name), "/") {
		candidates = append(candidates, proc+"/root"+string(name))
	}
	var path string
	for _, p := range append(candidates, proc+"/exe") {
		if k, err := exeKeyOf(p); err == nil && k == ev.Exe {
			path = p
			break
		}
	}
	f.classifyMu.Lock()
	defer f.classifyMu.Unlock()
	if path != "" {
		if _, err := f.judge(ev.Exe, path, proc+"/root"); err != nil {
			f.log.Warn("fast path: judging an executable", "error", err)
		}
	}
	f.mu.Lock()
	dir, ok := f.enrolled[ev.Cgroup]
	f.mu.Unlock()
	if ok && dir != "" {
		if err := f.classifyProcsLocked(map[uint64]string{ev.Cgroup: dir}); err != nil {
			f.log.Debug("fast path: judging a cgroup", "cgroup", dir, "error", err)
		}
	}
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
	// Filled by Dump only: entries in sm_fp_hold (every fast-path
	// socket; sm_fp_socks holds the same ones), sm_fp_keys and
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
	}{{f.objs.SmFpHold, &c.Sockets}, {f.objs.SmFpKeys, &c.Keys}, {f.objs.SmFpTargets, &c.TargetsNow}} {
		if *m.n, err = countKeys(m.m); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Close releases this process's handles; pins stay (see Dataplane.Close).
func (f *FastPath) Close() error {
	if f.events != nil {
		f.events.Close()
		<-f.eventsDone
		f.events = nil
	}
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
