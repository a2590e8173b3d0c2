package telemetry

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/sockmesh/sockmesh/bpf/l7"
	"github.com/sockmesh/sockmesh/node/telemetry/gobin"
)

// Request is one finished request seen by the probes.
type Request struct {
	PID    uint32
	Kind   Kind
	Method string
	Path   string // gRPC: the full method, /package.Service/Method
	Status int    // HTTP status; 0 when a client got no response
	// GRPCStatus is the gRPC status code, -1 when the request is not gRPC.
	GRPCStatus int
	// Peer is the other side: for a server, its client's address; for a
	// client, the host (HTTP) or target (gRPC) it asked for.
	Peer string
	// Bytes is the response body's size: what a server's handler wrote;
	// for a client, what an HTTP/1 body took off the connection (its
	// chunk framing included) or an HTTP/2 stream's DATA (padding
	// aside), else the Content-Length (0 if unknown).
	Bytes uint64
	// ReqBytes is the request body's size: its Content-Length; without
	// one, what an HTTP/2 server took in of it by the handler's end, and
	// 0 otherwise (HTTP/1 chunked, a client's).
	ReqBytes uint64
	Duration time.Duration
	// ProtoMajor is the HTTP version, 1 or 2 (0 when a client got no
	// response).
	ProtoMajor int
}

// Kind says who reported a request and in which protocol.
type Kind uint8

// Kinds of requests.
const (
	HTTPServer Kind = l7.KindHTTPServer
	HTTPClient Kind = l7.KindHTTPClient
	GRPCServer Kind = l7.KindGRPCServer
	GRPCClient Kind = l7.KindGRPCClient
)

// Server reports whether the request was seen at the server (Istio's
// reporter "destination").
func (k Kind) Server() bool { return k == HTTPServer || k == GRPCServer }

// Protocol is Istio's request_protocol.
func (k Kind) Protocol() string {
	if k == GRPCServer || k == GRPCClient {
		return "grpc"
	}
	return "http"
}

func (k Kind) String() string {
	return [...]string{"http-server", "http-client", "grpc-server", "grpc-client"}[k&3]
}

// probe is one uprobe: a function, a program, and whether it goes on the
// function's entry or on each of its RET instructions.
type probe struct {
	fn      string
	prog    string
	returns bool
	// after names a function fn calls that returns (pointer, error): a
	// probe with returns goes only on the RETs a return can reach
	// without the success of that call, and one without on the jump
	// testing its error (gobin.SuccessReturn), emulated where a RET is
	// single-stepped. When that cannot be proven, every RET is probed and
	// the jump is not.
	after string
	// nilTest is after's counterpart for a function that tests its
	// error again before returning it (a retry loop): the success points
	// are the jumps on that test whose success edge goes straight to a
	// return of (response, nil) (gobin.NilReturnTests).
	nilTest bool
	// optional probes are attached when their function is linked; the
	// group works without them.
	optional bool
	// find, if set, finds the function instead of looking fn up by name
	// (fn then describes it): closures are numbered by the compiler.
	find func(*gobin.Binary) (gobin.Func, error)
	// callsIn, if set, puts the probe on the CALLs to fn in the
	// functions whose names start with it, instead of fn's entry: it
	// sees fn called from there only (at least one such call must be
	// found; one inlined is not seen).
	callsIn string
}

// httpServerEnds are where net/http's server requests end, whichever
// way they start.
var httpServerEnds = []probe{
	{fn: "net/http.(*response).finishRequest", prog: "sm_http_finish"},
	{fn: "net/http.(*http2responseWriter).handlerDone", prog: "sm_h2_done", optional: true},
	// A hijacked connection's request never finishes: free its start.
	{fn: "net/http.(*conn).hijackLocked", prog: "sm_http_hijack", optional: true},
}

// groups are the probes that must all attach for one kind of request, of
// one library, to be seen.
var groups = []struct {
	kind   Kind
	name   string
	probes []probe
	// insteadOf names a group this one stands in for where that one
	// cannot be placed; it is not attached where that one is.
	insteadOf string
	// settle, if set, finishes a group's plan once its probes are
	// placed (addrs, by probe): it may drop probes that only work
	// together, and set constants of the programs in off.
	settle func(bin *gobin.Binary, probes []probe, addrs [][]uint64, off map[string]uint64)
}{
	// An HTTP/1 request starts on the CALL of serverHandler.ServeHTTP in
	// (*conn).serve, an HTTP/2 one where its server runs the handler
	// (runHandler), which then calls serverHandler too: one start each.
	{HTTPServer, "net/http server", append([]probe{
		{fn: "net/http.serverHandler.ServeHTTP", prog: "sm_http_serve", callsIn: "net/http.(*conn).serve"},
		// HTTP/2 (TLS or h2c) in the copy net/http bundles (before Go
		// 1.27).
		{fn: "net/http.(*http2serverConn).runHandler", prog: "sm_http_serve", optional: true},
	}, httpServerEnds...), "", nil},
	// Where (*conn).serve has serverHandler.ServeHTTP inlined: its entry
	// starts every request, HTTP/1 and HTTP/2 (in Go 1.27, an HTTP/2 one
	// then starts twice, one hit more).
	{HTTPServer, "net/http server (serverHandler entry)", append([]probe{
		{fn: "net/http.serverHandler.ServeHTTP", prog: "sm_http_serve"},
	}, httpServerEnds...), "net/http server", nil},
	// Go 1.27 and later: HTTP/2 is net/http/internal/http2, which
	// golang.org/x/net's server wraps. Its requests start where it runs
	// the handler (x/net's h2c requests do not pass serverHandler).
	{HTTPServer, "net/http/internal/http2 server", []probe{
		{fn: "net/http/internal/http2.(*serverConn).runHandler", prog: "sm_http_serve"},
		{fn: "net/http/internal/http2.(*responseWriter).handlerDone", prog: "sm_h2i_done"},
	}, "", nil},
	{HTTPServer, "x/net/http2 server", []probe{
		{fn: "golang.org/x/net/http2.(*serverConn).runHandler", prog: "sm_http_serve"},
		{fn: "golang.org/x/net/http2.(*responseWriter).handlerDone", prog: "sm_xh2_done"},
	}, "", nil},
	{HTTPClient, "net/http client", slices.Concat([]probe{
		{fn: "net/http.(*Transport).roundTrip", prog: "sm_http_client_start"},
		{fn: "net/http.(*Transport).roundTrip", prog: "sm_http_client_end", returns: true, after: "net/http.(*persistConn).roundTrip"},
		{fn: "net/http.(*Transport).roundTrip", prog: "sm_http_client_ok", after: "net/http.(*persistConn).roundTrip", optional: true},
		// An HTTP/1 response's body ends its request: the closures
		// readLoop gives it (both or neither; see bodyDelta).
		{fn: "net/http.(*persistConn).readLoop's fn closure", prog: "sm_http_body_end", optional: true,
			find: func(b *gobin.Binary) (gobin.Func, error) { fn, _, err := readLoopClosures(b); return fn, err }},
		{fn: "net/http.(*persistConn).readLoop's earlyCloseFn closure", prog: "sm_http_body_end", optional: true,
			find: func(b *gobin.Binary) (gobin.Func, error) { _, early, err := readLoopClosures(b); return early, err }},
	},
		// An HTTP/2 response's stream ends its request, in the copy
		// net/http bundles (before Go 1.27) or its internal package.
		h2StreamEnds("net/http", "http2", "h2c"), h2StreamEnds("net/http/internal/http2", "", "h2c"),
	), "", func(bin *gobin.Binary, probes []probe, addrs [][]uint64, off map[string]uint64) {
		bodyDelta(bin, probes, addrs, off)
		bothOrNeither(probes, addrs, off, l7.H2ClientEnds, "sm_h2c_end", "sm_h2c_abort")
	}},
	// x/net's HTTP/2 transport used on its own (h2c clients); under a
	// net/http Transport the inner call is the one counted, once. Its
	// retry loop, roundTripViaPool, tests the error again before it
	// returns: the jump on that test (emulated) ends a success, its RETs
	// reachable otherwise end errors. A request refused before the loop
	// (a scheme it may not use) opens no connection and is not seen, as
	// a sidecar would not see it either.
	{HTTPClient, "x/net/http2 client", append([]probe{
		{fn: "golang.org/x/net/http2.(*Transport).roundTripViaPool", prog: "sm_http_client_start"},
		{fn: "golang.org/x/net/http2.(*Transport).roundTripViaPool", prog: "sm_http_client_end", returns: true, nilTest: true},
		{fn: "golang.org/x/net/http2.(*Transport).roundTripViaPool", prog: "sm_http_client_ok", nilTest: true, optional: true},
	}, xh2StreamEnds...), "", settleXH2},
	// Where roundTripViaPool is not there (older x/net loops in
	// RoundTripOpt; the tests build with v0.60): the RETs of RoundTrip,
	// which the kernel single-steps.
	{HTTPClient, "x/net/http2 client (returns)", append([]probe{
		{fn: "golang.org/x/net/http2.(*Transport).RoundTrip", prog: "sm_http_client_start"},
		{fn: "golang.org/x/net/http2.(*Transport).RoundTrip", prog: "sm_http_client_end", returns: true},
	}, xh2StreamEnds...), "x/net/http2 client", settleXH2},
	{GRPCServer, "grpc server", []probe{
		{fn: "google.golang.org/grpc.(*Server).handleStream", prog: "sm_grpc_serve"},
		{fn: "google.golang.org/grpc/internal/transport.(*http2Server).writeStatus", prog: "sm_grpc_serve_end"},
		// Message sizes: each message read (either side) and written.
		{fn: "google.golang.org/grpc/internal/transport.(*Stream).read", prog: "sm_grpc_read"},
		{fn: "google.golang.org/grpc/internal/transport.(*http2Server).write", prog: "sm_grpc_srv_write"},
	}, "", nil},
	// Unary calls (Invoke makes a stream too) and streaming calls, seen
	// from function entries and one CALL, none on a RET (how:
	// bpf/l7/http.c).
	{GRPCClient, "grpc client", []probe{
		{fn: "google.golang.org/grpc.newClientStream", prog: "sm_grpc_call"},
		{fn: "google.golang.org/grpc.(*clientStream).newAttemptLocked", prog: "sm_grpc_attempt"},
		// Only where newClientStream's deferred cleanup calls it: a
		// failed start. finish calls it too, for any stream, on any
		// goroutine (whose own start, of another call, is not this
		// one's).
		{fn: "google.golang.org/grpc.endOfClientStream", prog: "sm_grpc_call_failed", callsIn: "google.golang.org/grpc.newClientStream.func"},
		{fn: "google.golang.org/grpc.(*clientStream).finish", prog: "sm_grpc_call_end"},
		{fn: "google.golang.org/grpc/internal/transport.(*Stream).read", prog: "sm_grpc_read"},
		{fn: "google.golang.org/grpc/internal/transport.(*http2Client).write", prog: "sm_grpc_cli_write"},
	}, "", nil},
	// The same where those functions are not there to probe: the RETs of
	// newClientStream, which the kernel single-steps.
	{GRPCClient, "grpc client (returns)", []probe{
		{fn: "google.golang.org/grpc.newClientStream", prog: "sm_grpc_call"},
		{fn: "google.golang.org/grpc.newClientStream", prog: "sm_grpc_call_ret", returns: true},
		{fn: "google.golang.org/grpc.(*clientStream).finish", prog: "sm_grpc_call_end"},
		{fn: "google.golang.org/grpc/internal/transport.(*Stream).read", prog: "sm_grpc_read"},
		{fn: "google.golang.org/grpc/internal/transport.(*http2Client).write", prog: "sm_grpc_cli_write"},
	}, "grpc client", nil},
}

// multiUprobes says whether to attach with uprobe_multi links (tests
// turn it off to cover kernels before 6.6).
var multiUprobes = l7.MultiUprobes

// plan is what reading an executable tells: the offsets, and for each
// kind of request it can see, where the probes go.
type plan struct {
	off    map[string]uint64
	groups []struct {
		group int // index in groups
		addrs [][]uint64
	}
	missing []string // the kinds it cannot see, and why
}

// fileID names an executable's contents: the same file, unchanged.
type fileID struct {
	dev, ino     uint64
	size, mtimeN int64
}

// plans caches plans by file: pods run the same executables again and
// again, and reading one (its DWARF above all) took 350 ms for a 40 MB
// binary here, while the process it was read for may be serving already.
// Executables that are not Go are remembered too. Bounded: emptied when
// full.
var plans = struct {
	sync.Mutex
	m map[fileID]*plan
}{m: map[fileID]*plan{}}

const maxPlans = 512

// fileOf names the file at path (following symlinks such as
// /proc/PID/exe) by its identity.
func fileOf(path string) (fileID, error) {
	info, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, fmt.Errorf("%s: no file identity", path)
	}
	return fileID{dev: st.Dev, ino: st.Ino, size: st.Size, mtimeN: st.Mtim.Nano()}, nil
}

func planFor(path string) (fileID, *plan, error) {
	id, err := fileOf(path)
	if err != nil {
		return id, nil, err
	}
	plans.Lock()
	pl := plans.m[id]
	plans.Unlock()
	if pl == nil {
		if pl, err = readPlan(path); errors.Is(err, gobin.ErrNotGo) {
			pl = &plan{missing: []string{err.Error()}} // remembered as such
		} else if err != nil {
			return id, nil, err
		}
		plans.Lock()
		if len(plans.m) >= maxPlans {
			clear(plans.m)
		}
		plans.m[id] = pl
		plans.Unlock()
	}
	if pl.off == nil {
		return id, nil, fmt.Errorf("%s: %w", path, gobin.ErrNotGo)
	}
	return id, pl, nil
}

func readPlan(path string) (*plan, error) {
	bin, err := gobin.Open(path)
	if err != nil {
		return nil, err
	}
	defer bin.Close()
	off, _, err := bin.Offsets()
	if err != nil {
		return nil, err
	}
	l7.Resolve(off)
	pl := &plan{off: off}
	planned := map[string]bool{}
	for i, g := range groups {
		if g.insteadOf != "" && planned[g.insteadOf] {
			continue
		}
		if slices.Contains(unplannedGroups, g.name) {
			pl.missing = append(pl.missing, g.name+": left out (test)")
			continue
		}
		addrs, why := probeAddrs(bin, g.probes, off)
		if why != "" {
			pl.missing = append(pl.missing, g.name+": "+why)
			continue
		}
		if g.settle != nil {
			g.settle(bin, g.probes, addrs, off)
		}
		pl.groups = append(pl.groups, struct {
			group int
			addrs [][]uint64
		}{i, addrs})
		planned[g.name] = true
	}
	return pl, nil
}

// unplannedGroups are groups readPlan leaves out, as if their functions
// were not there (tests of the groups standing in for them).
var unplannedGroups []string

// probeAddrs finds where each probe of a group goes (none for an optional
// probe whose function is not linked), or says why the group cannot be
// attached.
func probeAddrs(bin *gobin.Binary, probes []probe, off map[string]uint64) ([][]uint64, string) {
	out := make([][]uint64, len(probes))
probes:
	for i, p := range probes {
		for _, field := range l7.Fields[p.prog] {
			if _, ok := off[field]; !ok {
				if p.optional {
					continue probes
				}
				return nil, "no offset for " + field
			}
		}
		var f gobin.Func
		var err error
		if p.find != nil {
			f, err = p.find(bin)
		} else {
			f, err = bin.Func(p.fn)
		}
		if err != nil {
			if p.optional {
				continue
			}
			return nil, err.Error()
		}
		if p.callsIn != "" {
			if out[i] = callSites(bin, f, p.callsIn); len(out[i]) == 0 && !p.optional {
				return nil, fmt.Sprintf("%s: no call to it in %s* (inlined there)", p.fn, p.callsIn)
			}
			continue
		}
		if p.after != "" || p.nilTest {
			at, rets, err := successPoints(bin, f, p)
			switch {
			case err != nil && p.returns:
				if out[i], err = bin.Returns(f); err != nil {
					return nil, err.Error()
				}
			case err != nil:
				// No success point: the RETs see every return.
			case p.returns:
				out[i] = rets
			default:
				out[i] = at
			}
			continue
		}
		if p.returns {
			if out[i], err = bin.Returns(f); err != nil {
				return nil, err.Error()
			}
			continue
		}
		at, err := bin.EntryProbe(f)
		if err != nil {
			return nil, err.Error()
		}
		out[i] = []uint64{at}
	}
	return out, ""
}

// readLoopClosures finds the two closures net/http's
// (*persistConn).readLoop gives an HTTP/1 response body (transport.go):
// fn, which the body calls when it reads io.EOF or fails, and
// earlyCloseFn, which it calls when closed before that. The compiler
// numbers closures (readLoop.func4, ...), so they are told apart by what
// they call: fn alone calls (*persistConn).canceled; earlyCloseFn only
// sends and receives on channels.
func readLoopClosures(bin *gobin.Binary) (fn, early gobin.Func, err error) {
	var fns, earlies []gobin.Func
	for _, name := range bin.Funcs("net/http.(*persistConn).readLoop.func") {
		f, err := bin.Func(name)
		if err != nil {
			continue
		}
		calls, err := bin.Callees(f)
		if err != nil {
			continue
		}
		maps.DeleteFunc(calls, func(name string, _ bool) bool { return strings.HasPrefix(name, "runtime.morestack") })
		switch {
		case calls["net/http.(*persistConn).canceled"]:
			fns = append(fns, f)
		case len(calls) == 2 && calls["runtime.chansend1"] && calls["runtime.chanrecv1"]:
			earlies = append(earlies, f)
		}
	}
	if len(fns) != 1 || len(earlies) != 1 {
		return fn, early, fmt.Errorf("%w: readLoop's body closures (%d like fn, %d like earlyCloseFn)", gobin.ErrNoFunc, len(fns), len(earlies))
	}
	return fns[0], earlies[0], nil
}

// bodyDelta settles the net/http client group's probes on readLoop's body
// closures (sm_http_body_end), which only work together. Where both were
// placed it sets l7.BodyFnDelta in off, for the client's return points to
// hand a request to its body; otherwise it drops them, and requests end
// at their headers.
func bodyDelta(bin *gobin.Binary, probes []probe, addrs [][]uint64, off map[string]uint64) {
	closureFn, closureEarly, err := readLoopClosures(bin)
	if err == nil && placed(probes, addrs)["sm_http_body_end"] == 2 {
		off[l7.BodyFnDelta] = closureFn.Entry - closureEarly.Entry
		return
	}
	drop(probes, addrs, "sm_http_body_end")
}

// h2StreamEnds are the probes that end an HTTP/2 client stream, in package
// pkg whose types have prefix, with the programs sm_<layout>_end and
// sm_<layout>_abort (bpf/l7's h2c_pending): the CALL that closes its body's
// pipe once END_STREAM came, and cleanupWriteRequest's CALL of abortStream
// (a stream over before that).
func h2StreamEnds(pkg, prefix, layout string) []probe {
	return []probe{
		{fn: pkg + ".(*" + prefix + "pipe).closeWithError", prog: "sm_" + layout + "_end", optional: true,
			callsIn: pkg + ".(*" + prefix + "clientConnReadLoop).endStream"},
		{fn: pkg + ".(*" + prefix + "clientStream).abortStream", prog: "sm_" + layout + "_abort", optional: true,
			callsIn: pkg + ".(*" + prefix + "clientStream).cleanupWriteRequest"},
	}
}

// xh2StreamEnds are golang.org/x/net's, for both of its client groups.
var xh2StreamEnds = h2StreamEnds("golang.org/x/net/http2", "", "h2x")

// settleXH2 settles x/net's HTTP/2 client groups: its streams' ends.
func settleXH2(_ *gobin.Binary, probes []probe, addrs [][]uint64, off map[string]uint64) {
	bothOrNeither(probes, addrs, off, l7.XH2ClientEnds, "sm_h2x_end", "sm_h2x_abort")
}

// bothOrNeither keeps the probes of programs a and b, and sets flag in off,
// only where each of them was placed; otherwise it drops them (an HTTP/2
// stream that could end unseen would hold its slot for minutes, and not
// be counted).
func bothOrNeither(probes []probe, addrs [][]uint64, off map[string]uint64, flag, a, b string) {
	if n := placed(probes, addrs); n[a] > 0 && n[b] > 0 {
		off[flag] = 1
		return
	}
	drop(probes, addrs, a, b)
}

// placed counts, by program, the probes of a group that were placed.
func placed(probes []probe, addrs [][]uint64) map[string]int {
	n := map[string]int{}
	for i, p := range probes {
		if len(addrs[i]) > 0 {
			n[p.prog]++
		}
	}
	return n
}

// drop removes the probes of progs from a group's plan.
func drop(probes []probe, addrs [][]uint64, progs ...string) {
	for i, p := range probes {
		if slices.Contains(progs, p.prog) {
			addrs[i] = nil
		}
	}
}

// callSites lists the CALLs to fn in the functions whose names start with
// prefix.
func callSites(bin *gobin.Binary, fn gobin.Func, prefix string) []uint64 {
	var out []uint64
	for _, name := range bin.Funcs(prefix) {
		caller, err := bin.Func(name)
		if err != nil {
			continue
		}
		at, err := bin.CallSites(caller, fn)
		if err == nil {
			out = append(out, at...)
		}
	}
	return out
}

// successPoints are where a probe with after or nilTest sees fn's
// successes (emulated jumps), and the RETs that still need probes.
func successPoints(bin *gobin.Binary, fn gobin.Func, p probe) ([]uint64, []uint64, error) {
	if p.nilTest {
		return bin.NilReturnTests(fn)
	}
	c, err := bin.Func(p.after)
	if err != nil {
		return nil, nil, err
	}
	at, rets, err := bin.SuccessReturn(fn, c)
	return []uint64{at}, rets, err
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

// StatsKey is what requests are aggregated by, besides the process.
type StatsKey struct {
	Kind       Kind
	Status     int
	GRPCStatus int // -1: not gRPC
	Peer       string
}

func grpcStatus(v uint8) int {
	if v == l7.GRPCNone {
		return -1
	}
	return int(v)
}

// peerString decodes a peer as the programs write it: text, or an address
// in binary. A bracketed IPv6 address ("[fd00::1]", from "host:port" with
// the port cut) loses its brackets.
func peerString(b []byte) string {
	if len(b) >= 2 && b[0] == l7.PeerBinary {
		if a, ok := netip.AddrFromSlice(b[2 : 2+min(int(b[1]), len(b)-2)]); ok && (b[1] == 4 || b[1] == 16) {
			return a.Unmap().String()
		}
		return ""
	}
	s := l7.CString(b)
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	return s
}

// decodeEvent turns a ring-buffer record into a Request.
func decodeEvent(raw []byte) (Request, error) {
	var e l7.HTTPEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return Request{}, fmt.Errorf("decode event: %w", err)
	}
	return Request{PID: e.Pid, Kind: Kind(e.Kind), Method: l7.CString(e.Method[:]), Path: l7.CString(e.Path[:]),
		Status: int(e.Status), GRPCStatus: grpcStatus(e.GrpcStatus), Peer: peerString(e.Peer[:]),
		Bytes: e.Bytes, ReqBytes: e.ReqBytes, Duration: time.Duration(e.DurationNs), ProtoMajor: int(e.ProtoMajor)}, nil
}

// closeLinks detaches uprobes all at once: each detach waits for a grace
// period (~100 ms here), and detaches that wait together share one; one
// after the other, a process with 25 probes took 2.5 s to let go.
func closeLinks(links []link.Link) {
	var wg sync.WaitGroup
	for _, l := range links {
		wg.Add(1)
		go func() { defer wg.Done(); l.Close() }()
	}
	wg.Wait()
}
