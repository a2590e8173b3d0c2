package telemetry

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/sockmesh/sockmesh/bpf/l7"
	"github.com/sockmesh/sockmesh/node/telemetry/gobin"
)

// Request is one finished HTTP request seen by the probes.
type Request struct {
	PID      uint32
	Method   string
	Path     string
	Status   int
	Bytes    uint64
	ReqBytes uint64 // the request's Content-Length (0 when chunked)
	Duration time.Duration
}

// Functions the HTTP server probes sit in.
const (
	fnServeHTTP     = "net/http.serverHandler.ServeHTTP"
	fnFinishRequest = "net/http.(*response).finishRequest"
)

// HTTPTracer probes one Go executable's net/http server.
type HTTPTracer struct {
	objs   *l7.Objects
	links  []link.Link
	reader *ringbuf.Reader
}

// TraceHTTP attaches the server probes to the executable at path (for
// every process running it when pid is 0, else for that process only).
// Both probes sit on emulated instructions near the functions' entries.
// Requests are always aggregated in the kernel (Stats); events adds one
// ring-buffer event per request (Read), for access logs and tests.
func TraceHTTP(path string, pid int, events bool) (_ *HTTPTracer, err error) {
	bin, err := gobin.Open(path)
	if err != nil {
		return nil, err
	}
	defer bin.Close()
	off, _, err := bin.Offsets()
	if err != nil {
		return nil, err
	}
	objs, err := l7.Load(l7.Offsets(off), events)
	if err != nil {
		return nil, err
	}
	t := &HTTPTracer{objs: objs}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, err
	}
	for fn, prog := range map[string]*ebpf.Program{fnServeHTTP: objs.SmHttpServe, fnFinishRequest: objs.SmHttpFinish} {
		f, err := bin.Func(fn)
		if err != nil {
			return nil, err
		}
		at, err := bin.EntryProbe(f)
		if err != nil {
			return nil, err
		}
		l, err := ex.Uprobe(fn, prog, &link.UprobeOptions{Address: at, PID: pid})
		if err != nil {
			return nil, fmt.Errorf("uprobe %s at %#x: %w", fn, at, err)
		}
		t.links = append(t.links, l)
	}
	if events {
		if t.reader, err = ringbuf.NewReader(objs.SmHttpEvents); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Totals are aggregated requests of one status code: counts and
// non-cumulative bucket counts (bounds in l7.DurationBoundsMs and
// l7.BytesBounds).
type Totals struct {
	Count           uint64
	DurationSumNs   uint64
	DurationBuckets [19]uint64
	BytesSum        uint64
	BytesBuckets    [9]uint64
	ReqBytesSum     uint64
	ReqBytesBuckets [9]uint64
}

func (t *Totals) add(o Totals) {
	t.Count += o.Count
	t.DurationSumNs += o.DurationSumNs
	t.BytesSum += o.BytesSum
	t.ReqBytesSum += o.ReqBytesSum
	for i := range t.DurationBuckets {
		t.DurationBuckets[i] += o.DurationBuckets[i]
	}
	for i := range t.BytesBuckets {
		t.BytesBuckets[i] += o.BytesBuckets[i]
		t.ReqBytesBuckets[i] += o.ReqBytesBuckets[i]
	}
}

// RunTime is the time the tracer's BPF programs ran and how many times,
// from the kernel's BPF statistics (zero unless they are enabled:
// ebpf.EnableStats). The uprobes' own cost (the trap, the emulated
// instruction) is not in it.
func (t *HTTPTracer) RunTime() (time.Duration, uint64, error) {
	var d time.Duration
	var n uint64
	for _, p := range []*ebpf.Program{t.objs.SmHttpServe, t.objs.SmHttpFinish} {
		st, err := p.Stats()
		if err != nil {
			return 0, 0, err
		}
		d += st.Runtime
		n += st.RunCount
	}
	return d, n, nil
}

// Stats reads the in-kernel aggregates, by status code, summed over CPUs.
func (t *HTTPTracer) Stats() (map[int]Totals, error) {
	out := map[int]Totals{}
	var k l7.HTTPStatsKey
	var per []l7.HTTPStats
	it := t.objs.SmHttpStats.Iterate()
	for it.Next(&k, &per) {
		tot := out[int(k.Status)]
		for _, s := range per {
			tot.add(Totals{Count: s.Count, DurationSumNs: s.DurationSumNs, DurationBuckets: s.DurationBuckets, BytesSum: s.BytesSum, BytesBuckets: s.BytesBuckets,
				ReqBytesSum: s.ReqBytesSum, ReqBytesBuckets: s.ReqBytesBuckets})
		}
		out[int(k.Status)] = tot
	}
	return out, it.Err()
}

// Read returns the requests that finished since the last call, waiting up
// to wait for the first one. The programs never wake the reader (batched
// wake-ups are most of the probes' cost), so it polls.
func (t *HTTPTracer) Read(wait time.Duration) ([]Request, error) {
	var out []Request
	if t.reader == nil {
		return nil, errors.New("telemetry: tracer made without events")
	}
	deadline := time.Now().Add(wait)
	for {
		// Poll in 10 ms steps (no wake-ups come); with no wait, do not
		// wait at all: return what is there.
		next := time.Now().Add(10 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		t.reader.SetDeadline(next)
		rec, err := t.reader.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if len(out) > 0 || time.Now().After(deadline) {
				return out, nil
			}
			continue
		}
		if err != nil {
			return out, err
		}
		var e l7.HTTPEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
			return out, fmt.Errorf("decode event: %w", err)
		}
		out = append(out, Request{PID: e.Pid, Method: l7.CString(e.Method[:]), Path: l7.CString(e.Path[:]),
			Status: int(e.Status), Bytes: e.Bytes, ReqBytes: e.ReqBytes, Duration: time.Duration(e.DurationNs)})
	}
}

// Drops returns how many events the ring buffer had no room for.
func (t *HTTPTracer) Drops() (uint64, error) {
	var per []uint64
	if err := t.objs.SmHttpDrops.Lookup(uint32(0), &per); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Close detaches the probes and frees the maps.
func (t *HTTPTracer) Close() error {
	if t.reader != nil {
		t.reader.Close()
	}
	for _, l := range t.links {
		l.Close()
	}
	return t.objs.Close()
}
