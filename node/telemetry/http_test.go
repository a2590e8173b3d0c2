package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"go/version"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sockmesh/sockmesh/bpf/l7"
	"github.com/sockmesh/sockmesh/internal/testutil"
)

// TestRequests probes a real Go program serving HTTP/1.1, h2c and gRPC
// (net/http's and golang.org/x/net's) and calling HTTP (both
// transports) and gRPC servers itself (built plain and with -s -w, so
// offsets come from DWARF and from the table), and checks every request,
// server and client side, is reported with its method, path, status,
// sizes and peer, in events and in the in-kernel aggregates.
func TestRequests(t *testing.T) {
	testutil.Privileged(t)
	for _, c := range []struct {
		ldflags string
		multi   bool
		// without: a group left out, as if its functions were not
		// linked, so that the one standing in for it is tested.
		without string
	}{{"", true, ""}, {"-s -w", true, ""}, {"", false, ""}, {"", true, "grpc client"}, {"", true, "x/net/http2 client"},
		{"", true, "net/http server"}} {
		ldflags := c.ldflags
		t.Run(fmt.Sprintf("ldflags=%s,multi=%v,without=%s", ldflags, c.multi, c.without), func(t *testing.T) {
			if c.multi && !l7.MultiUprobes() {
				t.Skip("no uprobe_multi links on this kernel")
			}
			defer func(f func() bool) { multiUprobes = f }(multiUprobes)
			multiUprobes = func() bool { return c.multi }
			if c.without != "" {
				leaveOut(t, c.without)
			}
			bin := testutil.BuildGo(t, "./testdata/httpserver", ldflags)
			srv := testutil.Start(t, bin, "-grpc", "-xnet")
			readLine := func() string { return srv.Line(t) }
			addr, grpcAddr, xnetAddr := readLine(), readLine(), readLine()

			tr, err := TraceHTTP(bin, srv.Pid(), true)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			if want := []Kind{HTTPServer, HTTPClient, GRPCServer, GRPCClient}; !slices.Equal(tr.Kinds, want) {
				t.Fatalf("probed kinds %v, want %v", tr.Kinds, want)
			}
			var libs []string // every group of this Go, or the one standing in for it
			for _, g := range groups {
				if !groupInGo(g.name, runtime.Version()) {
					continue
				}
				if g.insteadOf == "" && g.name != c.without || g.insteadOf != "" && g.insteadOf == c.without {
					libs = append(libs, g.name)
				}
			}
			if !slices.Equal(tr.Libraries, libs) {
				t.Fatalf("probed libraries %v, want %v", tr.Libraries, libs)
			}

			// Served: HTTP/1.1 and h2c from this test's clients.
			h2 := &http.Client{Transport: &http.Transport{Protocols: new(http.Protocols)}}
			h2.Transport.(*http.Transport).Protocols.SetUnencryptedHTTP2(true)
			for _, r := range []struct {
				c            *http.Client
				method, path string
				body         int
				streamed     bool // sent without a length (HTTP/1: chunked)
			}{
				{http.DefaultClient, "GET", "/ok", 0, false}, {http.DefaultClient, "POST", "/missing", 123, false},
				{http.DefaultClient, "GET", "/fail", 0, false}, {h2, "GET", "/ok", 0, false}, {h2, "POST", "/fail", 7, false},
				{h2, "GET", "/missing@xnet", 0, false}, // to x/net's server
				{http.DefaultClient, "POST", "/read", 9, true}, {h2, "POST", "/read", 9, true}, {h2, "POST", "/read@xnet", 9, true},
				// No body goes out for HEAD, whatever the handler writes.
				{http.DefaultClient, "HEAD", "/ok", 0, false}, {h2, "HEAD", "/ok", 0, false},
			} {
				host, path, xnet := addr, r.path, strings.HasSuffix(r.path, "@xnet")
				if xnet {
					host, path = xnetAddr, strings.TrimSuffix(path, "@xnet")
				}
				var body io.Reader = strings.NewReader(strings.Repeat("x", r.body))
				if r.streamed {
					body = io.MultiReader(body) // its length unknown
				}
				req, _ := http.NewRequest(r.method, "http://"+host+path, body)
				resp, err := r.c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			// Served: gRPC, from this test's client.
			cc, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			for _, m := range []string{"/test.Svc/Ok", "/test.Svc/NotFound"} {
				// 7 bytes of protobuf, 12 with the message prefix.
				cc.Invoke(context.Background(), m, wrapperspb.String("ping!"), &emptypb.Empty{})
			}
			want := []string{
				"http-server 1 GET /ok 200 - 5 0 127.0.0.1",
				"http-server 1 POST /missing 404 - 19 123 127.0.0.1",
				"http-server 1 GET /fail 500 - 5 0 127.0.0.1",
				"http-server 2 GET /ok 200 - 5 0 127.0.0.1",
				"http-server 2 POST /fail 500 - 5 7 127.0.0.1",
				"http-server 2 GET /missing 404 - 19 0 127.0.0.1",
				// A body without a length: HTTP/2, what the stream
				// took in; chunked (HTTP/1), not sized (http.c).
				"http-server 1 POST /read 200 - 1 0 127.0.0.1",
				"http-server 2 POST /read 200 - 1 9 127.0.0.1",
				"http-server 2 POST /read 200 - 1 9 127.0.0.1",
				"http-server 1 HEAD /ok 200 - 0 0 127.0.0.1",
				"http-server 2 HEAD /ok 200 - 0 0 127.0.0.1",
				// Sizes: messages with their 5-byte prefixes, request
				// 12, response 11 (none on an error).
				"grpc-server 2  /test.Svc/Ok 200 0 11 12 127.0.0.1",
				"grpc-server 2  /test.Svc/NotFound 200 5 0 12 127.0.0.1",
			}
			got := collect(t, tr, len(want))
			if !slices.Equal(got, want) {
				t.Fatalf("served requests seen\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}

			// Called: the program is the client (its own server answers,
			// so each call is seen at both ends).
			for _, cmd := range []string{"GET http://" + addr + "/missing", "H2 http://" + addr + "/ok", "XH2 http://" + xnetAddr + "/fail",
				"GET http://127.0.0.1:1/refused", "XH2 http://127.0.0.1:1/refused", "GRPC " + grpcAddr + " /test.Svc/Internal", "GRPC " + grpcAddr + " /test.Svc/Ok",
				"GRPCS " + grpcAddr + " /test.Svc/Ok", "GRPCS " + grpcAddr + " /test.Svc/NotFound", "GRPC 127.0.0.1:1 /test.Svc/Ok", "GRPCBADMD " + grpcAddr + " /test.Svc/Ok", "GRPCTWO " + grpcAddr} {
				fmt.Fprintln(srv.Stdin, cmd)
				t.Logf("%s: %s", cmd, readLine())
			}
			want = []string{
				"http-server 1 GET /missing 404 - 19 0 127.0.0.1",
				"http-client 1 GET /missing 404 - 19 0 " + addr,
				"http-server 2 GET /ok 200 - 5 0 127.0.0.1",
				"http-client 2 GET /ok 200 - 5 0 " + addr,
				"http-server 2 GET /fail 500 - 5 0 127.0.0.1",
				"http-client 2 GET /fail 500 - 5 0 " + xnetAddr,
				"http-client 0 GET /refused 0 - 0 0 127.0.0.1:1",
				"http-client 0 GET /refused 0 - 0 0 127.0.0.1:1", // x/net's
				"grpc-server 2  /test.Svc/Internal 200 13 0 12 127.0.0.1",
				"grpc-client 2  /test.Svc/Internal 200 13 0 12 " + grpcAddr,
				"grpc-server 2  /test.Svc/Ok 200 0 11 12 127.0.0.1",
				"grpc-client 2  /test.Svc/Ok 200 0 11 12 " + grpcAddr,
				// Streaming, both ways.
				"grpc-server 2  /test.Svc/Ok 200 0 11 12 127.0.0.1",
				"grpc-client 2  /test.Svc/Ok 200 0 11 12 " + grpcAddr,
				"grpc-server 2  /test.Svc/NotFound 200 5 0 12 127.0.0.1",
				"grpc-client 2  /test.Svc/NotFound 200 5 0 12 " + grpcAddr,
				// Nothing listens: the call fails as it starts.
				"grpc-client 2  /test.Svc/Ok 200 14 0 0 127.0.0.1:1",
				// Refused before it has a stream: never sent.
				"grpc-client 2  /test.Svc/Ok 200 13 0 0 " + grpcAddr,
				// Two streams of one goroutine, the first failing
				// while the second is open: each ends as itself.
				"grpc-server 2  /test.Svc/NotFound 200 5 0 12 127.0.0.1",
				"grpc-client 2  /test.Svc/NotFound 200 5 0 12 " + grpcAddr,
				"grpc-server 2  /test.Svc/Ok 200 0 11 12 127.0.0.1",
				"grpc-client 2  /test.Svc/Ok 200 0 11 12 " + grpcAddr,
			}
			got = collect(t, tr, len(want))
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("requests seen\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			// A response's body ends its request at the client. HTTP/1:
			// read to its end (chunked: its size on the wire, framing
			// included; with a Content-Length, that; either way its
			// duration past the pause between its two parts), closed
			// unread (nothing read, ended at the close), compressed
			// and all there with the headers (its compressed size), or
			// without a length, until the connection closes. HTTP/2,
			// net/http's and x/net's: its DATA, read to its end or
			// closed after the first part (what had come: 5 bytes).
			for _, cmd := range []string{"GET http://" + addr + "/chunked", "GETCLOSE http://" + addr + "/chunked", "GET http://" + addr + "/paused", "GET http://" + addr + "/gzip", "GET http://" + addr + "/close",
				"H2 http://" + addr + "/chunked", "H2HALF http://" + addr + "/chunked", "H2 http://" + addr + "/paused", "H2 http://" + addr + "/gzip",
				"XH2 http://" + addr + "/chunked", "XH2HALF http://" + addr + "/chunked", "H2CANCEL http://" + addr + "/chunked",
				"HEAD http://" + addr + "/ok", "H2HEAD http://" + addr + "/ok"} {
				fmt.Fprintln(srv.Stdin, cmd)
				t.Logf("%s: %s", cmd, readLine())
			}
			gz := fmt.Sprint(gzippedLen(t))
			want = []string{
				"http-server 1 GET /chunked 200 - 12 0 127.0.0.1",
				"http-client 1 GET /chunked 200 - 27 0 " + addr,
				"http-server 1 GET /chunked 200 - 12 0 127.0.0.1",
				"http-client 1 GET /chunked 200 - 0 0 " + addr,
				"http-server 1 GET /paused 200 - 12 0 127.0.0.1",
				"http-client 1 GET /paused 200 - 12 0 " + addr,
				"http-server 1 GET /gzip 200 - " + gz + " 0 127.0.0.1",
				"http-client 1 GET /gzip 200 - " + gz + " 0 " + addr,
				// Until the connection closes (a hijacked handler:
				// not counted at the server).
				"http-client 1 GET /close 200 - 9 0 " + addr,
				"http-server 2 GET /chunked 200 - 12 0 127.0.0.1",
				"http-client 2 GET /chunked 200 - 12 0 " + addr,
				"http-server 2 GET /chunked 200 - 12 0 127.0.0.1",
				"http-client 2 GET /chunked 200 - 5 0 " + addr,
				"http-server 2 GET /paused 200 - 12 0 127.0.0.1",
				"http-client 2 GET /paused 200 - 12 0 " + addr,
				"http-server 2 GET /gzip 200 - " + gz + " 0 127.0.0.1",
				"http-client 2 GET /gzip 200 - " + gz + " 0 " + addr,
				"http-server 2 GET /chunked 200 - 12 0 127.0.0.1",
				"http-client 2 GET /chunked 200 - 12 0 " + addr,
				"http-server 2 GET /chunked 200 - 12 0 127.0.0.1",
				"http-client 2 GET /chunked 200 - 5 0 " + addr,
				// Cancelled while the body was coming: what had come.
				"http-server 2 GET /chunked 200 - 12 0 127.0.0.1",
				"http-client 2 GET /chunked 200 - 5 0 " + addr,
				// HEAD: a length, no body.
				"http-server 1 HEAD /ok 200 - 0 0 127.0.0.1",
				"http-client 1 HEAD /ok 200 - 0 0 " + addr,
				"http-server 2 HEAD /ok 200 - 0 0 127.0.0.1",
				"http-client 2 HEAD /ok 200 - 0 0 " + addr,
			}
			reqs := collectRequests(t, tr, len(want))
			got = format(reqs)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("requests seen\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for _, r := range reqs {
				// Read to its end, a body took the pause; closed
				// before (unread, or after its first part), it
				// ended before.
				if (r.Path == "/chunked" || r.Path == "/paused") && (r.Bytes < 12) != (r.Duration < streamPause) {
					t.Errorf("%s %s %d bytes: %v", r.Kind, r.Path, r.Bytes, r.Duration)
				}
			}
			if d, _ := tr.Drops(); d != 0 {
				t.Errorf("%d events dropped", d)
			}
			// A hijacked request (a websocket's upgrade; x/net's h2c
			// server above hijacked one too) is not counted, and holds
			// no start: every request started has ended.
			if c, err := net.Dial("tcp", addr); err == nil {
				fmt.Fprintf(c, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
				io.Copy(io.Discard, c)
				c.Close()
			}
			if n, err := tr.Open(); err != nil || n != 0 {
				t.Errorf("%d requests still open (%v), want none", n, err)
			}
			if more, _ := tr.Read(200 * time.Millisecond); len(more) != 0 {
				t.Errorf("the hijacked request was reported: %+v", more)
			}

			// The in-kernel aggregates agree with the events.
			stats, err := tr.Stats()
			if err != nil {
				t.Fatal(err)
			}
			srvKey := func(status int) StatsKey {
				return StatsKey{Kind: HTTPServer, Status: status, GRPCStatus: -1, Peer: "127.0.0.1"}
			}
			ok, missing, fail := stats[srvKey(200)], stats[srvKey(404)], stats[srvKey(500)]
			// 200: three of /ok (5 bytes); HTTP/1 and HTTP/2, seven of
			// /chunked and two of /paused (12, 300 ms), two of /gzip;
			// three of /read ("9", taking 9 bytes over HTTP/2); four
			// HEAD (no body).
			if ok.Count != 21 || missing.Count != 3 || fail.Count != 3 || ok.BytesSum != 15+108+2*uint64(gzippedLen(t))+3 || missing.BytesSum != 57 ||
				missing.ReqBytesSum != 123 || missing.ReqBytesBuckets[3] != 1 || ok.ReqBytesBuckets[0] != 19 || ok.ReqBytesSum != 18 || fail.ReqBytesSum != 7 {
				t.Fatalf("aggregates %+v", stats)
			}
			var inBuckets uint64
			for _, n := range ok.DurationBuckets {
				inBuckets += n
			}
			if inBuckets != 21 || ok.BytesBuckets[1] != 3 || ok.DurationBuckets[8] != 9 { // 5 bytes: the <= 10 bucket; 300 ms: <= 500
				t.Fatalf("buckets %+v", ok)
			}
			for k, n := range map[StatsKey]uint64{
				{Kind: HTTPClient, Status: 404, GRPCStatus: -1, Peer: addr}:          1,
				{Kind: HTTPClient, Status: 200, GRPCStatus: -1, Peer: addr}:          15,
				{Kind: HTTPClient, Status: 0, GRPCStatus: -1, Peer: "127.0.0.1:1"}:   2,
				{Kind: GRPCServer, Status: 200, GRPCStatus: 0, Peer: "127.0.0.1"}:    4,
				{Kind: GRPCServer, Status: 200, GRPCStatus: 5, Peer: "127.0.0.1"}:    3,
				{Kind: GRPCServer, Status: 200, GRPCStatus: 13, Peer: "127.0.0.1"}:   1,
				{Kind: GRPCClient, Status: 200, GRPCStatus: 13, Peer: grpcAddr}:      2,
				{Kind: GRPCClient, Status: 200, GRPCStatus: 0, Peer: grpcAddr}:       3,
				{Kind: GRPCClient, Status: 200, GRPCStatus: 5, Peer: grpcAddr}:       2,
				{Kind: GRPCClient, Status: 200, GRPCStatus: 14, Peer: "127.0.0.1:1"}: 1,
			} {
				if stats[k].Count != n {
					t.Errorf("aggregate %+v: %d requests, want %d", k, stats[k].Count, n)
				}
			}
		})
	}
}

// TestConcurrentGRPCCalls: many gRPC calls at once from one process, unary
// and streaming (whose ends can come on other goroutines), are each counted
// once with their status, at the client as at the server, and leave no
// start behind.
func TestConcurrentGRPCCalls(t *testing.T) {
	testutil.Privileged(t)
	bin := testutil.BuildGo(t, "./testdata/httpserver", "")
	for _, without := range []string{"", "grpc client"} {
		t.Run("without="+without, func(t *testing.T) {
			if without != "" {
				leaveOut(t, without)
			}
			concurrentGRPCCalls(t, bin)
		})
	}
}

func concurrentGRPCCalls(t *testing.T, bin string) {
	srv := testutil.Start(t, bin, "-grpc")
	srv.Line(t) // the HTTP address
	grpcAddr := srv.Line(t)
	tr := trace(t, bin, srv.Pid(), false)
	const n, goroutines = 1200, 24
	fmt.Fprintf(srv.Stdin, "GRPCMANY %s %d %d\n", grpcAddr, n, goroutines)
	if got, want := srv.Line(t), "map[Internal:300 NotFound:300 OK:600]"; got != want {
		t.Fatalf("calls answered %s, want %s", got, want)
	}
	want := map[int]uint64{0: 600, 5: 300, 13: 300}
	stats := statsWhen(t, tr, func(stats map[StatsKey]Totals) bool {
		for code, c := range want {
			for _, kind := range []Kind{GRPCClient, GRPCServer} {
				peer := map[Kind]string{GRPCClient: grpcAddr, GRPCServer: "127.0.0.1"}[kind]
				if stats[StatsKey{Kind: kind, Status: 200, GRPCStatus: code, Peer: peer}].Count != c {
					return false
				}
			}
		}
		return true
	})
	var total uint64
	for k, v := range stats {
		if k.Kind == GRPCClient || k.Kind == GRPCServer {
			total += v.Count
		}
	}
	if total != 2*n {
		t.Errorf("%d gRPC calls counted at both ends, want %d: %+v", total, 2*n, stats)
	}
	for code, c := range want {
		k := StatsKey{Kind: GRPCClient, Status: 200, GRPCStatus: code, Peer: grpcAddr}
		if stats[k].Count != c {
			t.Errorf("client calls with status %d: %d, want %d", code, stats[k].Count, c)
		}
		// 12 bytes a call sent (the 7-byte ping with its prefix); 11
		// received on OK.
		if stats[k].ReqBytesSum != 12*c || (code == 0) != (stats[k].BytesSum == 11*c) {
			t.Errorf("client calls with status %d: %d bytes sent, %d received", code, stats[k].ReqBytesSum, stats[k].BytesSum)
		}
	}
	noneLost(t, tr)
}

// TestConcurrentHTTPBodies: many client requests at once whose bodies end
// after their headers (chunked, in two parts 2 ms apart), over HTTP/1 and
// over HTTP/2 (one connection's streams), and HTTP/2 ones whose stream
// often ends before the caller has its headers (/ok), are each counted
// once, with the body's size, and leave no start behind.
func TestConcurrentHTTPBodies(t *testing.T) {
	testutil.Privileged(t)
	bin := testutil.BuildGo(t, "./testdata/httpserver", "")
	for _, c := range []struct {
		cmd, path string
		// Bytes of body a request: on the wire (chunk framing
		// included) and as the handler wrote them.
		client, server uint64
	}{
		{"GETMANY", "/chunked?pause=2ms", 27, 12},
		{"H2MANY", "/chunked?pause=2ms", 12, 12},
		{"H2MANY", "/ok", 5, 5},
	} {
		t.Run(c.cmd+" "+c.path, func(t *testing.T) {
			srv := testutil.Start(t, bin)
			addr := srv.Line(t)
			tr := trace(t, bin, srv.Pid(), false)
			const n, goroutines = 600, 24
			fmt.Fprintf(srv.Stdin, "%s http://%s%s %d %d\n", c.cmd, addr, c.path, n, goroutines)
			if got := srv.Line(t); got != "failed 0" {
				t.Fatalf("%s: %s", c.cmd, got)
			}
			client := StatsKey{Kind: HTTPClient, Status: 200, GRPCStatus: -1, Peer: addr}
			server := StatsKey{Kind: HTTPServer, Status: 200, GRPCStatus: -1, Peer: "127.0.0.1"}
			stats := statsWhen(t, tr, func(stats map[StatsKey]Totals) bool {
				return stats[client].Count == n && stats[server].Count == n
			})
			if cl := stats[client]; cl.Count != n || cl.BytesSum != c.client*n {
				t.Errorf("client: %d requests of %d bytes, want %d of %d", cl.Count, cl.BytesSum, n, c.client*n)
			}
			if s := stats[server]; s.Count != n || s.BytesSum != c.server*n {
				t.Errorf("server: %d requests of %d bytes, want %d of %d", s.Count, s.BytesSum, n, c.server*n)
			}
			noneLost(t, tr)
		})
	}
}

// groupInGo says whether a program built with Go version v (the test's,
// which builds the fixtures) has a group's functions: from Go 1.27 on,
// net/http's HTTP/2 server is an internal package, which x/net's wraps.
func groupInGo(group, v string) bool {
	switch group {
	case "x/net/http2 server":
		return version.Compare(v, "go1.27") < 0
	case "net/http/internal/http2 server":
		return version.Compare(v, "go1.27") >= 0
	}
	return true
}

// noneLost checks that tr dropped no request and holds none open.
func noneLost(t *testing.T, tr *HTTPTracer) {
	t.Helper()
	if d, _ := tr.Drops(); d != 0 {
		t.Errorf("%d dropped", d)
	}
	if open, err := tr.Open(); err != nil || open != 0 {
		t.Errorf("%d requests still open (%v), want none", open, err)
	}
}

// trace probes process pid of bin for the test's length.
func trace(t *testing.T, bin string, pid int, events bool) *HTTPTracer {
	t.Helper()
	tr, err := TraceHTTP(bin, pid, events)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// statsWhen reads tr's aggregates until done says they are complete, or
// for 5 seconds, and returns the last read.
func statsWhen(t *testing.T, tr *HTTPTracer, done func(map[StatsKey]Totals) bool) map[StatsKey]Totals {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		stats, err := tr.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if done(stats) || time.Now().After(deadline) {
			return stats
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// collect reads n requests from tr, as "kind proto method path status
// grpc-status bytes req-bytes peer" lines.
func collect(t *testing.T, tr *HTTPTracer, n int) []string {
	t.Helper()
	return format(collectRequests(t, tr, n))
}

// collectRequests reads n requests from tr (fewer if they do not come).
func collectRequests(t *testing.T, tr *HTTPTracer, n int) []Request {
	t.Helper()
	var got []Request
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		reqs, err := tr.Read(time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range reqs {
			if r.Duration <= 0 {
				t.Errorf("event %+v: no duration", r)
			}
		}
		got = append(got, reqs...)
	}
	return got
}

// format writes requests as collect's lines.
func format(reqs []Request) []string {
	var out []string
	for _, r := range reqs {
		g := "-"
		if r.GRPCStatus >= 0 {
			g = fmt.Sprint(r.GRPCStatus)
		}
		out = append(out, fmt.Sprintf("%s %d %s %s %d %s %d %d %s", r.Kind, r.ProtoMajor, r.Method, r.Path, r.Status, g, r.Bytes, r.ReqBytes, r.Peer))
	}
	return out
}

// streamPause and gzippedLen are testdata/httpserver's StreamPause and
// the size of its /gzip body (the same text, compressed the same way).
const streamPause = 300 * time.Millisecond

func gzippedLen(t *testing.T) int {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	io.WriteString(z, strings.Repeat("hello, ", 20))
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Len()
}

// TestTracerSharesMapsAndPrograms probes two processes of one executable
// with one Tracer: the programs are loaded once, each process's requests
// are counted under its own pid in the shared maps, and what a process
// leaves is forgotten when it goes.
func TestTracerSharesMapsAndPrograms(t *testing.T) {
	testutil.Privileged(t)
	bin := testutil.BuildGo(t, "./testdata/httpserver", "")
	tr, err := NewTracer(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var pids []uint32
	var addrs []string
	var procs []*Process
	for range 2 {
		srv := testutil.Start(t, bin)
		addr := srv.Line(t)
		p, err := tr.Attach(bin, srv.Pid())
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
		pids = append(pids, uint32(srv.Pid()))
		addrs = append(addrs, addr)
	}
	if n := len(tr.progs); n != 1 || tr.progs[procs[0].id].users != 2 {
		t.Fatalf("%d program sets loaded for one executable (users %d), want 1 used by 2", n, tr.progs[procs[0].id].users)
	}
	for i, addr := range addrs {
		for range i + 1 { // one request to the first, two to the second
			resp, err := http.Get("http://" + addr + "/ok")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	count := func(st map[StatsKey]Totals) uint64 {
		var n uint64
		for k, v := range st {
			if k.Kind == HTTPServer {
				n += v.Count
			}
		}
		return n
	}
	stats, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if count(stats[pids[0]]) != 1 || count(stats[pids[1]]) != 2 {
		t.Fatalf("server requests by pid: %d, %d; want 1, 2", count(stats[pids[0]]), count(stats[pids[1]]))
	}
	// The first process goes: its aggregates are handed over once, and
	// gone from the maps; the second's stay; the programs stay for it.
	procs[0].Close()
	gone, err := tr.Forget(pids[0])
	if err != nil || count(gone) != 1 {
		t.Fatalf("forgot %v (%v), want its one request", gone, err)
	}
	stats, _ = tr.Stats()
	if _, ok := stats[pids[0]]; ok || count(stats[pids[1]]) != 2 {
		t.Fatalf("after forgetting the first: %v", stats)
	}
	if tr.progs[procs[1].id].users != 1 {
		t.Fatalf("program set users %d, want 1", tr.progs[procs[1].id].users)
	}
	procs[1].Close()
	if len(tr.progs) != 0 {
		t.Fatalf("programs still loaded with no process")
	}
}

// TestServerPeerIPv6: a server's client on IPv6 is keyed by its address
// without brackets or port ("[::1]:40000" -> "::1").
func TestServerPeerIPv6(t *testing.T) {
	testutil.Privileged(t)
	bin := testutil.BuildGo(t, "./testdata/httpserver", "")
	srv := testutil.Start(t, bin, "-listen", "[::1]:0")
	addr := srv.Line(t)
	tr := trace(t, bin, srv.Pid(), true)
	resp, err := http.Get("http://" + addr + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := collect(t, tr, 1)
	if want := "http-server 1 GET /missing 404 - 19 0 ::1"; len(got) != 1 || got[0] != want {
		t.Fatalf("seen %q, want %q", got, want)
	}
	stats, _ := tr.Stats()
	if stats[StatsKey{Kind: HTTPServer, Status: 404, GRPCStatus: -1, Peer: "::1"}].Count != 1 {
		t.Fatalf("aggregates %v", stats)
	}
}

// TestServersOnly: with clients left out, a program that serves and calls
// gets only its server probes.
func TestServersOnly(t *testing.T) {
	testutil.Privileged(t)
	bin := testutil.BuildGo(t, "./testdata/httpserver", "")
	srv := testutil.Start(t, bin, "-grpc")
	tr, err := NewTracer(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.ServersOnly = true
	p, err := tr.Attach(bin, srv.Pid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if want := []Kind{HTTPServer, GRPCServer}; !slices.Equal(p.Kinds, want) {
		t.Fatalf("kinds %v, want %v", p.Kinds, want)
	}
}

// leaveOut plans executables without group until the test ends, as if
// its functions were not linked.
func leaveOut(t *testing.T, group string) {
	unplannedGroups = []string{group}
	clearPlans()
	t.Cleanup(func() { unplannedGroups = nil; clearPlans() })
}

// clearPlans forgets every executable read.
func clearPlans() {
	plans.Lock()
	clear(plans.m)
	plans.Unlock()
}
