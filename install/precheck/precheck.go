// Package precheck probes the kernel and host features sockmesh uses and
// says what degrades without each (sockmesh precheck, and the kernel
// matrix). It has no Kubernetes dependencies, so the static test binary
// booted in guests stays small.
package precheck

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/rlimit"

	"github.com/sockmesh/sockmesh/bpf/l7"
	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/bpf/sockmap"
	"github.com/sockmesh/sockmesh/node/host"
)

// Check is one kernel or host feature sockmesh uses.
type Check struct {
	Feature  string
	Required bool
	// Since is the upstream kernel release that introduced the feature.
	// make test-kernels verifies them all on Debian's 6.1 and 6.12 and on
	// the host.
	Since string
	// Without says what stops working when the feature is missing.
	Without string
	Probe   func() error
}

// CheckResult is a Check and how it went.
type CheckResult struct {
	Check
	Err error
}

// Checks lists every feature sockmesh uses, required first.
func Checks() []Check {
	prog := func(pt ebpf.ProgramType) func() error { return func() error { return features.HaveProgramType(pt) } }
	mapT := func(mt ebpf.MapType) func() error { return func() error { return features.HaveMapType(mt) } }
	helper := func(pt ebpf.ProgramType, fn asm.BuiltinFunc) func() error {
		return func() error { return features.HaveProgramHelper(pt, fn) }
	}
	return []Check{
		{"cgroup v2 mounted", true, "4.5", "no service routing: programs attach to a cgroup v2", func() error { _, err := host.Cgroup2Mount(); return err }},
		{"cgroup sock_addr programs", true, "5.8", "no service routing (getpeername hooks: 5.8)", prog(ebpf.CGroupSockAddr)},
		{"hash and LRU hash maps", true, "4.10", "no service routing", func() error {
			return errors.Join(features.HaveMapType(ebpf.Hash), features.HaveMapType(ebpf.LRUHash), features.HaveMapType(ebpf.PerCPUArray))
		}},
		{"array-of-maps and batch updates", true, "5.6", "no service routing: services live in two arrays swapped through an array-of-maps, written in batches", func() error {
			if err := errors.Join(features.HaveMapType(ebpf.Array), features.HaveMapType(ebpf.ArrayOfMaps)); err != nil {
				return err
			}
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
			if err != nil {
				return err
			}
			defer m.Close()
			_, err = m.BatchUpdate([]uint32{0}, []uint32{1}, nil)
			return err
		}},
		{"cgroup sock programs (sock_release)", true, "5.9", "getpeername and connected UDP cannot show the VIP", prog(ebpf.CGroupSock)},
		{"bpf_set_retval in sock_addr", true, "5.18", "a service without backends cannot be refused cleanly", helper(ebpf.CGroupSockAddr, asm.FnSetRetval)},
		{"sockaddr programs pass the verifier", true, "5.18", "no service routing", func() error {
			objs, err := sockaddr.Load(sockaddr.LoadOptions{})
			if err != nil {
				return err
			}
			return objs.Close()
		}},
		{"sockops programs", false, "4.13", "no same-node fast path", prog(ebpf.SockOps)},
		{"sk_msg programs", false, "4.17", "no same-node fast path", prog(ebpf.SkMsg)},
		{"sockhash maps", false, "4.18", "no same-node fast path", mapT(ebpf.SockHash)},
		{"socket local storage", false, "5.2", "no same-node fast path", mapT(ebpf.SkStorage)},
		{"raw tracepoints", false, "4.17", "no same-node fast path (splice, exec and cgroup-move watches)", prog(ebpf.RawTracepoint)},
		{"sockhash queue length (sk_psock.msg_tot_len)", false, "6.8", "no same-node fast path: a sender whose peer does not read could not be held back", sockmap.QueueLength},
		{"fast path programs pass the verifier", false, "5.10", "no same-node fast path", func() error {
			objs, err := sockmap.Load("", nil)
			if err != nil {
				return err
			}
			return objs.Close()
		}},
		{"ring buffer maps", false, "5.8", "no L7 telemetry", mapT(ebpf.RingBuf)},
		{"uprobes (uprobe PMU)", false, "4.17", "no L7 telemetry", func() error {
			if _, err := os.Stat("/sys/bus/event_source/devices/uprobe/type"); err != nil {
				return fmt.Errorf("uprobe PMU not found: %w", err)
			}
			return features.HaveProgramType(ebpf.Kprobe)
		}},
		{"uprobe_multi links", false, "6.6", "one uprobe a probe point: detaching a process's probes takes ~100 ms a point instead of one grace period", features.HaveBPFLinkUprobeMulti},
		{"L7 programs pass the verifier", false, "5.8", "no L7 telemetry", func() error {
			maps, err := l7.NewMaps()
			if err != nil {
				return err
			}
			defer maps.Close()
			progs, err := l7.Load(nil, false, l7.MultiUprobes(), maps)
			if err != nil {
				return err
			}
			return progs.Close()
		}},
	}
}

// Run runs every check.
func Run() []CheckResult {
	if err := rlimit.RemoveMemlock(); err != nil {
		return []CheckResult{{Check: Check{Feature: "remove memlock rlimit", Required: true, Since: "-", Without: "nothing can load"}, Err: err}}
	}
	var out []CheckResult
	for _, c := range Checks() {
		out = append(out, CheckResult{Check: c, Err: c.Probe()})
	}
	return out
}

// Write prints results as a table and returns an error if a
// required feature is missing.
func Write(w io.Writer, results []CheckResult) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FEATURE\tSTATUS\tREQUIRED\tSINCE\tWITHOUT IT")
	var missing []string
	defer fmt.Fprintln(w, "SINCE is the upstream release; make test-kernels verifies sockmesh on Debian 6.1, 6.12 and the host kernel.")
	for _, r := range results {
		status := "ok"
		if r.Err != nil {
			status = "missing: " + firstLine(r.Err.Error())
			if r.Required {
				missing = append(missing, r.Feature)
			}
		}
		req := "no"
		if r.Required {
			req = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Feature, status, req, r.Since, r.Without)
	}
	tw.Flush()
	if len(missing) > 0 {
		return fmt.Errorf("required kernel features missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}
