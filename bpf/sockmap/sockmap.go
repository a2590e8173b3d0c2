package sockmap

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockmesh/sockmesh/bpf/verifier"
)

// Names, as pinned, of what other packages refer to by name.
const (
	MapHold     = bpfMapSmFpHold
	MapExes     = bpfMapSmFpExes

	ProgSockops = bpfProgSmFpSockops
	ProgSplice  = bpfProgSmFpSplice
)

// Objects are the loaded programs and maps.
type Objects = bpfObjects

// SockKey is the key of sm_fp_socks: one end of a connection.
type SockKey = bpfSockKey

// ExeKey is the key of sm_fp_exes: an executable's inode and the kernel's
// number of its device (MAJOR << 20 | MINOR).
type ExeKey = bpfExeKey

// ExeVerdict is the value of sm_fp_exes.
type ExeVerdict = bpfExeVerdict

// Verdicts in sm_fp_exes.
const (
	ExeSafe   = bpfExeVerdictEXE_SAFE
	ExeUnsafe = bpfExeVerdictEXE_UNSAFE
)

// SpliceTracepoint is the raw tracepoint sm_fp_splice attaches to.
const SpliceTracepoint = "sys_enter"

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

// Load loads the programs and maps, pinning the maps in pinDir (or adopting
// the ones pinned there); an empty pinDir pins nothing.
func Load(pinDir string) (*Objects, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load sockmap spec: %w", err)
	}
	if pinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	var objs Objects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}); err != nil {
		return nil, verifier.Explain("fast path programs", err)
	}
	return &objs, nil
}

// MapNames lists every map of the fast path, as pinned.
func MapNames() ([]string, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load sockmap spec: %w", err)
	}
	names := make([]string, 0, len(spec.Maps))
	for name := range spec.Maps {
		names = append(names, name)
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
	Refused        uint64 `json:"refused"`
	Unclassified   uint64 `json:"unclassified"`
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
		"refused":         s.Refused,
		"unclassified":    s.Unclassified,
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
		s.Refused += p.Refused
		s.Unclassified += p.Unclassified
	}
	return s, nil
}
