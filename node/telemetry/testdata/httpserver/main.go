// Command httpserver is a Go server and client for telemetry tests.
//
// It serves HTTP/1.1 and unencrypted HTTP/2 (h2c, prior knowledge) on one
// address: /ok (200, "hello"), /slow (200 after 1 ms), /busy (200 after
// 1 ms of CPU), /missing (404), /fail (500), /read (reads the request's
// body, answers its length), /chunked (a chunked body in
// two parts, StreamPause or ?pause= apart), /paused (the same with a
// Content-Length),
// /gzip (a gzip-encoded body), /close (a body until the connection
// closes, written by a hijacked handler) and /hijack
// (takes the connection over: 101, then closes). With -grpc it also
// serves gRPC on a second address: any
// method answers with the status its name asks for (/test.Svc/Ok: OK,
// /test.Svc/NotFound, /test.Svc/Internal ...). It prints its address(es),
// one a line. With -xnet it also serves h2c through golang.org/x/net's
// HTTP/2 server (h2c.NewHandler) on a last address, the same paths.
//
// Lines on its standard input make it a client:
//
//	GET url        an HTTP/1.1 GET
//	GETCLOSE url   an HTTP/1.1 GET whose body is closed unread
//	GETMANY url n goroutines  n HTTP/1.1 GETs at once
//	HEAD url       an HTTP/1.1 HEAD (H2HEAD: over h2c)
//	H2 url         a GET over h2c
//	H2HALF url     a GET over h2c whose body is closed after 5 bytes
//	H2MANY url n goroutines  n GETs over h2c at once
//	H2CANCEL url   a GET over h2c cancelled after 100 ms, its body read till then
//	GRPC target method   a unary gRPC call
//	GRPCS target method  a streaming gRPC call (one message each way)
//	XH2 url        a GET with golang.org/x/net's HTTP/2 transport (h2c)
//	XH2HALF url    the same, with x/net's transport
//	GRPCBADMD target method     a unary call grpc refuses (bad metadata)
//	GRPCMANY target n goroutines  n calls at once, unary and streaming
//	GRPCTWO target  two streams from one goroutine, the first ending first
//
// and it answers each with one line: the status, or "error: ...".
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// workPerMs is how many rounds of work take a millisecond of CPU here,
// measured at start: /busy does that much.
var workPerMs = calibrate()

// work does n rounds of arithmetic no compiler can skip.
//
//go:noinline
func work(n int) uint64 {
	x := uint64(n)
	for range n * 1000 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x & 1
}

//go:noinline
func calibrate() int {
	// The fastest of a few 10-round runs: the machine may be busy now.
	best := time.Hour
	for range 20 {
		start := time.Now()
		work(10)
		best = min(best, time.Since(start))
	}
	return max(1, int(10*time.Millisecond/best))
}

func main() {
	withGRPC := flag.Bool("grpc", false, "serve gRPC too")
	withXNet := flag.Bool("xnet", false, "serve h2c with x/net's HTTP/2 server too")
	listen := flag.String("listen", "127.0.0.1:0", "the HTTP address")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		panic(err)
	}
	fmt.Println(l.Addr())
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, "hello")
		case "/slow":
			time.Sleep(time.Millisecond)
			fmt.Fprint(w, "hello")
		case "/busy":
			fmt.Fprint(w, work(workPerMs))
		case "/fail":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "/read":
			// Reads the request's body, and answers its length.
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, n)
		case "/chunked", "/paused":
			// Chunked ("5\r\nhello\r\n", "7\r\nworld!!\r\n",
			// "0\r\n\r\n": 27 bytes of body on the wire), or with a
			// Content-Length (12), its end StreamPause after its start.
			if r.URL.Path == "/paused" {
				w.Header().Set("Content-Length", "12")
			}
			io.WriteString(w, "hello")
			w.(http.Flusher).Flush()
			pause := StreamPause
			if p, err := time.ParseDuration(r.URL.Query().Get("pause")); err == nil {
				pause = p
			}
			time.Sleep(pause)
			io.WriteString(w, "world!!")
		case "/gzip":
			// Compressed, as Go's client asks for it by itself.
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", strconv.Itoa(len(gzipped)))
			w.Write(gzipped)
		case "/close":
			// No length and not chunked: the body lasts until the
			// connection closes ("no length", 9 bytes).
			hijack(w, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno ", "length")
		case "/hijack":
			// Takes the connection over, as a websocket server would.
			hijack(w, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		default:
			http.NotFound(w, r)
		}
	})
	srv := &http.Server{Protocols: &protos, Handler: handler}
	go srv.Serve(l)
	if *withGRPC {
		gl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		fmt.Println(gl.Addr())
		gs := grpc.NewServer(grpc.UnknownServiceHandler(answer))
		go gs.Serve(gl)
	}
	if *withXNet {
		xl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		fmt.Println(xl.Addr())
		go http.Serve(xl, h2c.NewHandler(handler, &http2.Server{}))
	}
	client(os.Stdin, os.Stdout)
	select {} // serve until killed, even when stdin closes
}

// hijack takes w's connection over, writes parts to it 10 ms apart, and
// closes it.
func hijack(w http.ResponseWriter, parts ...string) {
	c, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	for i, p := range parts {
		if i > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		buf.WriteString(p)
		buf.Flush()
	}
	c.Close()
}

// StreamPause is how long /chunked pauses between its two chunks.
const StreamPause = 300 * time.Millisecond

// gzipped is what /gzip answers: text compressed with gzip.
var gzipped = func() []byte {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	io.WriteString(z, strings.Repeat("hello, ", 20))
	z.Close()
	return b.Bytes()
}()

// ping is what the gRPC client sends: 7 bytes of protobuf, 12 on the
// wire with the message prefix. Messages are read into Empty, which keeps
// unknown fields: any method takes any message.
var ping = wrapperspb.String("ping!")

// answer is every gRPC method: the status is the method's last element.
func answer(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
		return err
	}
	name := method[strings.LastIndex(method, "/")+1:]
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if strings.EqualFold(strings.ReplaceAll(c.String(), "_", ""), name) {
			if c == codes.OK {
				// 6 bytes of protobuf: 11 on the wire.
				return stream.SendMsg(wrapperspb.String("pong"))
			}
			return status.Error(c, "asked for "+name)
		}
	}
	return status.Error(codes.InvalidArgument, "no such status "+name)
}

func client(in io.Reader, out io.Writer) {
	h1 := &http.Client{Timeout: 5 * time.Second}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Protocols: &protos}}
	xh2 := &http.Client{Timeout: 5 * time.Second, Transport: &http2.Transport{AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// Every gRPC command dials its target (f[1]) on a channel of its
		// own.
		var cc *grpc.ClientConn
		if len(f) >= 2 && strings.HasPrefix(f[0], "GRPC") {
			var err error
			if cc, err = grpc.NewClient(f[1], grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
				fmt.Fprintln(out, "error:", err)
				continue
			}
		}
		switch {
		case len(f) == 2 && (f[0] == "GET" || f[0] == "H2" || f[0] == "XH2" || f[0] == "HEAD" || f[0] == "H2HEAD"):
			c := map[string]*http.Client{"GET": h1, "H2": h2, "XH2": xh2, "HEAD": h1, "H2HEAD": h2}[f[0]]
			method := map[bool]string{true: "HEAD", false: "GET"}[strings.HasSuffix(f[0], "HEAD")]
			req, _ := http.NewRequest(method, f[1], nil)
			resp, err := c.Do(req)
			if err != nil {
				fmt.Fprintln(out, "error:", err)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			fmt.Fprintln(out, resp.StatusCode)
		case len(f) == 4 && (f[0] == "GETMANY" || f[0] == "H2MANY"):
			// GETMANY url n goroutines: n HTTP/1.1 GETs at once from
			// that many goroutines, every body read to its end
			// (H2MANY: over h2c).
			c := map[string]*http.Client{"GETMANY": h1, "H2MANY": h2}[f[0]]
			n, _ := strconv.Atoi(f[2])
			par, _ := strconv.Atoi(f[3])
			var wg sync.WaitGroup
			var failed atomic.Int64
			for g := range par {
				wg.Go(func() {
					for i := g; i < n; i += par {
						resp, err := c.Get(f[1])
						if err != nil {
							failed.Add(1)
							continue
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				})
			}
			wg.Wait()
			fmt.Fprintln(out, "failed", failed.Load())
		case len(f) == 2 && f[0] == "H2CANCEL":
			// Over h2c, the request cancelled 100 ms in, the body
			// read until then.
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			req, _ := http.NewRequestWithContext(ctx, "GET", f[1], nil)
			resp, err := h2.Do(req)
			if err != nil {
				cancel()
				fmt.Fprintln(out, "error:", err)
				continue
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			cancel()
			fmt.Fprintln(out, resp.StatusCode, err)
		case len(f) == 2 && (f[0] == "GETCLOSE" || f[0] == "H2HALF" || f[0] == "XH2HALF"):
			// The body closed unread (GETCLOSE), or after its first
			// 5 bytes (the first part of /chunked).
			c := map[string]*http.Client{"GETCLOSE": h1, "H2HALF": h2, "XH2HALF": xh2}[f[0]]
			resp, err := c.Get(f[1])
			if err != nil {
				fmt.Fprintln(out, "error:", err)
				continue
			}
			if f[0] != "GETCLOSE" {
				io.ReadFull(resp.Body, make([]byte, 5))
			}
			resp.Body.Close()
			fmt.Fprintln(out, resp.StatusCode)
		case len(f) == 3 && f[0] == "GRPCS":
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := stream(ctx, cc, f[2])
			cancel()
			fmt.Fprintln(out, status.Code(err))
		case len(f) == 3 && (f[0] == "GRPC" || f[0] == "GRPCBADMD"):
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if f[0] == "GRPCBADMD" {
				// A key grpc refuses: the call fails before it has a
				// stream (Internal).
				ctx = metadata.AppendToOutgoingContext(ctx, "bad key", "x")
			}
			err := cc.Invoke(ctx, f[2], ping, &emptypb.Empty{})
			cancel()
			fmt.Fprintln(out, status.Code(err))
		case len(f) == 2 && f[0] == "GRPCTWO":
			// GRPCTWO target: one goroutine opens a stream that
			// fails (NotFound) and then one that succeeds, and ends
			// the first while the second is open.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
			var codes []string
			a, errA := cc.NewStream(ctx, desc, "/test.Svc/NotFound")
			b, errB := cc.NewStream(ctx, desc, "/test.Svc/Ok")
			if errA == nil && errB == nil {
				codes = append(codes, status.Code(finishStream(a)).String(), status.Code(finishStream(b)).String())
			}
			cancel()
			fmt.Fprintln(out, codes, errA, errB)
		case len(f) == 4 && f[0] == "GRPCMANY":
			// GRPCMANY addr n goroutines: n calls over one channel
			// from that many goroutines at once, unary and streaming,
			// with the statuses in turn.
			n, _ := strconv.Atoi(f[2])
			par, _ := strconv.Atoi(f[3])
			var wg sync.WaitGroup
			var mu sync.Mutex
			codes := map[string]int{}
			for g := range par {
				wg.Go(func() {
					for i := g; i < n; i += par {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						method := manyMethods[i%len(manyMethods)]
						var err error
						if i%2 == 0 {
							err = cc.Invoke(ctx, method, ping, &emptypb.Empty{})
						} else {
							err = stream(ctx, cc, method)
						}
						cancel()
						mu.Lock()
						codes[status.Code(err).String()]++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			fmt.Fprintln(out, codes)
		default:
			fmt.Fprintln(out, "error: bad command", sc.Text())
		}
		if cc != nil {
			cc.Close()
		}
	}
}

// manyMethods are the methods GRPCMANY calls in turn.
var manyMethods = []string{"/test.Svc/Ok", "/test.Svc/NotFound", "/test.Svc/Ok", "/test.Svc/Internal"}

// stream makes a bidirectional streaming call of method: one message
// sent, the sending side closed, then everything received until the end.
func stream(ctx context.Context, cc *grpc.ClientConn, method string) error {
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		return err
	}
	return finishStream(s)
}

// finishStream sends one message on s, closes its sending side and
// receives everything until the end.
func finishStream(s grpc.ClientStream) error {
	if err := s.SendMsg(ping); err != nil {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	for {
		if err := s.RecvMsg(&emptypb.Empty{}); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}
