package sockaddr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf/pins"
	"github.com/sockmesh/sockmesh/bpf/verifier"
)

// Protocol numbers as the kernel reports them in bpf_sock_addr.protocol.
const (
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// Map and program names, as pinned.
const (
	MapServices = bpfMapSmServices
	MapSlots    = bpfMapSmSlots
	MapUDPRev   = bpfMapSmUdpRev
	MapStats    = bpfMapSmStats
	MapAgent    = bpfMapSmAgent
)

// ServiceFlags are the bits of ServiceValue.Flags.
type ServiceFlags = bpfSvcFlags

// FlagAgentLive marks a service translated only while the agent's
// heartbeat in sm_agent is less than two seconds old.
const FlagAgentLive = bpfSvcFlagsSVC_F_AGENT_LIVE

// MaxSlots is how many slots one service revision may use; weights are scaled
// down to fit.
const MaxSlots = 1024

// ServiceKey names a service port in a service table.
type ServiceKey = bpfSvcKey

// ServiceValue is what a service table holds for a service port.
type ServiceValue = bpfSvcVal

// InlineSlots is how many slots a service entry holds itself: a table of
// at most this many is in ServiceValue.Table, a larger one in sm_slots.
const InlineSlots = len(bpfSvcVal{}.Table)

// InlineTable reports whether a slot table of n slots is kept in the
// service entry rather than in sm_slots.
func InlineTable(n int) bool { return n <= InlineSlots }

// NewServiceValue builds the entry of a service whose slot table is slots,
// written under revision rev: inline if it fits, else the caller writes
// the slots to sm_slots under rev first.
func NewServiceValue(rev uint32, slots []Backend, flags ServiceFlags) ServiceValue {
	v := ServiceValue{Rev: rev, Slots: uint32(len(slots)), Flags: flags}
	if v.Inline() {
		copy(v.Table[:], slots)
	}
	return v
}

// Inline reports whether the slot table is in the entry (Table[:Slots])
// rather than in sm_slots.
func (v *bpfSvcVal) Inline() bool { return InlineTable(int(v.Slots)) }

// SlotKey is the key of sm_slots.
type SlotKey = bpfSlotKey

// Backend is the value of sm_slots.
type Backend = bpfBackend

// Objects are the loaded programs and maps.
type Objects = bpfObjects

// Attachment pairs a program with the cgroup hook it belongs on.
type Attachment struct {
	Name    string
	Type    ebpf.AttachType
	Program *ebpf.Program
}

// Attachments lists every program of o with its hook.
func Attachments(o *Objects) []Attachment {
	return []Attachment{
		{bpfProgSmConnect4, ebpf.AttachCGroupInet4Connect, o.SmConnect4},
		{bpfProgSmConnect6, ebpf.AttachCGroupInet6Connect, o.SmConnect6},
		{bpfProgSmSendmsg4, ebpf.AttachCGroupUDP4Sendmsg, o.SmSendmsg4},
		{bpfProgSmSendmsg6, ebpf.AttachCGroupUDP6Sendmsg, o.SmSendmsg6},
		{bpfProgSmRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg, o.SmRecvmsg4},
		{bpfProgSmRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg, o.SmRecvmsg6},
		{bpfProgSmGetpeername4, ebpf.AttachCgroupInet4GetPeername, o.SmGetpeername4},
		{bpfProgSmGetpeername6, ebpf.AttachCgroupInet6GetPeername, o.SmGetpeername6},
		{bpfProgSmSockRelease, ebpf.AttachCgroupInetSockRelease, o.SmSockRelease},
	}
}

// Spec returns the compiled collection spec.
func Spec() (*ebpf.CollectionSpec, error) {
	return loadBpf()
}

// LoadOptions say where to pin and how large to make the maps.
type LoadOptions struct {
	// PinDir is where maps are pinned in, or adopted from; empty pins
	// nothing.
	PinDir string
	// MaxSlots overrides the capacity of sm_slots (0: the compiled-in
	// 262144). A pinned map of another layout (another capacity, an older
	// release) is replaced, its entries carried over where they fit (see
	// package pins; services: ReadLegacyServices).
	MaxSlots uint32
	// Migrated, if set, hears of every pinned map replaced.
	Migrated func(pins.Migration)
}

// Load loads the programs and maps.
func Load(o LoadOptions) (*Objects, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load sockaddr spec: %w", err)
	}
	var objs Objects
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: o.PinDir}}
	if o.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	if o.MaxSlots > 0 {
		spec.Maps[MapSlots].MaxEntries = o.MaxSlots
	}
	if o.PinDir != "" {
		done, err := pins.Migrate(spec, o.PinDir)
		for _, m := range done {
			if o.Migrated != nil {
				o.Migrated(m)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("sockaddr: %w", err)
		}
	}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		return nil, verifier.Explain("sockaddr programs", err)
	}
	return &objs, nil
}

// ReadLegacyServices reads the services from an sm_services pinned in
// pinDir by a release that kept them in a hash map (which Load replaces),
// so the agent can write them to the service table before its programs
// replace the old ones: connects keep being translated across the upgrade.
// It returns nil if there is no such map.
func ReadLegacyServices(pinDir string) (map[ServiceKey]ServiceValue, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapServices), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("pinned %s: %w", MapServices, err)
	}
	defer m.Close()
	if m.Type() != ebpf.Hash || m.KeySize() != uint32(binary.Size(ServiceKey{})) || m.ValueSize() != uint32(binary.Size(ServiceValue{})) {
		return nil, nil
	}
	out := map[ServiceKey]ServiceValue{}
	var k ServiceKey
	var v ServiceValue
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read pinned %s: %w", MapServices, err)
	}
	return out, nil
}

// Addr encodes an address the way the programs store it: IPv4 v4-mapped,
// every word in network byte order.
func Addr(a netip.Addr) (w [4]uint32) {
	b := a.As16() // As16 maps IPv4 to ::ffff:a.b.c.d
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return w
}

// AddrFrom decodes an address stored by Addr; v4-mapped becomes IPv4.
func AddrFrom(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[i*4:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// Port encodes a port in network byte order as the programs store it.
func Port(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// PortFrom decodes a port stored by Port.
func PortFrom(p uint16) uint16 { return Port(p) }

// NewServiceKey builds the key of one service port.
func NewServiceKey(vip netip.Addr, port uint16, proto uint8) ServiceKey {
	var k ServiceKey
	k.Vip.W = Addr(vip)
	k.Port = Port(port)
	k.Proto = proto
	return k
}

// NewBackend builds a slot value.
func NewBackend(addr netip.Addr, port uint16) Backend {
	var b Backend
	b.Addr.W = Addr(addr)
	b.Port = Port(port)
	return b
}

// Stats are the programs' counters summed over CPUs.
type Stats struct {
	Translated    uint64 `json:"translated"`
	NoBackend     uint64 `json:"noBackend"`
	SlotMiss      uint64 `json:"slotMiss"`
	Reversed      uint64 `json:"reversed"`
	UDPReverseErr uint64 `json:"udpReverseFull"`
	AgentDown     uint64 `json:"agentDown"`
	PeerFull      uint64 `json:"peerFull"`
}

// Events names every counter, for metrics (one place, so a new counter
// cannot be forgotten by the exporter).
func (s Stats) Events() map[string]uint64 {
	return map[string]uint64{
		"translated":       s.Translated,
		"no_backend":       s.NoBackend,
		"slot_miss":        s.SlotMiss,
		"reversed":         s.Reversed,
		"udp_reverse_full": s.UDPReverseErr,
		"agent_down":       s.AgentDown,
		"peer_full":        s.PeerFull,
	}
}

// ReadStats sums the per-CPU counters of the sm_stats map.
func ReadStats(m *ebpf.Map) (Stats, error) {
	var s Stats
	for i, p := range statFields(&s) {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return s, fmt.Errorf("read stat %d: %w", i, err)
		}
		for _, v := range per {
			*p += v
		}
	}
	return s, nil
}

// statFields lists s's counters in the order of the program's enum stat.
func statFields(s *Stats) []*uint64 {
	return []*uint64{
		bpfStatSTAT_TRANSLATED:   &s.Translated,
		bpfStatSTAT_NO_BACKEND:   &s.NoBackend,
		bpfStatSTAT_SLOT_MISS:    &s.SlotMiss,
		bpfStatSTAT_REVERSED:     &s.Reversed,
		bpfStatSTAT_UDP_REV_FULL: &s.UDPReverseErr,
		bpfStatSTAT_AGENT_DOWN:   &s.AgentDown,
		bpfStatSTAT_PEER_FULL:    &s.PeerFull,
	}
}
