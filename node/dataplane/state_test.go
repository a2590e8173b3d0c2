package dataplane

import (
	"net/netip"
	"testing"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
)

func count(slots []sockaddr.Backend) map[netip.Addr]int {
	m := map[netip.Addr]int{}
	for _, s := range slots {
		m[sockaddr.AddrFrom(s.Addr.W)]++
	}
	return m
}

func be(addr string, w uint32) Backend {
	return Backend{Addr: netip.MustParseAddr(addr), Port: 80, Weight: w}
}

func TestSlotsFollowWeights(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	for _, tc := range []struct {
		name  string
		in    []Backend
		want  map[netip.Addr]int
		total int
	}{
		{"equal", []Backend{be("10.0.0.1", 1), be("10.0.0.2", 1)}, map[netip.Addr]int{a: 1, b: 1}, 2},
		{"gcd", []Backend{be("10.0.0.1", 20), be("10.0.0.2", 60)}, map[netip.Addr]int{a: 1, b: 3}, 4},
		{"zero weight counts as 1", []Backend{be("10.0.0.1", 0), be("10.0.0.2", 2)}, map[netip.Addr]int{a: 1, b: 2}, 3},
		{"scaled", []Backend{be("10.0.0.1", 1), be("10.0.0.2", 999), be("10.0.0.3", 1000)}, map[netip.Addr]int{a: 1, b: 511, c: 512}, 1024},
		{"empty", nil, map[netip.Addr]int{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slots, err := Slots(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if len(slots) != tc.total {
				t.Fatalf("%d slots, want %d", len(slots), tc.total)
			}
			got := count(slots)
			for addr, n := range tc.want {
				if got[addr] != n {
					t.Errorf("%s: %d slots, want %d (all: %v)", addr, got[addr], n, got)
				}
			}
		})
	}
}

func TestSlotsOrderIsStable(t *testing.T) {
	x, _ := Slots([]Backend{be("10.0.0.2", 1), be("10.0.0.1", 2)})
	y, _ := Slots([]Backend{be("10.0.0.1", 2), be("10.0.0.2", 1)})
	if len(x) != len(y) {
		t.Fatal("lengths differ")
	}
	for i := range x {
		if x[i] != y[i] {
			t.Fatal("same backends in another order give another table: every update would rewrite it")
		}
	}
}

func TestSlotsTooManyBackends(t *testing.T) {
	bs := make([]Backend, sockaddr.MaxSlots+1)
	for i := range bs {
		bs[i] = Backend{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Port: 1, Weight: 1}
	}
	if _, err := Slots(bs); err == nil {
		t.Fatal("no error for more backends than slots")
	}
}
