package telemetry

import (
	"bufio"
	"encoding/hex"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// localAddrs lists the non-loopback addresses of a process's network
// namespace (its pod's IPs): IPv4 from /proc/PID/net/fib_trie's local host
// routes, IPv6 from /proc/PID/net/if_inet6.
func localAddrs(pid int) []netip.Addr {
	var out []netip.Addr
	add := func(a netip.Addr) {
		if a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() {
			for _, b := range out {
				if b == a {
					return
				}
			}
			out = append(out, a)
		}
	}
	base := "/proc/" + strconv.Itoa(pid) + "/net/"
	if f, err := os.Open(base + "fib_trie"); err == nil {
		sc := bufio.NewScanner(f)
		var last string
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if rest, ok := strings.CutPrefix(line, "|-- "); ok {
				last = rest
			} else if line == "/32 host LOCAL" {
				if a, err := netip.ParseAddr(last); err == nil {
					add(a)
				}
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile(base + "if_inet6"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || len(f[0]) != 32 {
				continue
			}
			raw, err := hex.DecodeString(f[0])
			if err == nil {
				add(netip.AddrFrom16([16]byte(raw)))
			}
		}
	}
	return out
}
