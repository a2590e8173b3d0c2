package workload

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// Ready tells the test harness the program serves (it waits for the line
// "ready"), then waits for SIGTERM or SIGINT.
func Ready() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("ready")
	<-sig
}

// Accept hands every connection l accepts to handle, in its own
// goroutine, until l is closed.
func Accept(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

// Echo writes back what it reads from c, with Read and Write (never a
// splice), until the peer's EOF, then half-closes c (a *net.TCPConn or a
// *BlockingConn); it returns at the first error. The caller closes c.
func Echo(c io.ReadWriter) {
	buf := make([]byte, 256<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return
		}
	}
}
