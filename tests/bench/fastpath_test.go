package bench

import (
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/dataplane"
)

// BenchmarkSpliceWatch measures what the fast path's splice watch (a raw
// tracepoint on sys_enter, so on every system call of the node) costs a
// system call that is not splice: getppid in a loop, with the fast path
// loaded vs not, interleaved rounds, medians.
func BenchmarkSpliceWatch(b *testing.B) {
	testutil.Privileged(b)
	cg := testutil.Cgroup(b)
	const calls, rounds = 2_000_000, 7
	perCall := func() float64 {
		start := time.Now()
		for range calls {
			syscall.Getppid()
		}
		return float64(time.Since(start).Nanoseconds()) / calls
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var off, on []float64
	for range rounds {
		off = append(off, perCall())
		pin := filepath.Join(b.TempDir(), "bpf")
		fp, err := dataplane.OpenFastPath(dataplane.Config{PinDir: pin, Cgroup: cg}, log)
		if err != nil {
			b.Fatal(err)
		}
		on = append(on, perCall())
		fp.Close()
		if err := dataplane.Cleanup(pin); err != nil {
			b.Fatal(err)
		}
	}
	mOff, mOn := median(slices.Clone(off)), median(slices.Clone(on))
	b.ReportMetric(mOff, "ns/syscall-off")
	b.ReportMetric(mOn, "ns/syscall-on")
	b.ReportMetric(mOn/mOff, "ratio")
	b.Logf("getppid: %.1f ns without the fast path, %.1f ns with it (%.2fx); rounds off %v on %v", mOff, mOn, mOn/mOff, off, on)
}
