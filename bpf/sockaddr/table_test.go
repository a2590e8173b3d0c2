package sockaddr

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/sockmesh/sockmesh/internal/testutil"
)

// memTable is a Table with no maps behind it: Set and Delete only.
func memTable(limit int) *Table {
	return &Table{active: -1, limit: limit, at: map[ServiceKey]uint32{}, slots: map[uint32]Entry{},
		dirty: [2]map[uint32]bool{{}, {}}}
}

// find looks k up the way find_service in sockaddr.c does.
func (t *Table) find(k ServiceKey) (ServiceValue, bool) {
	h := hashKey(k)
	for i := range uint32(TableProbes) {
		e, ok := t.slots[(h+i)&(TableSlots-1)]
		if !ok {
			return ServiceValue{}, false
		}
		if e.Key == k {
			return e.Val, true
		}
	}
	return ServiceValue{}, false
}

func key(i int) ServiceKey {
	return NewServiceKey(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 80, ProtoTCP)
}

// colliding returns n keys with the same home slot.
func colliding(n int) []ServiceKey {
	var out []ServiceKey
	want := home(key(0))
	for i := 0; len(out) < n; i++ {
		if k := key(i); home(k) == want && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

// TestTableLayout applies random sets and deletes, many to keys that share
// a home slot, and checks after each that a lookup as the programs do it
// finds exactly the services that should be there.
func TestTableLayout(t *testing.T) {
	tab := memTable(MaxServices)
	keys := colliding(6)
	for i := range 300 {
		keys = append(keys, key(i))
	}
	want := map[ServiceKey]ServiceValue{}
	rng := rand.New(rand.NewPCG(1, 2))
	for op := range 5000 {
		k := keys[rng.IntN(len(keys))]
		if rng.IntN(3) == 0 {
			tab.Delete(k)
			delete(want, k)
		} else {
			v := ServiceValue{Rev: uint32(op + 1), Slots: 1}
			if err := tab.Set(k, v); err != nil {
				t.Fatalf("op %d: set: %v", op, err)
			}
			want[k] = v
		}
		if tab.Len() != len(want) || len(tab.slots) != len(want) {
			t.Fatalf("op %d: %d keys, %d slots taken, want %d", op, tab.Len(), len(tab.slots), len(want))
		}
		for _, k := range keys {
			got, ok := tab.find(k)
			if w, in := want[k]; ok != in || got != w {
				t.Fatalf("op %d: lookup of %v: %v %v, want %v %v", op, k, got, ok, w, in)
			}
		}
	}
}

func TestTableRefusesPastLimitAndProbes(t *testing.T) {
	tab := memTable(3)
	for i := range 3 {
		if err := tab.Set(key(i), ServiceValue{Slots: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tab.Set(key(3), ServiceValue{}); !errors.Is(err, ErrTableFull) {
		t.Fatalf("fourth service of three: %v", err)
	}
	// Changing one that is there is not adding one.
	if err := tab.Set(key(0), ServiceValue{Rev: 2}); err != nil {
		t.Fatal(err)
	}
	tab = memTable(MaxServices)
	keys := colliding(TableProbes + 1)
	for _, k := range keys[:TableProbes] {
		if err := tab.Set(k, ServiceValue{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tab.Set(keys[TableProbes], ServiceValue{}); !errors.Is(err, ErrTableFull) {
		t.Fatalf("a run longer than %d slots: %v", TableProbes, err)
	}
	if err := tab.Set(ServiceKey{}, ServiceValue{}); err == nil {
		t.Fatal("a key of protocol 0 was taken")
	}
}

// TestTableCommitAndAdopt writes tables to the kernel, swaps them and reads
// them back, as a restarted agent does.
func TestTableCommitAndAdopt(t *testing.T) {
	testutil.Privileged(t)
	objs, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	tab, err := OpenTable(objs, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tab.Installed(); err != nil || got != nil {
		t.Fatalf("before the first commit: %v, %v; want no table", got, err)
	}
	keys := colliding(4)
	for i, k := range keys {
		if err := tab.Set(k, ServiceValue{Rev: uint32(i + 1), Slots: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		if err := tab.Set(key(1000+i), ServiceValue{Rev: 7, Slots: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		if err := tab.Commit(); err != nil {
			t.Fatal(err)
		}
		if tab.Pending() {
			t.Fatalf("round %d: changes left after commit", round)
		}
		// Both tables hold the layout: the one in use, and the spare.
		for i, m := range tab.bufs {
			entries, err := readTable(m)
			if err != nil {
				t.Fatal(err)
			}
			for s, e := range entries {
				if e != tab.slots[uint32(s)] {
					t.Fatalf("round %d: table %d slot %d: %+v, want %+v", round, i, s, e, tab.slots[uint32(s)])
				}
			}
		}
		again, err := OpenTable(objs, 0)
		if err != nil {
			t.Fatal(err)
		}
		if again.active != tab.active || again.Pending() || again.Len() != tab.Len() {
			t.Fatalf("round %d: adopted table %d (pending %v, %d services), want %d (%d)", round, again.active, again.Pending(), again.Len(), tab.active, tab.Len())
		}
		installed, err := tab.Installed()
		if err != nil || len(installed) != tab.Len() {
			t.Fatalf("round %d: %d services installed (%v), want %d", round, len(installed), err, tab.Len())
		}
		// The next round deletes the head of the colliding run, so the
		// others move back.
		tab.Delete(keys[round])
	}
	if err := tab.Commit(); err != nil {
		t.Fatal(err)
	}
	// A lower limit than the table holds does not stop a restart.
	if low, err := OpenTable(objs, 2); err != nil || low.Len() != tab.Len() {
		t.Fatalf("adopting %d services under a limit of 2: %v", tab.Len(), err)
	}
	// An entry a lookup cannot reach (far from its home, after a free
	// slot) makes the adopter lay the table out again, so it is found.
	stray := key(5000)
	far := (home(stray) + TableProbes + 3) & (TableSlots - 1)
	if _, taken := tab.slots[far]; taken {
		t.Fatal("test setup: slot taken")
	}
	if err := tab.bufs[tab.active].Put(far, Entry{Key: stray, Val: ServiceValue{Rev: 99, Slots: 1}}); err != nil {
		t.Fatal(err)
	}
	fixed, err := OpenTable(objs, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := fixed.find(stray); !ok || v.Rev != 99 || !fixed.Pending() || fixed.Len() != tab.Len()+1 {
		t.Fatalf("stray entry after adoption: %v %v (pending %v, %d services)", v, ok, fixed.Pending(), fixed.Len())
	}
	if err := fixed.Commit(); err != nil {
		t.Fatal(err)
	}
	installed, err := fixed.Installed()
	if err != nil || installed[stray].Rev != 99 {
		t.Fatalf("after repair: %v, %v", installed[stray], err)
	}
}

// TestTableSizeMatchesProgram: TableSlots and the entry layout are written
// twice, in sockaddr.c and here; the compiled maps must agree with them.
func TestTableSizeMatchesProgram(t *testing.T) {
	spec, err := Spec()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sm_svc_a", "sm_svc_b"} {
		m := spec.Maps[name]
		if m.MaxEntries != TableSlots || m.ValueSize != uint32(binary.Size(Entry{})) {
			t.Errorf("%s: %d slots of %d bytes, Go has %d of %d", name, m.MaxEntries, m.ValueSize, TableSlots, binary.Size(Entry{}))
		}
	}
	if inner := spec.Maps[MapServices].InnerMap; inner == nil || inner.MaxEntries != TableSlots {
		t.Errorf("sm_services' inner template: %+v, want %d slots", inner, TableSlots)
	}
}
