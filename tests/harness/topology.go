package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/node/host"
)

var topoSeq atomic.Uint32

// Topology is one test's private world: a "node" network namespace holding
// a bridge, pods attached to it, and a cgroup tree:
//
//	<v2 mount>/sockmesh-test-<id>/mesh/<pod>   meshed pods (the attach point is .../mesh)
//	<v2 mount>/sockmesh-test-<id>/plain/<pod>  pods outside the mesh
//
// Pods have addresses in 10.77.0.0/24 and fd77::/64 and no default route.
type Topology struct {
	t      testing.TB
	ID     string
	nodeNS string
	// CgroupRoot contains every cgroup of the topology.
	CgroupRoot string
	// Mesh is the cgroup sockmesh attaches to.
	Mesh string
	// PinDir is the bpffs directory for the topology's sockmesh instance.
	PinDir string

	nodeAddrOnce sync.Once

	mu    sync.Mutex
	pods  []*Pod
	procs []*Proc
	hosts int
}

// New builds an empty topology and registers its removal with t.Cleanup.
func New(t testing.TB) *Topology {
	t.Helper()
	id := fmt.Sprintf("smt%d-%d", os.Getpid()%100000, topoSeq.Add(1))
	mnt, err := host.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	tp := &Topology{
		t:          t,
		ID:         id,
		nodeNS:     id + "-node",
		CgroupRoot: filepath.Join(mnt, "sockmesh-test-"+id),
		PinDir:     filepath.Join(t.TempDir(), "bpf"),
	}
	tp.Mesh = filepath.Join(tp.CgroupRoot, "mesh")
	t.Cleanup(tp.destroy)
	for _, d := range []string{tp.Mesh, filepath.Join(tp.CgroupRoot, "plain")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("create cgroup: %v", err)
		}
	}
	tp.ip("netns", "add", tp.nodeNS)
	tp.ip("-n", tp.nodeNS, "link", "add", "br0", "type", "bridge")
	tp.ip("-n", tp.nodeNS, "link", "set", "br0", "up")
	return tp
}

func (tp *Topology) ip(args ...string) {
	tp.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tp.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// NodeIP is the node namespace's own address on the bridge, for services
// the pods reach "on the node" (a control plane, say). Pods still have no
// default route: only the bridge's subnet is reachable.
var NodeIP = netip.AddrFrom4([4]byte{10, 77, 0, 254})

// OnNode starts a process in the node's network namespace (on the bridge,
// at NodeIP) and waits for a line containing want on its output ("" for no
// wait).
func (tp *Topology) OnNode(name, want, bin string, args ...string) *Proc {
	tp.t.Helper()
	tp.nodeAddrOnce.Do(func() {
		tp.ip("-n", tp.nodeNS, "addr", "add", NodeIP.String()+"/24", "dev", "br0")
		tp.ip("-n", tp.nodeNS, "link", "set", "lo", "up")
	})
	return tp.start(name, func() (*exec.Cmd, func(), error) {
		cmd := tp.nodeCommand(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return cmd, func() {}, nil
	}, want)
}

// RunOnNode runs a command to completion in the node's network namespace
// and returns its combined output.
func (tp *Topology) RunOnNode(bin string, args ...string) (string, error) {
	out, err := tp.nodeCommand(bin, args...).CombinedOutput()
	return string(out), err
}

// nodeCommand runs bin in the node's network namespace only. Not with
// ip netns exec: that also remounts /sys, which hides the cgroup v2 and
// bpffs mounts an agent on the node needs.
func (tp *Topology) nodeCommand(bin string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + tp.nodeNS, "--", bin}, args...)...)
}

// Pod is a network namespace on the topology's bridge with a cgroup.
type Pod struct {
	tp     *Topology
	Name   string
	NS     string
	IP4    netip.Addr
	IP6    netip.Addr
	Cgroup string
}

// Pod adds a pod. A meshed pod's processes are routed by sockmesh; others
// are not.
func (tp *Topology) Pod(name string, meshed bool) *Pod {
	tp.t.Helper()
	tp.mu.Lock()
	tp.hosts++
	n := tp.hosts
	tp.mu.Unlock()
	if n > 250 {
		tp.t.Fatal("too many pods in one topology")
	}
	parent := filepath.Join(tp.CgroupRoot, "plain")
	if meshed {
		parent = tp.Mesh
	}
	p := &Pod{
		tp:     tp,
		Name:   name,
		NS:     fmt.Sprintf("%s-%s", tp.ID, name),
		IP4:    netip.AddrFrom4([4]byte{10, 77, 0, byte(n)}),
		IP6:    netip.MustParseAddr(fmt.Sprintf("fd77::%x", n)),
		Cgroup: filepath.Join(parent, name),
	}
	if err := os.Mkdir(p.Cgroup, 0o755); err != nil {
		tp.t.Fatalf("create cgroup: %v", err)
	}
	tp.mu.Lock()
	tp.pods = append(tp.pods, p)
	tp.mu.Unlock()
	veth := fmt.Sprintf("v%d", n)
	tp.ip("netns", "add", p.NS)
	tp.ip("-n", tp.nodeNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.NS)
	tp.ip("-n", tp.nodeNS, "link", "set", veth, "master", "br0", "up")
	tp.ip("-n", p.NS, "link", "set", "lo", "up")
	tp.ip("-n", p.NS, "addr", "add", p.IP4.String()+"/24", "dev", "eth0")
	tp.ip("-n", p.NS, "addr", "add", p.IP6.String()+"/64", "dev", "eth0", "nodad")
	tp.ip("-n", p.NS, "link", "set", "eth0", "up")
	return p
}

// Proc is a process the test started.
type Proc struct {
	Cmd    *exec.Cmd
	Name   string
	output *bytes.Buffer
	done   chan struct{}
	err    error
}

// Output returns what the process printed so far.
func (p *Proc) Output() string { return p.output.String() }

// Stop ends the process with SIGTERM (SIGKILL after 5 s) and waits.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.Cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

type syncBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

// command prepares bin args to run inside the pod's network namespace and
// cgroup. The process is placed in the cgroup as it is created
// (CLONE_INTO_CGROUP), so even its first socket belongs to the pod.
func (p *Pod) command(bin string, args ...string) (*exec.Cmd, func(), error) {
	cg, err := os.Open(p.Cgroup)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.NS, bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Setpgid: true}
	return cmd, func() { cg.Close() }, nil
}

// Start runs podbin with args in the pod, and if waitReady, waits until it
// prints "ready".
func (p *Pod) Start(args ...string) *Proc {
	p.tp.t.Helper()
	_, podbin, err := Binaries()
	if err != nil {
		p.tp.t.Fatal(err)
	}
	return p.tp.start(p.Name, func() (*exec.Cmd, func(), error) { return p.command(podbin, args...) }, "ready")
}

// StartRR starts tests/rrbin in the pod, like Start does podbin.
func (p *Pod) StartRR(args ...string) *Proc {
	p.tp.t.Helper()
	rrbin, err := RRBin()
	if err != nil {
		p.tp.t.Fatal(err)
	}
	return p.tp.start(p.Name, func() (*exec.Cmd, func(), error) { return p.command(rrbin, args...) }, "ready")
}

// StartExec starts any program in the pod and waits until its output
// contains want (unless want is empty).
func (p *Pod) StartExec(want, bin string, args ...string) *Proc {
	p.tp.t.Helper()
	return p.tp.start(p.Name, func() (*exec.Cmd, func(), error) { return p.command(bin, args...) }, want)
}

// StartEnv is Start with extra environment variables.
func (p *Pod) StartEnv(env []string, want string, args ...string) *Proc {
	p.tp.t.Helper()
	_, podbin, err := Binaries()
	if err != nil {
		p.tp.t.Fatal(err)
	}
	return p.tp.start(p.Name, func() (*exec.Cmd, func(), error) {
		cmd, done, err := p.command(podbin, args...)
		if cmd != nil {
			cmd.Env = append(os.Environ(), env...)
		}
		return cmd, done, err
	}, want)
}

// Serve starts a podbin server with id on the given TCP and UDP ports, on
// all of the pod's addresses.
func (p *Pod) Serve(id string, tcpPorts, udpPorts []int) *Proc {
	args := []string{"serve", "-id", id}
	for _, port := range tcpPorts {
		args = append(args, "-tcp", fmt.Sprintf(":%d", port))
	}
	for _, port := range udpPorts {
		args = append(args, "-udp", fmt.Sprintf(":%d", port))
	}
	return p.Start(args...)
}

// DialResult is what podbin dial reports.
type DialResult struct {
	Servers map[string]int `json:"servers"`
	Peers   map[string]int `json:"peers"`
	Errors  map[string]int `json:"errors"`
}

// Dial makes n connections (or request/response datagrams) from the pod
// to addr with podbin and returns what they reached.
func (p *Pod) Dial(proto, addr string, n int) DialResult {
	p.tp.t.Helper()
	var res DialResult
	p.RunJSON(&res, "dial", "-proto", proto, "-addr", addr, "-n", strconv.Itoa(n), "-timeout", "2s")
	return res
}

// RunJSON runs podbin with args in the pod to completion and decodes its
// JSON output into v.
func (p *Pod) RunJSON(v any, args ...string) {
	p.tp.t.Helper()
	p.RunJSONEnv(v, nil, args...)
}

// RunJSONWith is RunJSON with any program (bin and its arguments).
func (p *Pod) RunJSONWith(v any, bin string, args ...string) {
	p.tp.t.Helper()
	p.runJSON(bin, v, nil, args...)
}

// RunRRJSON is RunJSON with tests/rrbin.
func (p *Pod) RunRRJSON(v any, args ...string) {
	p.tp.t.Helper()
	rrbin, err := RRBin()
	if err != nil {
		p.tp.t.Fatal(err)
	}
	p.runJSON(rrbin, v, nil, args...)
}

// RunJSONEnv is RunJSON with extra environment variables.
func (p *Pod) RunJSONEnv(v any, env []string, args ...string) {
	p.tp.t.Helper()
	_, podbin, err := Binaries()
	if err != nil {
		p.tp.t.Fatal(err)
	}
	p.runJSON(podbin, v, env, args...)
}

func (p *Pod) runJSON(bin string, v any, env []string, args ...string) {
	p.tp.t.Helper()
	cmd, done, err := p.command(bin, args...)
	if err != nil {
		p.tp.t.Fatal(err)
	}
	defer done()
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		p.tp.t.Fatalf("%s %s in %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), p.Name, err, stderr.String())
	}
	if err := json.Unmarshal(out, v); err != nil {
		p.tp.t.Fatalf("%s %s output %q: %v", filepath.Base(bin), args[0], out, err)
	}
}

// Exec runs any program in the pod (network namespace, cgroup, and its
// /etc/netns/NS files, e.g. resolv.conf) to completion and returns its
// combined output.
func (p *Pod) Exec(bin string, args ...string) (string, error) {
	cmd, done, err := p.command(bin, args...)
	if err != nil {
		return "", err
	}
	defer done()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ResolvConf gives the pod its own /etc/resolv.conf (ip netns exec binds
// /etc/netns/NS/resolv.conf over it), removed with the topology.
func (p *Pod) ResolvConf(content string) {
	p.tp.t.Helper()
	dir := filepath.Join("/etc/netns", p.NS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.tp.t.Fatal(err)
	}
	p.tp.t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(content), 0o644); err != nil {
		p.tp.t.Fatal(err)
	}
}

// Sysctl sets a per-namespace sysctl in the pod.
func (p *Pod) Sysctl(key, value string) {
	p.tp.t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", p.NS, "sysctl", "-qw", key+"="+value).CombinedOutput(); err != nil {
		p.tp.t.Fatalf("sysctl %s in %s: %v\n%s", key, p.Name, err, out)
	}
}

// start runs a process and waits for a line containing want on its output.
func (tp *Topology) start(name string, prepare func() (*exec.Cmd, func(), error), want string) *Proc {
	tp.t.Helper()
	cmd, done, err := prepare()
	if err != nil {
		tp.t.Fatal(err)
	}
	defer done()
	out := &syncBuffer{}
	pr, pw, err := os.Pipe()
	if err != nil {
		tp.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		tp.t.Fatalf("start %s: %v", name, err)
	}
	pw.Close()
	proc := &Proc{Cmd: cmd, Name: name, output: &out.Buffer, done: make(chan struct{})}
	tp.mu.Lock()
	tp.procs = append(tp.procs, proc)
	tp.mu.Unlock()
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		var once sync.Once
		for sc.Scan() {
			out.Write(append(sc.Bytes(), '\n'))
			if want != "" && strings.Contains(sc.Text(), want) {
				once.Do(func() { close(found) })
			}
		}
	}()
	go func() {
		proc.err = cmd.Wait()
		close(proc.done)
	}()
	if want == "" {
		return proc
	}
	select {
	case <-found:
		return proc
	case <-proc.done:
		tp.t.Fatalf("%s exited before it was ready: %v\n%s", name, proc.err, out.String())
	case <-time.After(15 * time.Second):
		tp.t.Fatalf("%s not ready after 15s\n%s", name, out.String())
	}
	return nil
}

// Sockmesh is a running `sockmesh up`.
type Sockmesh struct {
	*Proc
	tp      *Topology
	Admin   string // host:port of the admin API
	XDS     string // host:port of the control plane
	Metrics string // host:port of /metrics
	Monitor string // host:port of the control plane's monitoring
	DNS     string // host:port of the agent's DNS server
}

// StartSockmesh runs `sockmesh up` attached to the topology's mesh cgroup
// with extra args (e.g. -f FILE) and waits until /ready answers 200.
func (tp *Topology) StartSockmesh(args ...string) *Sockmesh {
	tp.t.Helper()
	return tp.startSockmesh(&Sockmesh{Admin: FreePort(tp.t), XDS: FreePort(tp.t), Metrics: FreePort(tp.t), Monitor: FreePort(tp.t), DNS: FreePort(tp.t)}, args...)
}

func (tp *Topology) startSockmesh(addrs *Sockmesh, args ...string) *Sockmesh {
	tp.t.Helper()
	bin, _, err := Binaries()
	if err != nil {
		tp.t.Fatal(err)
	}
	full := []string{"up", "--cgroup", tp.Mesh, "--pin-dir", tp.PinDir,
		"--admin-address", addrs.Admin, "--xds-address", addrs.XDS, "--metrics-address", addrs.Metrics,
		"--monitoring-address", addrs.Monitor, "--dns-address", addrs.DNS, "--node-id", tp.ID}
	if !slices.Contains(args, "--dns-upstream") {
		// Nothing outside the machine: no upstream answers.
		full = append(full, "--dns-upstream", "127.0.0.1:9")
	}
	full = append(full, args...)
	proc := tp.start("sockmesh", func() (*exec.Cmd, func(), error) {
		cmd := exec.Command(bin, full...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return cmd, func() {}, nil
	}, "")
	s := &Sockmesh{Proc: proc, tp: tp, Admin: addrs.Admin, XDS: addrs.XDS, Metrics: addrs.Metrics, Monitor: addrs.Monitor, DNS: addrs.DNS}
	s.WaitReady()
	return s
}

// Attach makes a Sockmesh for an agent the test started itself, so the
// helpers (WaitReady, Get, Maps) work on it.
func Attach(t testing.TB, s *Sockmesh) *Sockmesh {
	s.tp = &Topology{t: t}
	if s.Proc == nil {
		s.Proc = &Proc{output: &bytes.Buffer{}, done: make(chan struct{})}
	}
	return s
}

// Restart stops sockmesh and starts it again on the same addresses with the
// same arguments.
func (s *Sockmesh) Restart(args ...string) *Sockmesh {
	s.tp.t.Helper()
	s.Stop()
	return s.tp.startSockmesh(s, args...)
}

// WaitReady waits until the agent's /ready answers 200.
func (s *Sockmesh) WaitReady() {
	s.tp.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if exited, err := s.Exited(); exited {
			s.tp.t.Fatalf("sockmesh exited: %v\n%s", err, s.Output())
		}
		resp, err := http.Get("http://" + s.Admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.tp.t.Fatalf("sockmesh not ready after 15s\n%s", s.Output())
}

// Get fetches a path from the agent's admin API (for /metrics, its metrics
// port; for /monitor/..., the control plane's monitoring port) and returns
// the body.
func (s *Sockmesh) Get(path string) string {
	s.tp.t.Helper()
	addr := s.Admin
	switch {
	case path == "/metrics":
		addr = s.Metrics
	case strings.HasPrefix(path, "/monitor/"):
		addr, path = s.Monitor, strings.TrimPrefix(path, "/monitor")
	}
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		s.tp.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.tp.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		s.tp.t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b)
}

// Maps returns the agent's /maps.
func (s *Sockmesh) Maps() MapsDump {
	s.tp.t.Helper()
	var d MapsDump
	s.getJSON("/maps", &d)
	return d
}

// MapsDump is the part of /maps tests read.
type MapsDump struct {
	Maps struct {
		Services []struct {
			Service  string `json:"service"`
			Slots    int    `json:"slots"`
			Backends []struct {
				Address string `json:"address"`
				Slots   int    `json:"slots"`
			} `json:"backends"`
		} `json:"services"`
		Stats map[string]uint64 `json:"stats"`
	} `json:"maps"`
	XDS struct {
		Acks  uint64 `json:"acks"`
		Nacks uint64 `json:"nacks"`
	} `json:"xds"`
}

func (s *Sockmesh) getJSON(path string, v any) {
	s.tp.t.Helper()
	resp, err := http.Get("http://" + s.Admin + path)
	if err != nil {
		s.tp.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		s.tp.t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		s.tp.t.Fatalf("GET %s: %v", path, err)
	}
}

// FreePort returns a loopback host:port nobody listens on right now.
func FreePort(t testing.TB) string {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		// The kernel may hand the same free port out again before its
		// first taker binds it (seen: admin and monitoring got one port).
		if _, taken := handedOut.LoadOrStore(addr, true); !taken {
			return addr
		}
	}
}

// handedOut remembers every address FreePort returned in this process.
var handedOut sync.Map

// destroy removes everything: processes (by PID), sockmesh's pins and
// attachments, namespaces, cgroups.
func (tp *Topology) destroy() {
	tp.mu.Lock()
	procs, pods := tp.procs, tp.pods
	tp.mu.Unlock()
	for _, p := range procs {
		p.Stop()
		if tp.t.Failed() && p.Name == "sockmesh" {
			tp.t.Logf("sockmesh output:\n%s", p.Output())
		}
	}
	if bin, _, err := Binaries(); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if out, err := exec.CommandContext(ctx, bin, "agent", "--cleanup", "--pin-dir", tp.PinDir).CombinedOutput(); err != nil {
			tp.t.Errorf("sockmesh agent --cleanup: %v\n%s", err, out)
		}
		cancel()
	}
	// Backstop: a bpffs still mounted on the pin dir would outlive the test.
	if ok, _ := host.IsBPFFS(tp.PinDir); ok {
		syscall.Unmount(tp.PinDir, syscall.MNT_DETACH)
	}
	for _, p := range pods {
		exec.Command("ip", "netns", "del", p.NS).Run()
	}
	exec.Command("ip", "netns", "del", tp.nodeNS).Run()
	for _, p := range pods {
		removeCgroup(tp.t, p.Cgroup)
	}
	for _, d := range []string{tp.Mesh, filepath.Join(tp.CgroupRoot, "plain"), tp.CgroupRoot} {
		removeCgroup(tp.t, d)
	}
}

// removeCgroup removes an empty cgroup, retrying briefly while the kernel
// finishes tearing down exited processes.
func removeCgroup(t testing.TB, dir string) {
	var err error
	for range 50 {
		if err = os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("remove cgroup %s: %v", dir, err)
}
