package kernel

import (
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf/pins"
	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/host"
)

// TestPinsMigrate: maps an earlier release pinned in another layout are
// replaced by the new spec's, entries carried over where they fit, and a
// socket map that still holds a socket is left alone (pins.ErrHeld).
func TestPinsMigrate(t *testing.T) {
	testutil.Privileged(t)
	dir := filepath.Join(t.TempDir(), "bpf")
	if _, err := host.EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.ReleaseBPFFS(dir) })
	old := map[string]*ebpf.MapSpec{
		"grown": {Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4},
		"stats": {Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 2},
		"same":  {Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4},
		"socks": {Type: ebpf.SockHash, KeySize: 4, ValueSize: 8, MaxEntries: 4},
	}
	for name, ms := range old {
		ms = ms.Copy()
		ms.Name, ms.Pinning = name, ebpf.PinByName
		m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: dir})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "grown" {
			for k := range uint32(3) {
				m.Put(k, uint64(k)*10)
			}
		}
		if name == "same" {
			m.Put(uint32(1), uint32(1))
		}
		m.Close()
	}
	spec := func(socksKey uint32) *ebpf.CollectionSpec {
		cs := &ebpf.CollectionSpec{Maps: map[string]*ebpf.MapSpec{
			"grown": {Name: "grown", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 8, Pinning: ebpf.PinByName},
			"stats": {Name: "stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 3, Pinning: ebpf.PinByName},
			"same":  {Name: "same", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4, Pinning: ebpf.PinByName},
			"socks": {Name: "socks", Type: ebpf.SockHash, KeySize: socksKey, ValueSize: 8, MaxEntries: 4, Pinning: ebpf.PinByName},
		}}
		return cs
	}

	// A socket in the socket map: a new layout for it must not replace it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	socks, err := ebpf.LoadPinnedMap(filepath.Join(dir, "socks"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := c.(*net.TCPConn).File()
	if err := socks.Put(uint32(1), uint64(f.Fd())); err != nil {
		t.Fatalf("put a socket: %v", err)
	}
	f.Close()
	if _, err := pins.Migrate(spec(8), dir); !errors.Is(err, pins.ErrHeld) {
		t.Fatalf("a socket map in use, another layout: %v, want ErrHeld", err)
	}
	socks.Delete(uint32(1))
	socks.Close()

	done, err := pins.Migrate(spec(8), dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]pins.Migration{}
	for _, m := range done {
		got[m.Map] = m
	}
	if m := got["grown"]; m.Copied != 3 || m.Dropped {
		t.Errorf("grown: %+v, want 3 entries copied", m)
	}
	if m := got["stats"]; !m.Dropped {
		t.Errorf("stats (per-CPU): %+v, want dropped", m)
	}
	if _, ok := got["same"]; ok {
		t.Errorf("a map of the same layout was replaced")
	}
	if _, ok := got["socks"]; !ok {
		t.Errorf("an empty socket map of another layout was not replaced")
	}
	// Now the spec loads against what is pinned.
	for name, ms := range spec(8).Maps {
		m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: dir})
		if err != nil {
			t.Fatalf("%s after migration: %v", name, err)
		}
		if name == "grown" {
			var v uint64
			if err := m.Lookup(uint32(2), &v); err != nil || v != 20 {
				t.Errorf("grown[2] = %d, %v; want 20", v, err)
			}
		}
		m.Close()
	}
	for name := range old {
		syscall.Unlink(filepath.Join(dir, name))
	}
}
