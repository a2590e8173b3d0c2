// Command rrbin is the request/response and bulk workload of the fast path
// tests and benchmarks. Unlike podbin it never copies with io.Copy, so it
// links no splice or sendfile and the agent lets its sockets receive
// redirected data (see bpf/sockmap, rule 1). Its wire protocol is podbin's:
// the server greets with "ID\n", then echoes.
//
//	rrbin serve -addr :8080 [-id ID] [-blocking]
//	rrbin rr -addr HOST:PORT [-n 10000] [-size 1] [-blocking]
//	rrbin bulk -addr HOST:PORT [-bytes N] [-write 65536]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"time"

	"github.com/sockmesh/sockmesh/tests/workload"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rrbin serve|rr|bulk [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "rr":
		err = workload.RequestResponse(os.Args[2:])
	case "bulk":
		err = bulk(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rrbin:", err)
		os.Exit(1)
	}
}

// serve greets every connection with "ID\n", then echoes what it reads
// until the peer closes its side, and then closes.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", ":8080", "TCP address to listen on")
	id := fs.String("id", "rrbin", "name to greet with")
	blocking := fs.Bool("blocking", false, "echo with blocking system calls, a locked thread per connection (see workload.BlockingConn)")
	fs.Parse(args)
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	go workload.Accept(l, func(c net.Conn) {
		if _, err := c.Write([]byte(*id + "\n")); err != nil {
			c.Close()
			return
		}
		if !*blocking {
			defer c.Close()
			workload.Echo(c)
			return
		}
		if b, err := workload.Blocking(c); err == nil {
			defer b.Close()
			workload.Echo(b)
		}
	})
	workload.Ready()
	return nil
}

// BulkResult is what bulk prints.
type BulkResult struct {
	Bytes     int64   `json:"bytes"`
	MBPerS    float64 `json:"mbPerS"`
	CRC32C    string  `json:"crc32c"`
	Identical bool    `json:"identical"`
}

// bulk streams bytes (a pattern) to an echo server in writes of the given
// size while reading the echo back, half-closes, waits for EOF, and checks
// that what came back is what went out. The check is CRC-32C (hardware
// instructions, ~10 GB/s) rather than SHA-256: at ~2 GB/s, hashing both
// directions took most of the client's CPU and hid the transport's speed
// in the benchmark. The CRC and the byte count still catch bytes lost,
// added, corrupted or out of order within a block (every block is the same
// pattern, so no check of the stream could see two whole blocks swapped).
func bulk(args []string) error {
	fs := flag.NewFlagSet("bulk", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port of an echo server")
	total := fs.Int64("bytes", 64<<20, "bytes to send")
	wsize := fs.Int("write", 64<<10, "bytes per write")
	fs.Parse(args)
	c, err := workload.DialGreeted(*addr)
	if err != nil {
		return err
	}
	defer c.Close()
	block := make([]byte, *wsize)
	for i := range block {
		block[i] = byte(i*7 + i>>8)
	}
	table := crc32.MakeTable(crc32.Castagnoli)
	sent, got := crc32.New(table), crc32.New(table)
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		var n int64
		for n < *total {
			b := block[:min(int64(len(block)), *total-n)]
			if _, err := c.Write(b); err != nil {
				werr <- err
				return
			}
			sent.Write(b)
			n += int64(len(b))
		}
		werr <- c.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := c.Read(buf)
		got.Write(buf[:k])
		n += int64(k)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
	}
	if err := <-werr; err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	sum := fmt.Sprintf("%x", got.Sum(nil))
	return json.NewEncoder(os.Stdout).Encode(BulkResult{
		Bytes: n, MBPerS: float64(n) / secs / 1e6, CRC32C: sum,
		Identical: n == *total && sum == fmt.Sprintf("%x", sent.Sum(nil)),
	})
}
