package kernel

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/node/dataplane"
)

// TestSockaddrRouting loads and attaches all eight sock_addr programs and
// sends TCP and UDP, IPv4 and IPv6, through service VIPs to servers on
// loopback.
func TestSockaddrRouting(t *testing.T) {
	isolated(t, func(cg string) {
		dp := openDataplane(t, cg)

		tcp4, tcpPort4 := serveTCP(t, "127.0.0.1:0", "tcp4-backend")
		defer tcp4.Close()
		tcp6, tcpPort6 := serveTCP(t, "[::1]:0", "tcp6-backend")
		defer tcp6.Close()
		udp, udpPort := serveUDP(t, "127.0.0.1:0")
		defer udp.Close()

		svc := func(vip string, port uint16, proto uint8, backend string, bport uint16) dataplane.Service {
			return dataplane.Service{VIP: netip.MustParseAddr(vip), Port: port, Proto: proto,
				Backends: []dataplane.Backend{{Addr: netip.MustParseAddr(backend), Port: bport, Weight: 1}}}
		}
		if err := dp.Sync([]dataplane.Service{
			svc("10.96.0.1", 80, sockaddr.ProtoTCP, "127.0.0.1", tcpPort4),
			svc("fd00:96::1", 80, sockaddr.ProtoTCP, "::1", tcpPort6),
			svc("10.96.0.1", 53, sockaddr.ProtoUDP, "127.0.0.1", udpPort),
			{VIP: netip.MustParseAddr("10.96.0.2"), Port: 80, Proto: sockaddr.ProtoTCP}, // no backends
		}); err != nil {
			t.Fatal(err)
		}

		// TCP over IPv4 and IPv6: connect4/6 translate, getpeername4/6
		// show the VIP.
		for _, c := range []struct{ addr, want string }{
			{"10.96.0.1:80", "tcp4-backend"},
			{"[fd00:96::1]:80", "tcp6-backend"},
		} {
			conn, err := net.Dial("tcp", c.addr)
			if err != nil {
				t.Fatalf("dial %s: %v", c.addr, err)
			}
			line, err := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err != nil || strings.TrimSpace(line) != c.want {
				t.Fatalf("%s answered %q, %v; want %s", c.addr, line, err, c.want)
			}
			if got := conn.RemoteAddr().String(); got != c.addr {
				t.Errorf("getpeername shows %s, want the VIP %s", got, c.addr)
			}
		}
		// A v4-mapped destination on a dual-stack socket (what many
		// runtimes use) goes through connect6 and getpeername6.
		if peer, err := dialMapped(netip.MustParseAddr("::ffff:10.96.0.1"), 80); err != nil || peer != "[::ffff:10.96.0.1]:80" {
			t.Errorf("v4-mapped connect: peer %s, %v", peer, err)
		}

		// UDP, unconnected (sendmsg4 + recvmsg4) and connected (connect4
		// + recvmsg4 + getpeername4): replies come from the VIP.
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		vip := &net.UDPAddr{IP: net.ParseIP("10.96.0.1"), Port: 53}
		if _, err := pc.WriteTo([]byte("ping"), vip); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, from, err := pc.ReadFrom(buf)
		pc.Close()
		if err != nil || string(buf[:n]) != "ping" || from.String() != "10.96.0.1:53" {
			t.Fatalf("unconnected UDP: %q from %v, %v", buf[:n], from, err)
		}
		uc, err := net.Dial("udp4", "10.96.0.1:53")
		if err != nil {
			t.Fatal(err)
		}
		uc.Write([]byte("pong"))
		n, err = uc.Read(buf)
		if err != nil || string(buf[:n]) != "pong" || uc.RemoteAddr().String() != "10.96.0.1:53" {
			t.Fatalf("connected UDP: %q from %v, %v", buf[:n], uc.RemoteAddr(), err)
		}
		uc.Close()

		// A service without backends is refused; a non-VIP is left
		// alone (and has no route in this namespace).
		if _, err := net.Dial("tcp", "10.96.0.2:80"); err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("service without backends: %v, want connection refused", err)
		}
		if _, err := net.Dial("tcp", "10.96.0.3:80"); err == nil || !strings.Contains(err.Error(), "network is unreachable") {
			t.Errorf("non-VIP: %v, want network is unreachable", err)
		}
		dump, err := dp.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if dump.Stats.Translated < 5 || dump.Stats.Reversed < 4 || dump.Stats.NoBackend != 1 {
			t.Errorf("program counters %+v", dump.Stats)
		}
	})
}

func serveTCP(t *testing.T, addr, id string) (net.Listener, uint16) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", id)
			c.Close()
		}
	}()
	return l, uint16(l.Addr().(*net.TCPAddr).Port)
}

func serveUDP(t *testing.T, addr string) (net.PacketConn, uint16) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc, uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

// dialMapped connects an AF_INET6 socket to a (v4-mapped) address with
// plain syscalls, as Go's net package will not, and returns the peer the
// kernel reports.
func dialMapped(a netip.Addr, port int) (string, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: a.As16(), Port: port}); err != nil {
		return "", err
	}
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "", err
	}
	in6 := sa.(*unix.SockaddrInet6)
	return netip.AddrPortFrom(netip.AddrFrom16(in6.Addr), uint16(in6.Port)).String(), nil
}

// TestAgentBoundServiceFollowsHeartbeat: a RequireAgent service (how DNS
// is captured) is translated only while the agent's heartbeat is fresh.
func TestAgentBoundServiceFollowsHeartbeat(t *testing.T) {
	isolated(t, func(cg string) {
		dp := openDataplane(t, cg)
		l, port := serveTCP(t, "127.0.0.1:0", "agent")
		defer l.Close()
		if err := dp.Sync([]dataplane.Service{{VIP: netip.MustParseAddr("10.96.0.53"), Port: 53, Proto: sockaddr.ProtoTCP, RequireAgent: true,
			Backends: []dataplane.Backend{{Addr: netip.MustParseAddr("127.0.0.1"), Port: port, Weight: 1}}}}); err != nil {
			t.Fatal(err)
		}
		dial := func() error {
			c, err := net.Dial("tcp", "10.96.0.53:53")
			if err == nil {
				c.Close()
			}
			return err
		}
		if err := dial(); err == nil || !strings.Contains(err.Error(), "network is unreachable") {
			t.Fatalf("before any heartbeat: %v, want the original destination (unreachable here)", err)
		}
		if err := dp.Heartbeat(true); err != nil {
			t.Fatal(err)
		}
		if err := dial(); err != nil {
			t.Fatalf("with a fresh heartbeat: %v", err)
		}
		if err := dp.Heartbeat(false); err != nil {
			t.Fatal(err)
		}
		if err := dial(); err == nil {
			t.Fatal("after the agent said it stopped, the service was still captured")
		}
		// An agent that dies without a word: its last heartbeat ages out.
		dp.Heartbeat(true)
		time.Sleep(2100 * time.Millisecond)
		if err := dial(); err == nil {
			t.Fatal("a heartbeat older than 2 s still captured the service")
		}
	})
}

// openDataplane loads and attaches the dataplane to cg with a pin
// directory of the test's, and removes both when the test ends.
func openDataplane(t *testing.T, cg string) *dataplane.Dataplane {
	t.Helper()
	pin := filepath.Join(t.TempDir(), "bpf")
	dp, err := dataplane.Open(dataplane.Config{PinDir: pin, Cgroup: cg}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Close()
		if err := dataplane.Cleanup(pin); err != nil {
			t.Error(err)
		}
	})
	return dp
}

// rawPeer asks the kernel for c's peer address now (Go caches the one it
// saw at connect).
func rawPeer(t *testing.T, c net.Conn) string {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil || serr != nil {
		t.Fatalf("getpeername: %v %v", err, serr)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)).String()
	}
	return fmt.Sprint(sa)
}

// TestPeerSurvivesAgentRestart: a connection made through a VIP before the
// agent restarts still shows the VIP to getpeername after it, and its
// record goes when the socket closes.
func TestPeerSurvivesAgentRestart(t *testing.T) {
	isolated(t, func(cg string) {
		pin := filepath.Join(t.TempDir(), "bpf")
		cfg := dataplane.Config{PinDir: pin, Cgroup: cg}
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		dp, err := dataplane.Open(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := dataplane.Cleanup(pin); err != nil {
				t.Error(err)
			}
		})
		lis, port := serveTCP(t, "127.0.0.1:0", "backend")
		defer lis.Close()
		if err := dp.Sync([]dataplane.Service{{VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Proto: sockaddr.ProtoTCP,
			Backends: []dataplane.Backend{{Addr: netip.MustParseAddr("127.0.0.1"), Port: port, Weight: 1}}}}); err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp", "10.96.0.1:80")
		if err != nil {
			t.Fatal(err)
		}
		dp.Close() // the agent stops; its pins stay
		dp, err = dataplane.Open(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		if got := rawPeer(t, conn); got != "10.96.0.1:80" {
			t.Errorf("after the restart getpeername shows %s, want the VIP", got)
		}
		peers, err := ebpf.LoadPinnedMap(filepath.Join(pin, "maps", "sm_peers"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer peers.Close()
		// The record is the one slot holding the socket's cookie (the
		// first 8 bytes of a slot); it is freed when the socket closes.
		cookie := socketCookie(t, conn)
		held := func() int {
			n := 0
			var k uint32
			var v [48]byte
			it := peers.Iterate()
			for it.Next(&k, &v) {
				if binary.NativeEndian.Uint64(v[:8]) == cookie {
					n++
				}
			}
			if err := it.Err(); err != nil {
				t.Fatal(err)
			}
			return n
		}
		if n := held(); n != 1 {
			t.Fatalf("%d peer records hold the open socket's cookie, want 1", n)
		}
		conn.Close()
		deadline := time.Now().Add(5 * time.Second)
		for held() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the closed socket's peer record is still there")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// socketCookie is the kernel's cookie of conn's socket (SO_COOKIE).
func socketCookie(t *testing.T, conn net.Conn) uint64 {
	t.Helper()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var serr error
	raw.Control(func(fd uintptr) { cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) })
	if serr != nil {
		t.Fatal(serr)
	}
	return cookie
}
