package dataplane

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/host"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func open(t *testing.T, cfg Config) *Dataplane {
	t.Helper()
	d, err := Open(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testConfig(t *testing.T) Config {
	t.Helper()
	testutil.Privileged(t)
	cfg := Config{PinDir: filepath.Join(t.TempDir(), "bpf"), Cgroup: testutil.Cgroup(t)}
	t.Cleanup(func() {
		if err := Cleanup(cfg.PinDir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return cfg
}

func svc(vip string, port uint16, backends ...string) Service {
	s := Service{VIP: netip.MustParseAddr(vip), Port: port, Proto: sockaddr.ProtoTCP, Name: vip}
	for _, b := range backends {
		s.Backends = append(s.Backends, Backend{Addr: netip.MustParseAddr(b), Port: 8080, Weight: 1})
	}
	return s
}

func TestFullMapIsAnErrorAndKeepsTheRest(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxServices = 4
	d := open(t, cfg)
	defer d.Close()
	// Five backends each: a table in sm_slots, not in the entry.
	var want []Service
	for i := range 5 {
		want = append(want, svc(netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)}).String(), 80, backends(5)...))
	}
	err := d.Sync(want)
	if !errors.Is(err, sockaddr.ErrTableFull) {
		t.Fatalf("syncing 5 services into a table of 4: %v", err)
	}
	dump, err := d.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(dump.Services) != 4 || dump.SyncErrors != 1 {
		t.Fatalf("%d services in the table, %d sync errors; want 4 and 1", len(dump.Services), dump.SyncErrors)
	}
	// No slot of the failed service is left behind.
	var n int
	var k sockaddr.SlotKey
	var b sockaddr.Backend
	for it := d.objs.SmSlots.Iterate(); it.Next(&k, &b); {
		n++
	}
	if n != 4*5 {
		t.Fatalf("%d slots, want 20", n)
	}
}

// backends returns n backend addresses, 10.0.0.1 onwards.
func backends(n int) []string {
	var out []string
	for i := range n {
		out = append(out, netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}).String())
	}
	return out
}

// slotsIn counts the entries of sm_slots.
func slotsIn(t *testing.T, d *Dataplane) int {
	t.Helper()
	var n int
	var k sockaddr.SlotKey
	var v sockaddr.Backend
	it := d.objs.SmSlots.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAdoptAndDiff(t *testing.T) {
	cfg := testConfig(t)
	d := open(t, cfg)
	// a's table (6 slots) is in sm_slots, b's (2) in its entry.
	a := svc("10.96.0.1", 80, backends(6)...)
	b := svc("10.96.0.2", 80, "10.0.0.3", "10.0.0.4")
	if err := d.Sync([]Service{a, b}); err != nil {
		t.Fatal(err)
	}
	revA, revB := d.current[a.key()].rev, d.current[b.key()].rev
	d.Close()

	// A new instance adopts: same desired state, nothing rewritten.
	d2 := open(t, cfg)
	defer d2.Close()
	if len(d2.current) != 2 {
		t.Fatalf("adopted %d services", len(d2.current))
	}
	if err := d2.Sync([]Service{a, b}); err != nil {
		t.Fatal(err)
	}
	if d2.current[a.key()].rev != revA || d2.current[b.key()].rev != revB {
		t.Fatal("an unchanged service was rewritten after adoption")
	}
	dump, _ := d2.Dump()
	if len(dump.Services) != 2 || len(dump.Services[0].Backends) != 6 || len(dump.Services[1].Backends) != 2 {
		t.Fatalf("adopted: %+v", dump.Services)
	}
	// A change writes a new revision and removes the old one's slots.
	a.Backends = a.Backends[:5]
	if err := d2.Sync([]Service{a, b}); err != nil {
		t.Fatal(err)
	}
	dump, _ = d2.Dump()
	if len(dump.Services[0].Backends) != 5 || dump.Services[0].Revision == revA {
		t.Fatalf("after change: %+v", dump.Services)
	}
	if n := slotsIn(t, d2); n != 5 {
		t.Fatalf("%d slots left, want 5", n)
	}
	// From a table to an entry and back; b goes.
	for _, n := range []int{1, 5} {
		a.Backends = a.Backends[:n]
		if err := d2.Sync([]Service{a}); err != nil {
			t.Fatal(err)
		}
		dump, _ = d2.Dump()
		if len(dump.Services) != 1 || len(dump.Services[0].Backends) != n || dump.Services[0].Slots != n {
			t.Fatalf("%d backends: %+v", n, dump.Services)
		}
		want := n
		if sockaddr.InlineTable(n) {
			want = 0
		}
		if got := slotsIn(t, d2); got != want {
			t.Fatalf("%d backends: %d slots in sm_slots, want %d", n, got, want)
		}
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	testutil.Privileged(t)
	cfg := Config{PinDir: filepath.Join(t.TempDir(), "bpf"), Cgroup: testutil.Cgroup(t)}
	d := open(t, cfg)
	d.Close()
	if err := Cleanup(cfg.PinDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.PinDir); !os.IsNotExist(err) {
		t.Fatalf("pin dir still there: %v", err)
	}
	if ok, _ := host.IsBPFFS(filepath.Dir(cfg.PinDir)); ok {
		t.Fatal("bpffs still mounted")
	}
	// Nothing attached to the cgroup any more: a second Open attaches anew.
	d = open(t, cfg)
	d.Close()
	if err := Cleanup(cfg.PinDir); err != nil {
		t.Fatal(err)
	}
}

func TestPinDirOfAnotherCgroupIsRefused(t *testing.T) {
	cfg := testConfig(t)
	d := open(t, cfg)
	d.Close()
	other := cfg
	other.Cgroup = testutil.Cgroup(t)
	if _, err := Open(other, quiet); err == nil || !strings.Contains(err.Error(), "another cgroup") {
		t.Fatalf("opening a pin dir attached elsewhere: %v", err)
	}
}

// TestUpgradeFromHashMap: services a release that kept them in a hash map
// pinned are in the table before the new programs are attached, so
// connects keep being translated across the upgrade.
func TestUpgradeFromHashMap(t *testing.T) {
	cfg := testConfig(t)
	if err := cfg.prepare(); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: sockaddr.MapServices, Type: ebpf.Hash, Pinning: ebpf.PinByName, MaxEntries: 16,
		KeySize: uint32(binary.Size(sockaddr.ServiceKey{})), ValueSize: uint32(binary.Size(sockaddr.ServiceValue{})),
	}, ebpf.MapOptions{PinPath: cfg.mapDir()})
	if err != nil {
		t.Fatal(err)
	}
	s := svc("10.96.0.1", 80, "10.0.0.3", "10.0.0.4")
	slots, err := Slots(s.Backends)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Put(s.key(), sockaddr.NewServiceValue(7, slots, 0)); err != nil {
		t.Fatal(err)
	}
	old.Close()

	d := open(t, cfg)
	defer d.Close()
	dump, err := d.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(dump.Services) != 1 || dump.Services[0].Revision != 7 || len(dump.Services[0].Backends) != 2 {
		t.Fatalf("after the upgrade the table holds %+v, want the old release's service", dump.Services)
	}
	// The next sync with the same state rewrites nothing.
	if err := d.Sync([]Service{s}); err != nil || d.current[s.key()].rev != 7 {
		t.Fatalf("sync after upgrade: %v, revision %d", err, d.current[s.key()].rev)
	}
}
