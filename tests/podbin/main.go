// Command podbin is the workload the end-to-end tests and benchmarks run in
// their pods: a TCP/UDP server that names itself, and a client that reports
// what it reached and what the kernel showed it, as JSON.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/sockmesh/sockmesh/tests/workload"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: podbin serve|dial [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "proxy":
		err = proxy(os.Args[2:])
	case "dial":
		err = dial(os.Args[2:])
	case "rr":
		err = workload.RequestResponse(os.Args[2:])
	case "connect":
		err = connectRate(os.Args[2:])
	case "connect-loop":
		err = connectLoop(os.Args[2:])
	case "grpc-serve":
		err = grpcServe(os.Args[2:])
	case "grpc-call":
		err = grpcCall(os.Args[2:])
	case "http-serve":
		err = httpServe(os.Args[2:])
	case "http-call":
		err = httpCall(os.Args[2:])
	case "dns-serve":
		err = dnsServe(os.Args[2:])
	case "resolve":
		err = resolve(os.Args[2:])
	case "dns-load":
		err = dnsLoad(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podbin:", err)
		os.Exit(1)
	}
}

// serve answers every TCP connection with "ID\n" and then echoes, and every
// UDP datagram with "ID payload".
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	id := fs.String("id", "", "name to answer with")
	var tcp, udp multi
	fs.Var(&tcp, "tcp", "TCP address to listen on (repeatable)")
	fs.Var(&udp, "udp", "UDP address to listen on (repeatable)")
	fs.Parse(args)
	for _, a := range tcp {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		go workload.Accept(l, func(c net.Conn) {
			defer c.Close()
			fmt.Fprintf(c, "%s\n", *id)
			io.Copy(c, c)
		})
	}
	for _, a := range udp {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 64*1024)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(*id+" "+string(buf[:n])), from)
			}
		}()
	}
	workload.Ready()
	return nil
}

// proxy forwards every TCP connection to -to, copying both ways with
// io.Copy: between two TCP connections that is splice(2).
func proxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	listen := fs.String("listen", ":9000", "TCP address to listen on")
	to := fs.String("to", "", "host:port to forward to")
	fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go workload.Accept(l, func(c net.Conn) {
		defer c.Close()
		up, err := net.Dial("tcp", *to)
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() {
			io.Copy(up, c)
			up.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(c, up)
		c.(*net.TCPConn).CloseWrite()
		<-done
	})
	workload.Ready()
	return nil
}

// Result is what dial prints.
type Result struct {
	// Servers counts answers by server ID.
	Servers map[string]int `json:"servers"`
	// Peers counts the peer addresses the kernel reported (getpeername for
	// TCP and connected UDP, the datagram source for unconnected UDP).
	Peers map[string]int `json:"peers"`
	// Errors counts failures by message.
	Errors map[string]int `json:"errors"`
}

func dial(args []string) error {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port to reach")
	proto := fs.String("proto", "tcp", "tcp, udp (connected) or udp-unconnected")
	n := fs.Int("n", 1, "connections (or datagrams) to make")
	timeout := fs.Duration("timeout", 2*time.Second, "per attempt")
	fs.Parse(args)
	res := Result{Servers: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	for i := 0; i < *n; i++ {
		id, peer, err := once(*proto, *addr, *timeout, i)
		if err != nil {
			res.Errors[errText(err)]++
			continue
		}
		res.Servers[id]++
		res.Peers[peer]++
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func once(proto, addr string, timeout time.Duration, i int) (id, peer string, err error) {
	deadline := time.Now().Add(timeout)
	switch proto {
	case "tcp":
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return "", "", err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "", "", err
		}
		return strings.TrimSpace(line), c.RemoteAddr().String(), nil
	case "udp":
		c, err := net.DialTimeout("udp", addr, timeout)
		if err != nil {
			return "", "", err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		msg := fmt.Sprintf("ping-%d", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", "", err
		}
		buf := make([]byte, 1500)
		k, err := c.Read(buf)
		if err != nil {
			return "", "", err
		}
		return udpID(buf[:k], msg), c.RemoteAddr().String(), nil
	case "udp-unconnected":
		raddr, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return "", "", err
		}
		pc, err := net.ListenPacket("udp", ":0")
		if err != nil {
			return "", "", err
		}
		defer pc.Close()
		pc.SetDeadline(deadline)
		msg := fmt.Sprintf("ping-%d", i)
		if _, err := pc.WriteTo([]byte(msg), raddr); err != nil {
			return "", "", err
		}
		buf := make([]byte, 1500)
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			return "", "", err
		}
		// Normalise ::ffff:a.b.c.d (dual-stack socket) to a.b.c.d.
		ap := from.(*net.UDPAddr).AddrPort()
		return udpID(buf[:k], msg), netipUnmap(ap).String(), nil
	}
	return "", "", fmt.Errorf("unknown proto %q", proto)
}

func udpID(b []byte, msg string) string {
	id, payload, _ := strings.Cut(string(b), " ")
	if payload != msg {
		return "bad-echo"
	}
	return id
}

// errText reduces an error to its syscall errno where there is one, so
// results group by cause ("connection refused", "network is unreachable").
func errText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func netipUnmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ConnectResult is what connect prints.
type ConnectResult struct {
	Conns     int     `json:"conns"`
	ConnsPerS float64 `json:"connsPerS"`
	Errors    int     `json:"errors"`
}

// connectRate opens, uses (reads the server's first line) and closes
// connections one after another for a fixed time.
func connectRate(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port of a podbin server")
	d := fs.Duration("duration", time.Second, "how long")
	fs.Parse(args)
	var res ConnectResult
	buf := make([]byte, 256)
	start := time.Now()
	for time.Since(start) < *d {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			res.Errors++
			continue
		}
		if _, err := c.Read(buf); err != nil {
			res.Errors++
		} else {
			res.Conns++
		}
		c.Close()
	}
	res.ConnsPerS = float64(res.Conns) / time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// connectLoop makes n TCP connects to addr back to back, each on a new
// socket closed at once, whatever their outcome, and prints how many
// failed: the tightest loop of connect() calls, for measuring what the
// connect hook costs with warm caches.
func connectLoop(args []string) error {
	fs := flag.NewFlagSet("connect-loop", flag.ExitOnError)
	addr := fs.String("addr", "", "IPv4 host:port")
	n := fs.Int("n", 10000, "connects")
	fs.Parse(args)
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() {
		return fmt.Errorf("-addr %q: want an IPv4 host:port", *addr)
	}
	sa := &syscall.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	failed := 0
	for range *n {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if syscall.Connect(fd, sa) != nil {
			failed++
		}
		syscall.Close(fd)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]int{"connects": *n, "failed": failed})
}

// httpServe is a net/http server (HTTP/1.1 and h2c): /ok answers 200
// "hello", /fail 500, anything else 404.
func httpServe(args []string) error {
	fs := flag.NewFlagSet("http-serve", flag.ExitOnError)
	addr := fs.String("addr", ":8080", "listen address")
	fs.Parse(args)
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	// HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on one port.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, "hello")
		case "/fail":
			http.Error(w, "boom", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(l)
	workload.Ready()
	return nil
}

// httpCall makes n requests to url with Go's client (HTTP/1.1, or h2c
// with -h2, or h2c through x/net's transport with -xh2), after waiting
// -after (so the agent probes the process first), and prints the status
// codes it got as JSON.
func httpCall(args []string) error {
	fs := flag.NewFlagSet("http-call", flag.ExitOnError)
	url := fs.String("url", "", "URL")
	n := fs.Int("n", 1, "requests")
	method := fs.String("method", "GET", "method")
	body := fs.Int("body", 0, "request body bytes")
	h2 := fs.Bool("h2", false, "HTTP/2 without TLS (prior knowledge)")
	xh2 := fs.Bool("xh2", false, "HTTP/2 without TLS through x/net's transport")
	after := fs.Duration("after", 0, "wait before the first request")
	waitFor := fs.String("wait-for", "", "print ready, then wait until this file exists before the first request")
	fs.Parse(args)
	waitForFile(*waitFor)
	time.Sleep(*after)
	tr := &http.Transport{}
	if *h2 {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	var rt http.RoundTripper = tr
	if *xh2 {
		rt = &http2.Transport{AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			}}
	}
	c := &http.Client{Transport: rt, Timeout: 5 * time.Second}
	codes := map[string]int{}
	for range *n {
		req, err := http.NewRequest(*method, *url, strings.NewReader(strings.Repeat("x", *body)))
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			codes["error"]++
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes[fmt.Sprintf("%s %d", resp.Proto, resp.StatusCode)]++
	}
	return json.NewEncoder(os.Stdout).Encode(codes)
}

// waitForFile, given a path, prints ready and waits until a file is there:
// a benchmark attaches its probes in between.
func waitForFile(path string) {
	if path == "" {
		return
	}
	fmt.Println("ready")
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
