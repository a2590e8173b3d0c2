package sockmap

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/sockmesh/sockmesh/bpf/pins"
	"github.com/sockmesh/sockmesh/bpf/verifier"
)

// Names, as pinned, of what other packages refer to by name.
const (
	MapHold = bpfMapSmFpHold
	MapExes = bpfMapSmFpExes

	ProgSockops = bpfProgSmFpSockops
)

// Objects are the loaded programs and maps.
type Objects = bpfObjects

// SockKey is the key of sm_fp_socks: one end of a connection.
type SockKey = bpfSockKey

// ExeKey is the key of sm_fp_exes: an executable's inode and the kernel's
// number of its device (MAJOR << 20 | MINOR).
type ExeKey = bpfExeKey

// ListenerKey is the key of sm_fp_listeners: a listening port in a
// network namespace (by cookie).
type ListenerKey = bpfListenerKey

// ExecEvent is what sm_fp_events carries: an executable to judge now.
type ExecEvent = bpfExecEvent

// ExeVerdict is the value of sm_fp_exes.
type ExeVerdict = bpfExeVerdict

// Verdicts in sm_fp_exes.
const (
	ExeSafe   = bpfExeVerdictEXE_SAFE
	ExeUnsafe = bpfExeVerdictEXE_UNSAFE
)

// CgroupState is the value of sm_fp_cgroups.
type CgroupState = bpfCgroupState

// States in sm_fp_cgroups.
const (
	CgroupEnrolled = bpfCgroupStateCG_ENROLLED
	CgroupSafe     = bpfCgroupStateCG_SAFE
)

// Tracepoint is one of the fast path's raw tracepoint programs and the
// event it attaches to.
type Tracepoint struct {
	Name    string // the program's name, as pinned
	Event   string
	Program func(*Objects) *ebpf.Program
}

// Tracepoints are the fast path's raw tracepoint programs besides the
// splice watch: the exec and cgroup-move watches that take a cgroup's
// safety away (see sockmap.c).
var Tracepoints = []Tracepoint{
	{bpfProgSmFpExec, "sched_process_exec", func(o *Objects) *ebpf.Program { return o.SmFpExec }},
	{bpfProgSmFpAttach, "cgroup_attach_task", func(o *Objects) *ebpf.Program { return o.SmFpAttach }},
}

// SpliceWatch is the splice watch on the syscalls:sys_enter_splice and
// sys_enter_sendfile64 tracepoints (Event names them; the program type is
// tracepoint); RawSpliceWatch is the same on the raw sys_enter tracepoint,
// for when tracefs does not give those tracepoints' ids. Any syscall
// tracepoint slows every system call of the node; the per-syscall ones
// least.
var (
	SpliceWatch = []Tracepoint{
		{bpfProgSmFpSpliceTp, "sys_enter_splice", func(o *Objects) *ebpf.Program { return o.SmFpSpliceTp }},
		{bpfProgSmFpSendfileTp, "sys_enter_sendfile64", func(o *Objects) *ebpf.Program { return o.SmFpSendfileTp }},
	}
	RawSpliceWatch = Tracepoint{bpfProgSmFpSplice, "sys_enter", func(o *Objects) *ebpf.Program { return o.SmFpSplice }}
)

// LinkNames lists the names of every link the fast path may pin.
func LinkNames() []string {
	names := []string{bpfProgSmFpSockops, RawSpliceWatch.Name}
	for _, tp := range append(Tracepoints, SpliceWatch...) {
		names = append(names, tp.Name)
	}
	return names
}

// AttachMsg attaches the sk_msg program to sm_fp_socks. The attachment
// belongs to the map (it lives as long as the map does, pinned or not) and
// replaces a program a previous instance attached; sockets already in the
// map keep the program they joined with.
func AttachMsg(o *Objects) error {
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  o.SmFpSocks.FD(),
		Program: o.SmFpMsg,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", bpfProgSmFpMsg, bpfMapSmFpSocks, err)
	}
	return nil
}

// ErrNoQueueLength means the kernel does not count the bytes waiting in a
// socket's psock (sk_psock.msg_tot_len, Linux 6.8): the fast path could
// not hold back a sender whose peer does not read (rule 3 in sockmap.c).
var ErrNoQueueLength = errors.New("the kernel does not count the bytes queued for a socket in a sockhash (sk_psock.msg_tot_len, Linux 6.8+): a sender whose peer does not read could not be held back")

// QueueLength reports whether the kernel counts the bytes waiting in a
// socket's psock, which the fast path needs (ErrNoQueueLength if not).
func QueueLength() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	var psock *btf.Struct
	if err := spec.TypeByName("sk_psock", &psock); err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	for _, m := range psock.Members {
		if m.Name == "msg_tot_len" {
			return nil
		}
	}
	return ErrNoQueueLength
}

// QueueMax is how many bytes a receiver may have unread in its psock before
// its peer's sends go through TCP and TCP's flow control holds the peer
// back (rule 3 in sockmap.c): this node's tcp_wmem[2], as far as TCP lets
// a sender get ahead in its own send buffer; the kernel's default 4 MiB
// if unreadable.
func QueueMax() uint32 {
	const fallback = 4 << 20
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	if err != nil {
		return fallback
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return fallback
	}
	n, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil || n == 0 {
		return fallback
	}
	return uint32(n)
}

// Load loads the programs and maps, pinning the maps in pinDir (or adopting
// the ones pinned there); an empty pinDir pins nothing. A pinned map of
// another layout (an older release) is replaced, its entries carried over
// where they fit, and migrated hears of it; one that holds sockets makes
// Load fail with pins.ErrHeld.
func Load(pinDir string, migrated func(pins.Migration)) (*Objects, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load sockmap spec: %w", err)
	}
	if pinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	if pinDir != "" {
		done, err := pins.Migrate(spec, pinDir)
		for _, m := range done {
			if migrated != nil {
				migrated(m)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("fast path: %w", err)
		}
	}
	if err := spec.Variables["queue_max"].Set(QueueMax()); err != nil {
		return nil, fmt.Errorf("fast path: queue_max: %w", err)
	}
	var objs Objects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}); err != nil {
		return nil, verifier.Explain("fast path programs", err)
	}
	return &objs, nil
}

// MapNames lists every pinned map of the fast path.
func MapNames() ([]string, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load sockmap spec: %w", err)
	}
	names := make([]string, 0, len(spec.Maps))
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	return names, nil
}

// Stats are the fast path's counters summed over CPUs.
type Stats struct {
	SocksAdded     uint64 `json:"socksAdded"`
	SocksClosed    uint64 `json:"socksClosed"`
	AddErrors      uint64 `json:"addErrors"`
	Targets        uint64 `json:"targets"`
	RedirectMsgs   uint64 `json:"redirectMsgs"`
	RedirectBytes  uint64 `json:"redirectBytes"`
	FallbackMsgs   uint64 `json:"fallbackMsgs"`
	SpliceExits    uint64 `json:"spliceExits"`
	SpliceStranded uint64 `json:"spliceStranded"`
	HandoverWaits  uint64 `json:"handoverWaits"`
	Handovers      uint64 `json:"handovers"`
	RemotePeers    uint64 `json:"remotePeers"`
	UnsafePairs    uint64 `json:"unsafePairs"`
	DirtyMarks     uint64 `json:"dirtyMarks"`
	EventsLost     uint64 `json:"eventsLost"`
	Backpressure   uint64 `json:"backpressure"`
}

// Events names every counter, for metrics.
func (s Stats) Events() map[string]uint64 {
	return map[string]uint64{
		"socks_added":     s.SocksAdded,
		"socks_closed":    s.SocksClosed,
		"add_errors":      s.AddErrors,
		"targets":         s.Targets,
		"redirect_msgs":   s.RedirectMsgs,
		"redirect_bytes":  s.RedirectBytes,
		"fallback_msgs":   s.FallbackMsgs,
		"splice_exits":    s.SpliceExits,
		"splice_stranded": s.SpliceStranded,
		"handover_waits":  s.HandoverWaits,
		"handovers":       s.Handovers,
		"remote_peers":    s.RemotePeers,
		"unsafe_pairs":    s.UnsafePairs,
		"dirty_marks":     s.DirtyMarks,
		"events_lost":     s.EventsLost,
		"backpressure":    s.Backpressure,
	}
}

// ReadStats sums the per-CPU counters of sm_fp_stats.
func ReadStats(m *ebpf.Map) (Stats, error) {
	var per []bpfFpStats
	if err := m.Lookup(uint32(0), &per); err != nil {
		return Stats{}, fmt.Errorf("read fast path stats: %w", err)
	}
	var s Stats
	for _, p := range per {
		s.SocksAdded += p.SocksAdded
		s.SocksClosed += p.SocksClosed
		s.AddErrors += p.AddErrors
		s.Targets += p.Targets
		s.RedirectMsgs += p.RedirectMsgs
		s.RedirectBytes += p.RedirectBytes
		s.FallbackMsgs += p.FallbackMsgs
		s.SpliceExits += p.SpliceExits
		s.SpliceStranded += p.SpliceStranded
		s.HandoverWaits += p.HandoverWaits
		s.Handovers += p.Handovers
		s.RemotePeers += p.RemotePeers
		s.UnsafePairs += p.UnsafePairs
		s.DirtyMarks += p.DirtyMarks
		s.EventsLost += p.EventsLost
		s.Backpressure += p.Backpressure
	}
	return s, nil
}
