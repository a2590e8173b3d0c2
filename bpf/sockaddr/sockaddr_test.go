package sockaddr

import (
	"net/netip"
	"testing"

	"github.com/sockmesh/sockmesh/internal/testutil"
)

func TestAddressEncoding(t *testing.T) {
	for _, s := range []string{"10.96.0.10", "fd00::10", "::ffff:10.0.0.1"} {
		a := netip.MustParseAddr(s)
		if got := AddrFrom(Addr(a)); got != a.Unmap() {
			t.Errorf("%s round-trips to %s", a, got)
		}
	}
	// IPv4 is stored v4-mapped, in network byte order: the last word's
	// bytes are the address's bytes.
	w := Addr(netip.MustParseAddr("10.1.2.3"))
	b := [4]byte{byte(w[3]), byte(w[3] >> 8), byte(w[3] >> 16), byte(w[3] >> 24)}
	if b != [4]byte{10, 1, 2, 3} || w[0] != 0 || w[1] != 0 {
		t.Errorf("10.1.2.3 encoded as %#x", w)
	}
	if p := Port(80); PortFrom(p) != 80 || byte(p) != 0 || byte(p>>8) != 80 {
		t.Errorf("port 80 encoded as %#x", p)
	}
}

func TestStatsCoverEveryCounter(t *testing.T) {
	if n := len(statFields(&Stats{})); n != int(bpfStatSTAT_MAX) {
		t.Fatalf("Stats reads %d counters, the program has %d", n, bpfStatSTAT_MAX)
	}
	if n := len((Stats{}).Events()); n != int(bpfStatSTAT_MAX) {
		t.Fatalf("Events names %d counters, the program has %d", n, bpfStatSTAT_MAX)
	}
}

// TestLoad loads every program through the kernel verifier.
func TestLoad(t *testing.T) {
	testutil.Privileged(t)
	objs, err := Load(LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	for _, a := range Attachments(objs) {
		if a.Program == nil {
			t.Errorf("%s not loaded", a.Name)
		}
	}
}
