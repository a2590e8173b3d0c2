// Package l7 holds the uprobe programs that observe requests inside
// applications (Go's net/http and gRPC, servers and clients) and their Go
// bindings.
package l7

import (
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"

	"github.com/sockmesh/sockmesh/bpf/verifier"
)

// HTTPEvent is one finished request, as the programs report it.
type HTTPEvent = bpfHttpEvent

// Programs are the request programs loaded for one executable.
type Programs = bpfPrograms

// Start is one slot of sm_http_start: a request begun and not ended.
type Start = bpfStart

// Maps are the maps every loaded Programs writes to.
type Maps = bpfMaps

// Offsets are the struct field offsets the programs read, by field name as
// node/telemetry/gobin names them ("net/http.Request.Method", ...).
type Offsets map[string]uint64

// Kinds of requests: who reports them, in which protocol.
const (
	KindHTTPServer = 0
	KindHTTPClient = 1
	KindGRPCServer = 2
	KindGRPCClient = 3
)

// GRPCNone is the gRPC status of a request that is not gRPC.
const GRPCNone = 255

// PeerBinary marks a peer given as an address in binary: its length (4 or
// 16) follows, then the address.
const PeerBinary = 0xff

// HTTPStats are the in-kernel aggregates of one key.
type HTTPStats = bpfHttpStats

// HTTPStatsKey keys HTTPStats.
type HTTPStatsKey = bpfHttpStatsKey

// DurationBoundsMs are the upper bounds of HTTPStats.DurationBuckets, in
// milliseconds (Envoy's defaults, which Istio uses).
var DurationBoundsMs = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// BytesBounds are the upper bounds of HTTPStats.BytesBuckets.
var BytesBounds = []float64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8}

// variables maps each offset constant of the programs to the struct
// fields (node/telemetry/gobin's names) whose offsets add up to it.
var variables = map[string][]string{
	"off_request_method":         {"net/http.Request.Method"},
	"off_request_url":            {"net/http.Request.URL"},
	"off_request_content_length": {"net/http.Request.ContentLength"},
	"off_request_remote_addr":    {"net/http.Request.RemoteAddr"},
	"off_url_host":               {"net/url.URL.Host"},
	"off_url_path":               {"net/url.URL.Path"},
	"off_response_req":           {"net/http.response.req"},
	"off_response_status":        {"net/http.response.status"},
	"off_response_written":       {"net/http.response.written"},
	"off_h2rw_rws":               {"net/http.http2responseWriter.rws"},
	"off_h2rws_req":              {"net/http.http2responseWriterState.req"},
	"off_h2rws_status":           {"net/http.http2responseWriterState.status"},
	"off_h2rws_wrote":            {"net/http.http2responseWriterState.wroteBytes"},
	"off_h2rws_stream":           {"net/http.http2responseWriterState.stream"},
	"off_h2st_body_bytes":        {"net/http.http2stream.bodyBytes"},
	"off_xh2rw_rws":              {"golang.org/x/net/http2.responseWriter.rws"},
	"off_xh2rws_req":             {"golang.org/x/net/http2.responseWriterState.req"},
	"off_xh2rws_status":          {"golang.org/x/net/http2.responseWriterState.status"},
	"off_xh2rws_wrote":           {"golang.org/x/net/http2.responseWriterState.wroteBytes"},
	"off_xh2rws_stream":          {"golang.org/x/net/http2.responseWriterState.stream"},
	"off_xh2st_body_bytes":       {"golang.org/x/net/http2.stream.bodyBytes"},
	"off_h2irw_rws":              {"net/http/internal/http2.responseWriter.rws"},
	"off_h2irws_req":             {"net/http/internal/http2.responseWriterState.req"},
	"off_h2irws_status":          {"net/http/internal/http2.responseWriterState.status"},
	"off_h2irws_wrote":           {"net/http/internal/http2.responseWriterState.wroteBytes"},
	"off_h2irws_stream":          {"net/http/internal/http2.responseWriterState.stream"},
	"off_h2ist_body_bytes":       {"net/http/internal/http2.stream.bodyBytes"},
	"off_srq_method":             {"net/http/internal/http2.ServerRequest.Method"},
	"off_srq_url":                {"net/http/internal/http2.ServerRequest.URL"},
	"off_srq_content_length":     {"net/http/internal/http2.ServerRequest.ContentLength"},
	"off_srq_remote_addr":        {"net/http/internal/http2.ServerRequest.RemoteAddr"},
	"off_resp_status_code":       {"net/http.Response.StatusCode"},
	"off_resp_content_length":    {"net/http.Response.ContentLength"},
	"off_resp_proto_major":       {"net/http.Response.ProtoMajor"},
	"off_tcpaddr_ip":             {"net.TCPAddr.IP"},
	"off_grpc_stream_method": {"google.golang.org/grpc/internal/transport.ServerStream.Stream",
		"google.golang.org/grpc/internal/transport.Stream.method"},
	"off_grpc_server_peer_addr": {"google.golang.org/grpc/internal/transport.http2Server.peer",
		"google.golang.org/grpc/peer.Peer.Addr"},
	"off_status_s":            {"google.golang.org/grpc/internal/status.Status.s"},
	"off_spb_status_code":     {"google.golang.org/genproto/googleapis/rpc/status.Status.Code"},
	"off_status_error_s":      {"google.golang.org/grpc/internal/status.Error.s"},
	"off_grpc_cc_target":      {"google.golang.org/grpc.ClientConn.target"},
	"off_grpc_sstream_stream": {"google.golang.org/grpc/internal/transport.ServerStream.Stream"},
	"off_grpc_cstream_stream": {"google.golang.org/grpc/internal/transport.ClientStream.Stream"},
	"off_grpc_cs_attempt":     {"google.golang.org/grpc.clientStream.attempt"},
	"off_grpc_attempt_stream": {"google.golang.org/grpc.csAttempt.transportStream"},
	"off_resp_body":           {"net/http.Response.Body"},
	"off_es_body":             {"net/http.bodyEOFSignal.body"},
	"off_es_fn":               {"net/http.bodyEOFSignal.fn"},
	"off_es_early":            {"net/http.bodyEOFSignal.earlyCloseFn"},
	"off_gzip_body":           {"net/http.gzipReader.body"},
	"off_body_src":            {"net/http.body.src"},
	"off_body_r":              {"net/http.body.r"},
	"off_lr_r":                {"io.LimitedReader.R"},
	"off_lr_n":                {"io.LimitedReader.N"},
	"off_bufio_buf":           {"bufio.Reader.buf"},
	"off_bufio_rd":            {"bufio.Reader.rd"},
	"off_bufio_r":             {"bufio.Reader.r"},
	"off_bufio_w":             {"bufio.Reader.w"},
	"off_pc_read_limit":       {"net/http.persistConn.readLimit"},
	"body_fn_delta":           {BodyFnDelta},
	"h2c_ends":                {H2ClientEnds},
	"h2x_ends":                {XH2ClientEnds},
}

// h2Client are the constants of an HTTP/2 client stream's layout in the
// programs (off_h2c_*, off_h2x_*), from the structs of package pkg whose
// names have prefix (net/http's bundled copy: "http2"), and resBody, the
// Body of the response type the stream keeps.
func h2Client(constant, pkg, prefix, resBody string) map[string][]string {
	cs := pkg + "." + prefix + "clientStream."
	return map[string][]string{
		"off_" + constant + "_res":       {cs + "res"},
		"off_" + constant + "_res_body":  {resBody},
		"off_" + constant + "_closed":    {cs + "readClosed"},
		"off_" + constant + "_remain":    {cs + "bytesRemain"},
		"off_" + constant + "_pipe":      {cs + "bufPipe"},
		"off_" + constant + "_buf":       {cs + "bufPipe", pkg + "." + prefix + "pipe.b"},
		"off_" + constant + "_abort_err": {cs + "abortErr"},
		"off_" + constant + "_expected":  {pkg + "." + prefix + "dataBuffer.expected"},
		"off_" + constant + "_gzip_body": {pkg + "." + prefix + "gzipReader.body"},
	}
}

// aliases name, for a field the programs' constants use, the fields that
// give it, the first a binary has: net/http's HTTP/2 client is the copy it
// bundles before Go 1.27 and net/http/internal/http2 after, of one layout
// but for the response its streams keep (an *http.Response, then an
// http2.ClientResponse), and the programs read either with the same
// constants.
var aliases = map[string][]string{}

// h2ResponseBody is no struct field: the Body of the response net/http's
// HTTP/2 client streams keep.
const h2ResponseBody = "net/http HTTP/2 client stream's response.Body"

func init() {
	bundled := h2Client("h2c", "net/http", "http2", h2ResponseBody)
	internal := h2Client("h2c", "net/http/internal/http2", "", "net/http/internal/http2.ClientResponse.Body")
	maps.Copy(variables, bundled)
	maps.Copy(variables, h2Client("h2x", "golang.org/x/net/http2", "", "net/http.Response.Body"))
	for c, fields := range bundled {
		for i, f := range fields {
			aliases[f] = []string{f, internal[c][i]}
		}
	}
	// The one field not named alike: Go 1.27's streams keep a response
	// of their own, and an *http.Response before.
	aliases[h2ResponseBody] = []string{internal["off_h2c_res_body"][0], "net/http.Response.Body"}
}

// Resolve adds to off the fields the programs' constants use under other
// names (aliases). Call it before looking at Fields or loading.
func Resolve(off Offsets) {
	for name, from := range aliases {
		for _, f := range from {
			if v, ok := off[f]; ok {
				off[name] = v
				break
			}
		}
	}
}

// H2ClientEnds and XH2ClientEnds are no struct fields: set in Offsets (to
// 1) where the probes that end an HTTP/2 client stream are placed, in
// net/http's own HTTP/2 (sm_h2c_end, sm_h2c_abort) and in
// golang.org/x/net's (sm_h2x_end, sm_h2x_abort). With them, a request over
// HTTP/2 ends with its response's stream; without, at its headers.
const (
	H2ClientEnds  = "net/http HTTP/2 client: stream ends probed"
	XH2ClientEnds = "golang.org/x/net/http2 client: stream ends probed"
)

// BodyFnDelta is no struct field: in Offsets, the distance from the entry
// of the earlyCloseFn closure net/http's readLoop gives a response body to
// that of its fn closure (fn's entry minus earlyCloseFn's, two's
// complement). With it, a client request whose response has an HTTP/1
// body ends when the body does (sm_http_body_end); without it, at the
// response's headers.
const BodyFnDelta = "net/http.(*persistConn).readLoop closures: fn - earlyCloseFn"

// Fields lists the struct fields whose offsets a program needs.
var Fields = map[string][]string{}

func init() {
	// Both ends of a client request run client_done (http.c).
	clientDone := []string{"off_resp_status_code", "off_resp_content_length", "off_resp_proto_major", "off_request_url",
		"off_url_host", "off_url_path", "off_request_content_length", "off_request_method"}
	uses := map[string][]string{
		"sm_http_serve":        nil,
		"sm_http_hijack":       nil,
		"sm_http_finish":       {"off_response_req", "off_response_status", "off_response_written", "off_request_remote_addr", "off_request_url", "off_url_path", "off_request_content_length", "off_request_method"},
		"sm_h2_done":           {"off_h2rw_rws", "off_h2rws_req", "off_h2rws_status", "off_h2rws_wrote", "off_h2rws_stream", "off_h2st_body_bytes", "off_request_remote_addr", "off_request_url", "off_url_path", "off_request_content_length", "off_request_method"},
		"sm_h2i_done":          {"off_h2irw_rws", "off_h2irws_req", "off_h2irws_status", "off_h2irws_wrote", "off_h2irws_stream", "off_h2ist_body_bytes", "off_srq_method", "off_srq_url", "off_srq_content_length", "off_srq_remote_addr", "off_url_path"},
		"sm_xh2_done":          {"off_xh2rw_rws", "off_xh2rws_req", "off_xh2rws_status", "off_xh2rws_wrote", "off_xh2rws_stream", "off_xh2st_body_bytes", "off_request_remote_addr", "off_request_url", "off_url_path", "off_request_content_length", "off_request_method"},
		"sm_http_client_start": nil,
		"sm_http_client_end":   clientDone,
		"sm_http_client_ok":    clientDone,
		"sm_grpc_serve":        nil,
		"sm_grpc_serve_end":    {"off_status_s", "off_spb_status_code", "off_grpc_server_peer_addr", "off_tcpaddr_ip", "off_grpc_stream_method", "off_grpc_sstream_stream"},
		"sm_grpc_read":         nil,
		"sm_grpc_srv_write":    {"off_grpc_sstream_stream"},
		"sm_grpc_cli_write":    {"off_grpc_cstream_stream"},
		"sm_grpc_call":         nil,
		"sm_grpc_call_ret":     {"off_status_error_s", "off_status_s", "off_spb_status_code", "off_grpc_cc_target"},
		"sm_grpc_attempt":      nil,
		"sm_grpc_call_failed":  {"off_status_error_s", "off_status_s", "off_spb_status_code", "off_grpc_cc_target"},
		"sm_grpc_call_end":     {"off_status_error_s", "off_status_s", "off_spb_status_code", "off_grpc_cc_target", "off_grpc_cs_attempt", "off_grpc_attempt_stream", "off_grpc_cstream_stream"},

		// Where a body's closures were found (BodyFnDelta is set), the
		// client's return points read these too; the loader sets the
		// delta only with them.
		"sm_http_body_end": append([]string{"off_bufio_r", "off_bufio_w", "off_pc_read_limit", "off_resp_body", "off_es_body",
			"off_es_fn", "off_es_early", "off_gzip_body", "off_body_src", "off_body_r", "off_lr_r", "off_lr_n", "off_bufio_buf", "off_bufio_rd"}, clientDone...),
	}
	// Where a stream's ends were placed (H2ClientEnds, XH2ClientEnds),
	// the client's return points read these too.
	for _, c := range []string{"h2c", "h2x"} {
		vars := slices.Clone(clientDone)
		for v := range h2Client(c, "", "", "") {
			vars = append(vars, v)
		}
		slices.Sort(vars)
		uses["sm_"+c+"_end"], uses["sm_"+c+"_abort"] = vars, vars
	}
	for prog, vars := range uses {
		Fields[prog] = []string{}
		for _, v := range vars {
			Fields[prog] = append(Fields[prog], variables[v]...)
		}
	}
}

// NewMaps makes the maps the programs of every executable share.
func NewMaps() (*Maps, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load l7 spec: %w", err)
	}
	var m Maps
	if err := spec.LoadAndAssign(&m, nil); err != nil {
		return nil, fmt.Errorf("l7 maps: %w", err)
	}
	return &m, nil
}

// Load loads the request programs with the offsets of one binary's Go
// and module versions, writing to maps. A constant whose fields are not in
// off keeps its default, and the programs that need it must not be
// attached (Fields says which). events turns on one ring-buffer event per
// request (access logs and tests); the aggregates in sm_http_stats are
// always kept. multi loads the programs for uprobe_multi links
// (MultiUprobes) instead of one uprobe per address.
func Load(off Offsets, events, multi bool, maps *Maps) (*Programs, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load l7 spec: %w", err)
	}
	if multi {
		for _, p := range spec.Programs {
			p.AttachType = ebpf.AttachTraceUprobeMulti
		}
	}
	for variable, fields := range variables {
		var sum uint64
		known := true
		for _, f := range fields {
			v, ok := off[f]
			known = known && ok
			sum += v
		}
		if !known {
			continue
		}
		if err := spec.Variables[variable].Set(sum); err != nil {
			return nil, fmt.Errorf("set %s: %w", variable, err)
		}
	}
	if err := spec.Variables["emit_events"].Set(events); err != nil {
		return nil, fmt.Errorf("set emit_events: %w", err)
	}
	replace := map[string]*ebpf.Map{
		"sm_http_drops": maps.SmHttpDrops, "sm_http_events": maps.SmHttpEvents,
		"sm_http_start": maps.SmHttpStart, "sm_http_stats": maps.SmHttpStats,
	}
	var progs Programs
	if err := spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{MapReplacements: replace}); err != nil {
		return nil, verifier.Explain("l7 request programs", err)
	}
	return &progs, nil
}

// ByName lists the programs by name (sm_http_serve, ...), as the probe
// groups name them.
func (p *Programs) ByName() map[string]*ebpf.Program {
	out := map[string]*ebpf.Program{}
	v := reflect.ValueOf(p).Elem()
	for i := range v.NumField() {
		if prog, ok := v.Field(i).Interface().(*ebpf.Program); ok {
			out[v.Type().Field(i).Tag.Get("ebpf")] = prog
		}
	}
	return out
}

// MultiUprobes reports whether this kernel has uprobe_multi links (6.6+):
// one link attaches a program at many addresses, and detaching it waits
// for one grace period, not one per address.
func MultiUprobes() bool { return features.HaveBPFLinkUprobeMulti() == nil }

// CString turns a NUL-padded byte array from an event into a string.
func CString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
