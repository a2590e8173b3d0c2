package sockaddr

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"
)

// TableSlots is the size of a service table (SVC_TABLE_SLOTS), and
// TableProbes how far from its home slot a service may live (SVC_PROBES).
const (
	TableSlots  = 65536
	TableProbes = 8
)

// MaxServices is the most service ports a table takes: half its slots, so
// runs of occupied slots stay short.
const MaxServices = TableSlots / 2

// ErrTableFull is returned by Set when the table holds its limit of
// services, or when every slot a key may live in is taken.
var ErrTableFull = errors.New("service table full")

// Entry is one slot of a service table.
type Entry = bpfSvcEntry

// Table is the agent's side of the service tables sm_svc_a and sm_svc_b
// (see sm_services in sockaddr.c): an open-addressed hash table with linear
// probing, kept in memory, whose changes Commit writes to the table the
// programs do not read, swaps it in, and then writes to the other.
type Table struct {
	outer  *ebpf.Map
	bufs   [2]*ebpf.Map
	ids    [2]ebpf.MapID
	active int // bufs[active] is in sm_services; -1: none is yet
	limit  int

	at    map[ServiceKey]uint32 // the slot of each key
	slots map[uint32]Entry      // the occupied slots
	// dirty[i] are the slots bufs[i] has not been written since they
	// changed in memory.
	dirty [2]map[uint32]bool
}

// hashKey is svc_hash of sockaddr.c.
func hashKey(k ServiceKey) uint32 {
	a := uint64(k.Vip.W[0])<<32 | uint64(k.Vip.W[1])
	b := uint64(k.Vip.W[2])<<32 | uint64(k.Vip.W[3])
	c := uint64(k.Port)<<8 | uint64(k.Proto)
	x := a*0x9E3779B97F4A7C15 ^ b*0xC2B2AE3D27D4EB4F ^ c*0x165667B19E3779F9
	x ^= x >> 29
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 32
	return uint32(x)
}

func home(k ServiceKey) uint32 { return hashKey(k) & (TableSlots - 1) }

// HomeSlot is the slot of a service table where a lookup of k starts:
// services with the same home slot share a run of slots.
func HomeSlot(k ServiceKey) uint32 { return home(k) }

// dist is how many slots after k's home slot s is.
func dist(k ServiceKey, s uint32) uint32 { return (s - home(k)) & (TableSlots - 1) }

// OpenTable adopts the tables of objs: it takes the services of the table
// sm_services holds, if any, where they are, and marks what the spare
// table lacks (a stopped agent may have left it half written), for the
// next Commit to repair. limit caps the number of services (0:
// MaxServices).
func OpenTable(objs *Objects, limit int) (*Table, error) {
	if limit <= 0 {
		limit = MaxServices
	}
	if limit > MaxServices {
		return nil, fmt.Errorf("service table: at most %d services, not %d", MaxServices, limit)
	}
	t := &Table{
		outer: objs.SmServices, bufs: [2]*ebpf.Map{objs.SmSvcA, objs.SmSvcB}, active: -1, limit: limit,
		at: map[ServiceKey]uint32{}, slots: map[uint32]Entry{},
		dirty: [2]map[uint32]bool{{}, {}},
	}
	for i, m := range t.bufs {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("service table: %w", err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, errors.New("service table: kernel reports no map IDs")
		}
		t.ids[i] = id
	}
	var err error
	if t.active, err = t.inUse(); err != nil {
		return nil, err
	}
	var contents [2][]Entry
	for i, m := range t.bufs {
		var err error
		if contents[i], err = readTable(m); err != nil {
			return nil, err
		}
	}
	if t.active >= 0 {
		if err := t.adopt(contents[t.active]); err != nil {
			return nil, err
		}
	}
	// What each table must be told: where it differs from the layout.
	for i := range t.bufs {
		t.dirty[i] = map[uint32]bool{}
		for s, e := range contents[i] {
			if want := t.slots[uint32(s)]; e != want {
				t.dirty[i][uint32(s)] = true
			}
		}
	}
	return t, nil
}

// adopt takes the layout of the table in use as it is, so a restart writes
// nothing. If an entry is one a lookup could not reach, or a second one of
// its key (which this code never writes), all are laid out again. The
// limit does not apply: a lower --max-services takes effect as services
// are added.
func (t *Table) adopt(entries []Entry) error {
	ok := true
	for s, e := range entries {
		if e.Key.Proto == 0 {
			continue
		}
		if _, dup := t.at[e.Key]; dup {
			ok = false
			continue
		}
		t.slots[uint32(s)], t.at[e.Key] = e, uint32(s)
	}
	for s, e := range t.slots {
		ok = ok && t.reachable(e.Key, s)
	}
	if ok {
		return nil
	}
	clear(t.slots)
	clear(t.at)
	for _, e := range entries {
		if e.Key.Proto == 0 {
			continue
		}
		if err := t.set(e.Key, e.Val, false); err != nil {
			return fmt.Errorf("service table: adopt %v: %w", e.Key, err)
		}
	}
	return nil
}

// reachable reports whether a lookup of k finds slot s: s is within
// TableProbes of k's home and no free slot lies between.
func (t *Table) reachable(k ServiceKey, s uint32) bool {
	d := dist(k, s)
	if d >= TableProbes {
		return false
	}
	for i := range d {
		if _, taken := t.slots[(home(k)+i)&(TableSlots-1)]; !taken {
			return false
		}
	}
	return true
}

// inUse says which of bufs sm_services holds, as the kernel has it: -1
// for none, or for a table that is not one of them (tables of another
// layout that pins.Migrate replaced), which the next Commit swaps out.
func (t *Table) inUse() (int, error) {
	var cur uint32
	if err := t.outer.Lookup(uint32(0), &cur); errors.Is(err, ebpf.ErrKeyNotExist) {
		return -1, nil
	} else if err != nil {
		return 0, fmt.Errorf("service table: read sm_services: %w", err)
	}
	return slices.Index(t.ids[:], ebpf.MapID(cur)), nil
}

// readTable reads every slot of a table.
func readTable(m *ebpf.Map) ([]Entry, error) {
	out := make([]Entry, 0, TableSlots)
	keys, vals := make([]uint32, 4096), make([]Entry, 4096)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		out = append(out, vals[:n]...)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("service table: read: %w", err)
		}
	}
	if len(out) != TableSlots {
		return nil, fmt.Errorf("service table: read %d slots, want %d", len(out), TableSlots)
	}
	return out, nil
}

// Len is the number of services.
func (t *Table) Len() int { return len(t.at) }

// All returns every service and its value.
func (t *Table) All() map[ServiceKey]ServiceValue {
	out := make(map[ServiceKey]ServiceValue, len(t.at))
	for k, s := range t.at {
		out[k] = t.slots[s].Val
	}
	return out
}

func (t *Table) put(s uint32, e Entry) {
	if e.Key.Proto == 0 {
		delete(t.slots, s)
	} else {
		t.slots[s] = e
		t.at[e.Key] = s
	}
	t.dirty[0][s], t.dirty[1][s] = true, true
}

// Set adds k or changes its value, in memory until Commit.
func (t *Table) Set(k ServiceKey, v ServiceValue) error { return t.set(k, v, true) }

func (t *Table) set(k ServiceKey, v ServiceValue, limited bool) error {
	if k.Proto == 0 {
		return fmt.Errorf("service key %v: protocol 0 marks a free slot", k)
	}
	if s, ok := t.at[k]; ok {
		t.put(s, Entry{Key: k, Val: v})
		return nil
	}
	if limited && len(t.at) >= t.limit {
		return fmt.Errorf("%w: %d services", ErrTableFull, t.limit)
	}
	h := home(k)
	for i := range uint32(TableProbes) {
		s := (h + i) & (TableSlots - 1)
		if _, taken := t.slots[s]; !taken {
			t.put(s, Entry{Key: k, Val: v})
			return nil
		}
	}
	return fmt.Errorf("%w: the %d slots from %d are taken", ErrTableFull, TableProbes, h)
}

// Delete removes k, in memory until Commit. The entries after it in its
// run move back into the hole where their probe sequence allows, so no run
// has a hole a lookup would stop at.
func (t *Table) Delete(k ServiceKey) {
	hole, ok := t.at[k]
	if !ok {
		return
	}
	delete(t.at, k)
	t.put(hole, Entry{})
	for s := (hole + 1) & (TableSlots - 1); ; s = (s + 1) & (TableSlots - 1) {
		e, taken := t.slots[s]
		if !taken {
			return
		}
		// e may fill the hole if the hole lies between its home and s.
		if dist(e.Key, hole) < dist(e.Key, s) {
			t.put(hole, e)
			t.put(s, Entry{})
			hole = s
		}
	}
}

// Pending reports whether memory holds changes not yet committed.
func (t *Table) Pending() bool { return len(t.dirty[0]) > 0 || len(t.dirty[1]) > 0 || t.active < 0 }

// Commit writes the changes to the table the programs do not read, swaps
// it in (which returns after an RCU grace period: no program reads the
// other table any more), and writes them to the other table too.
func (t *Table) Commit() error {
	if !t.Pending() {
		return nil
	}
	spare := 0
	if t.active == 0 {
		spare = 1
	}
	if err := t.write(spare); err != nil {
		return err
	}
	if err := t.outer.Put(uint32(0), t.bufs[spare]); err != nil {
		return fmt.Errorf("service table: swap in: %w", err)
	}
	t.active = spare
	return t.write(1 - spare)
}

// write writes the dirty slots of bufs[i], which no program reads.
func (t *Table) write(i int) error {
	if len(t.dirty[i]) == 0 {
		return nil
	}
	keys := slices.Sorted(maps.Keys(t.dirty[i]))
	vals := make([]Entry, len(keys))
	for j, s := range keys {
		vals[j] = t.slots[s]
	}
	if _, err := t.bufs[i].BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("service table: write %d slots: %w", len(keys), err)
	}
	clear(t.dirty[i])
	return nil
}

// Installed reads back the table the programs read now: every service in
// it and its value (nil before the first Commit).
func (t *Table) Installed() (map[ServiceKey]ServiceValue, error) {
	i, err := t.inUse()
	if err != nil || i < 0 {
		return nil, err
	}
	entries, err := readTable(t.bufs[i])
	if err != nil {
		return nil, err
	}
	out := map[ServiceKey]ServiceValue{}
	for _, e := range entries {
		if e.Key.Proto != 0 {
			out[e.Key] = e.Val
		}
	}
	return out, nil
}
