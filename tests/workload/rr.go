// Package workload is what podbin, rrbin and the kernel tests share: the
// request/response loop and the serving loops.
// It must not copy with io.Copy or anything else that splices: rrbin links
// it and must stay a program the fast path lets receive.
package workload

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"slices"
	"time"
)

// RRResult is what "rr" prints: request/response over one TCP connection.
type RRResult struct {
	Ops     int     `json:"ops"`
	OpsPerS float64 `json:"opsPerS"`
	P50us   float64 `json:"p50us"`
	P99us   float64 `json:"p99us"`
}

// RoundTrips writes size bytes to w and reads their echo from r, n times,
// timing each round trip.
func RoundTrips(w io.Writer, r io.Reader, n, size int) (RRResult, error) {
	req, resp := make([]byte, size), make([]byte, size)
	lat := make([]time.Duration, n)
	start := time.Now()
	for i := range lat {
		t0 := time.Now()
		if _, err := w.Write(req); err != nil {
			return RRResult{}, err
		}
		if _, err := io.ReadFull(r, resp); err != nil {
			return RRResult{}, err
		}
		lat[i] = time.Since(t0)
	}
	total := time.Since(start)
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return RRResult{
		Ops: n, OpsPerS: float64(n) / total.Seconds(),
		P50us: us(lat[len(lat)/2]), P99us: us(lat[len(lat)*99/100]),
	}, nil
}

// DialGreeted connects to a server that greets with one line, and reads
// the greeting; anything sent after it is an error (nothing may be left
// buffered in this process: the fast path's ordering tests depend on it).
func DialGreeted(addr string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := bufio.NewReaderSize(c, 16)
	if _, err := r.ReadString('\n'); err != nil {
		c.Close()
		return nil, err
	}
	if r.Buffered() > 0 {
		c.Close()
		return nil, errors.New("data after the greeting")
	}
	return c, nil
}

// RequestResponse is the "rr" command: it connects to an echo server
// once, then sends -size bytes and waits for their echo -n times, and
// prints an RRResult as JSON.
func RequestResponse(args []string) error {
	fs := flag.NewFlagSet("rr", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port of an echo server that greets")
	n := fs.Int("n", 10000, "round trips")
	size := fs.Int("size", 1, "bytes per request")
	blocking := fs.Bool("blocking", false, "blocking system calls on a locked thread, no netpoller (see BlockingConn)")
	fs.Parse(args)
	c, err := DialGreeted(*addr)
	if err != nil {
		return err
	}
	var rw io.ReadWriteCloser = c
	if *blocking {
		if rw, err = Blocking(c); err != nil {
			return err
		}
	}
	defer rw.Close()
	res, err := RoundTrips(rw, rw, *n, *size)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
