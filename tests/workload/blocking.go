package workload

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
)

// BlockingConn does its reads and writes as plain blocking system calls
// on a duplicate of a TCP connection's socket, on one locked OS thread:
// no netpoller, no goroutine parked and woken, as a C program (sockperf,
// netperf) does them. Go's netpoller and scheduler cost a round trip on
// one CPU here ~15 µs of ~21 (a fast path saves the kernel's part only);
// this measures the transport itself. Use it from one goroutine, which it
// locks to its thread until Close.
type BlockingConn struct {
	f  *os.File
	fd int
}

// Blocking returns c's socket as a BlockingConn and closes c (the
// duplicate keeps the connection).
func Blocking(c net.Conn) (*BlockingConn, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, errors.New("not a TCP connection")
	}
	f, err := tc.File() // a duplicate, in blocking mode
	c.Close()
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	return &BlockingConn{f: f, fd: int(f.Fd())}, nil
}

func (b *BlockingConn) Read(p []byte) (int, error) {
	for {
		n, err := syscall.Read(b.fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (b *BlockingConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Write(b.fd, p[done:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// CloseWrite half-closes the connection.
func (b *BlockingConn) CloseWrite() error { return syscall.Shutdown(b.fd, syscall.SHUT_WR) }

// Close closes the socket and unlocks the thread.
func (b *BlockingConn) Close() error {
	runtime.UnlockOSThread()
	return b.f.Close()
}
