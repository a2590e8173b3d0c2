package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf/pins"
	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/node/host"
)

// Config names one agent instance's kernel footprint.
type Config struct {
	// PinDir is the bpffs directory this instance pins maps and links in.
	PinDir string
	// Cgroup is the cgroup v2 directory the programs attach to; sockets of
	// processes in it and below are routed.
	Cgroup string
	// MaxServices caps the service ports in the service table (0: and at
	// most sockaddr.MaxServices, 32768); MaxSlots sizes the map of
	// backend slots of larger services (0: 262144).
	MaxServices, MaxSlots uint32
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.PinDir == "" || !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("dataplane: pin directory %q must be an absolute path", c.PinDir)
	}
	if c.Cgroup == "" || !filepath.IsAbs(c.Cgroup) {
		return fmt.Errorf("dataplane: cgroup %q must be an absolute path", c.Cgroup)
	}
	return nil
}

// prepare validates the config and readies the process and the pin
// directory for loading: memlock limit, bpffs, maps/ and links/.
func (c Config) prepare() error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("dataplane: remove memlock limit: %w", err)
	}
	if _, err := host.EnsureBPFFS(c.PinDir); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	for _, d := range []string{c.mapDir(), c.linkDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("dataplane: %w", err)
		}
	}
	return nil
}

func (c Config) mapDir() string  { return filepath.Join(c.PinDir, "maps") }
func (c Config) linkDir() string { return filepath.Join(c.PinDir, "links") }

// entry is what one service key holds in the kernel now.
type entry struct {
	rev   uint32
	slots []sockaddr.Backend
	flags sockaddr.ServiceFlags
	name  string
}

// Dataplane is the loaded, attached kernel state of one agent instance.
type Dataplane struct {
	cfg  Config
	log  *slog.Logger
	objs *sockaddr.Objects

	mu      sync.Mutex
	table   *sockaddr.Table
	current map[sockaddr.ServiceKey]entry
	// retired are the slot tables of revisions replaced in memory, to be
	// deleted once a Commit has put the table that no longer points at
	// them in place.
	retired []entry
	nextRev uint32
	links   []link.Link

	syncErrors uint64
}

// Open loads the programs, adopts maps and links a previous instance pinned
// in cfg.PinDir, attaches what is not attached yet, and reads back the
// service state the maps hold. A failed Open leaves no new attachment.
func Open(cfg Config, log *slog.Logger) (_ *Dataplane, err error) {
	if err := cfg.prepare(); err != nil {
		return nil, err
	}
	legacy, err := sockaddr.ReadLegacyServices(cfg.mapDir())
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	objs, err := sockaddr.Load(sockaddr.LoadOptions{PinDir: cfg.mapDir(), MaxSlots: cfg.MaxSlots, Migrated: logMigration(log)})
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	d := &Dataplane{cfg: cfg, log: log, objs: objs, current: map[sockaddr.ServiceKey]entry{}, nextRev: 1}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if d.table, err = sockaddr.OpenTable(objs, int(cfg.MaxServices)); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	if err := d.adopt(legacy); err != nil {
		return nil, err
	}
	if err := d.attach(); err != nil {
		return nil, err
	}
	return d, nil
}

// attach links each program to the cgroup.
func (d *Dataplane) attach() error {
	links, err := d.cfg.attachCgroup(attachmentsOf(sockaddr.Attachments(d.objs)), d.log)
	d.links = append(d.links, links...)
	return err
}

// cgroupAttachment is one program for one cgroup hook, under its pin name.
type cgroupAttachment struct {
	name string
	typ  ebpf.AttachType
	prog *ebpf.Program
}

func attachmentsOf(as []sockaddr.Attachment) []cgroupAttachment {
	out := make([]cgroupAttachment, len(as))
	for i, a := range as {
		out[i] = cgroupAttachment{a.Name, a.Type, a.Program}
	}
	return out
}

// attachCgroup links each program to the cgroup and pins the link. A link
// pinned by a previous run is updated in place to the new program,
// atomically: there is no moment without a program, so no socket escapes
// during a restart. It returns the links made so far even on error, for the
// caller to close.
func (c Config) attachCgroup(as []cgroupAttachment, log *slog.Logger) ([]link.Link, error) {
	cg, err := os.Open(c.Cgroup)
	if err != nil {
		return nil, fmt.Errorf("dataplane: open cgroup: %w", err)
	}
	defer cg.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(cg.Fd()), &st); err != nil {
		return nil, fmt.Errorf("dataplane: stat cgroup: %w", err)
	}
	var links []link.Link
	for _, a := range as {
		pin := filepath.Join(c.linkDir(), a.name)
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err == nil:
			info, ierr := l.Info()
			if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId != st.Ino {
				l.Close()
				return links, fmt.Errorf("dataplane: %s is attached to another cgroup (id %d) than %s: use another pin directory or clean up", pin, info.Cgroup().CgroupId, c.Cgroup)
			}
			if err := l.Update(a.prog); err != nil {
				l.Close()
				return links, fmt.Errorf("dataplane: update pinned link %s: %w", a.name, err)
			}
			log.Debug("adopted link", "program", a.name)
		case errors.Is(err, os.ErrNotExist):
			l, err = link.AttachCgroup(link.CgroupOptions{Path: c.Cgroup, Attach: a.typ, Program: a.prog})
			if err != nil {
				return links, fmt.Errorf("dataplane: attach %s to %s: %w", a.name, c.Cgroup, err)
			}
			if err := l.Pin(pin); err != nil {
				l.Close()
				return links, fmt.Errorf("dataplane: pin link %s: %w", a.name, err)
			}
		default:
			return links, fmt.Errorf("dataplane: load pinned link %s: %w", a.name, err)
		}
		links = append(links, l)
	}
	return links, nil
}

// adopt reads what the pinned maps hold, so the first Sync writes only
// differences, and drops slots no service points at (left by a run that
// stopped between writing slots and switching the service). Services an
// older release kept in a hash map (legacy) go into the table, which is
// put in place before the new programs are attached.
func (d *Dataplane) adopt(legacy map[sockaddr.ServiceKey]sockaddr.ServiceValue) error {
	byRev := map[uint32][]struct {
		slot uint32
		b    sockaddr.Backend
	}{}
	var sk sockaddr.SlotKey
	var b sockaddr.Backend
	it := d.objs.SmSlots.Iterate()
	for it.Next(&sk, &b) {
		byRev[sk.Rev] = append(byRev[sk.Rev], struct {
			slot uint32
			b    sockaddr.Backend
		}{sk.Slot, b})
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("dataplane: read slots: %w", err)
	}
	used := map[uint32]bool{}
	services := d.table.All()
	for k, v := range legacy {
		if _, ok := services[k]; ok {
			continue
		}
		if err := d.table.Set(k, v); err != nil {
			d.log.Warn("service of the previous release not carried over", "err", err)
			continue
		}
		services[k] = v
	}
	for key, val := range services {
		var slots []sockaddr.Backend
		if val.Inline() {
			slots = slices.Clone(val.Table[:val.Slots])
		} else {
			slots = make([]sockaddr.Backend, val.Slots)
			for _, s := range byRev[val.Rev] {
				if s.slot < val.Slots {
					slots[s.slot] = s.b
				}
			}
			used[val.Rev] = true
		}
		d.current[key] = entry{rev: val.Rev, slots: slots, flags: val.Flags}
		d.nextRev = max(d.nextRev, val.Rev+1)
	}
	if err := d.table.Commit(); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	for rev, slots := range byRev {
		d.nextRev = max(d.nextRev, rev+1)
		if used[rev] {
			continue
		}
		for _, s := range slots {
			_ = d.objs.SmSlots.Delete(sockaddr.SlotKey{Rev: rev, Slot: s.slot})
		}
	}
	if len(d.current) > 0 {
		d.log.Info("adopted kernel state", "services", len(d.current), "pin_dir", d.cfg.PinDir)
	}
	return nil
}

// Sync makes the kernel's service maps equal to desired. Changed services
// get their backends under a fresh revision, written before the service
// table that points at it is put in place, and the old revision is deleted
// after: a connect sees either the old or the new backend set, never a mix
// or a gap. Services that fail (e.g. a full table) keep their previous
// state; the errors are returned together.
func (d *Dataplane) Sync(desired []Service) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := make(map[sockaddr.ServiceKey]Service, len(desired))
	var errs []error
	for _, s := range desired {
		k := s.key()
		if _, dup := want[k]; dup {
			errs = append(errs, fmt.Errorf("%s: listed twice", s))
			continue
		}
		want[k] = s
	}
	for k, s := range want {
		slots, err := Slots(s.Backends)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		cur, ok := d.current[k]
		if ok && cur.flags == s.flags() && slices.Equal(cur.slots, slots) {
			if cur.name != s.Name {
				cur.name = s.Name
				d.current[k] = cur
			}
			continue
		}
		if err := d.write(k, slots, s.flags(), s.Name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
		}
	}
	for k, cur := range d.current {
		if _, ok := want[k]; ok {
			continue
		}
		d.table.Delete(k)
		d.retired = append(d.retired, cur)
		delete(d.current, k)
	}
	if err := d.table.Commit(); err != nil {
		// The programs may still read a table pointing at the retired
		// revisions: keep them until a Commit succeeds.
		errs = append(errs, err)
	} else {
		for _, old := range d.retired {
			d.deleteTable(old.rev, old.slots)
		}
		d.retired = nil
	}
	if len(errs) > 0 {
		d.syncErrors += uint64(len(errs))
		return errors.Join(errs...)
	}
	return nil
}

func (d *Dataplane) write(k sockaddr.ServiceKey, slots []sockaddr.Backend, flags sockaddr.ServiceFlags, name string) error {
	rev := d.nextRev
	d.nextRev++
	val := sockaddr.NewServiceValue(rev, slots, flags)
	if !val.Inline() {
		for i, b := range slots {
			if err := d.objs.SmSlots.Update(sockaddr.SlotKey{Rev: rev, Slot: uint32(i)}, b, ebpf.UpdateNoExist); err != nil {
				d.deleteSlots(rev, i)
				return fmt.Errorf("write backend slot (%d of %d): %w", i+1, len(slots), err)
			}
		}
	}
	if err := d.table.Set(k, val); err != nil {
		d.deleteTable(rev, slots)
		return err
	}
	if old, ok := d.current[k]; ok {
		d.retired = append(d.retired, old)
	}
	d.current[k] = entry{rev: rev, slots: slots, flags: flags, name: name}
	return nil
}

// deleteTable removes revision rev's slots from sm_slots, if its table of
// slots was there rather than inline.
func (d *Dataplane) deleteTable(rev uint32, slots []sockaddr.Backend) {
	if !sockaddr.InlineTable(len(slots)) {
		d.deleteSlots(rev, len(slots))
	}
}

func (d *Dataplane) deleteSlots(rev uint32, n int) {
	for i := range n {
		if err := d.objs.SmSlots.Delete(sockaddr.SlotKey{Rev: rev, Slot: uint32(i)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			d.log.Warn("delete backend slot", "rev", rev, "slot", i, "err", err)
		}
	}
}

// Heartbeat tells the programs the agent is alive (now) or gone (alive
// false). Services with RequireAgent are translated only while the last
// heartbeat is under two seconds old, so call it at least every second.
func (d *Dataplane) Heartbeat(alive bool) error {
	var v uint64
	if alive {
		var ts unix.Timespec
		// bpf_ktime_get_ns() reads CLOCK_MONOTONIC.
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			return err
		}
		v = uint64(ts.Nano())
	}
	return d.objs.SmAgent.Put(uint32(0), v)
}

// Close releases this process's handles. Pinned links and maps stay: the
// routing keeps working while no agent runs, and the next one adopts it.
func (d *Dataplane) Close() error {
	for _, l := range d.links {
		l.Close()
	}
	d.links = nil
	return d.objs.Close()
}

// logMigration reports a pinned map an earlier release left in another
// layout and that was replaced.
func logMigration(log *slog.Logger) func(pins.Migration) {
	return func(m pins.Migration) {
		if m.Dropped {
			log.Warn("pinned map replaced: another layout, its entries start again", "map", m.Map, "reason", m.Reason)
			return
		}
		log.Info("pinned map replaced: another layout, entries carried over", "map", m.Map, "entries", m.Copied, "reason", m.Reason)
	}
}

// detachPinned detaches the link pinned at pin and removes the pin. Only
// removing the pin detaches the program after an RCU grace period (bpffs
// frees inodes that way), so sockets made just after still saw it;
// detaching first makes it take effect now. Links that cannot be detached
// (raw tracepoints) are only unpinned.
func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) && !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("detach %s: %w", pin, err)
	}
	return l.Unpin()
}

// Cleanup removes everything an instance pinned under pinDir: its links
// (which detaches the programs) and its maps. It leaves other instances
// alone and succeeds when there is nothing to remove.
func Cleanup(pinDir string) error {
	var errs []error
	for _, sub := range []string{"links", "maps"} {
		dir := filepath.Join(pinDir, sub)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			remove := os.Remove
			if sub == "links" {
				remove = detachPinned
			}
			if err := remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, host.ReleaseBPFFS(pinDir))
	}
	return errors.Join(errs...)
}
