package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf/sockmap"
)

// seedListeners records in sm_fp_listeners the TCP sockets already
// listening in the processes of newly enrolled cgroups (id -> directory),
// as the sockops program does at listen(2) for later ones. Without it a
// connection to a server that listened before the fast path was loaded
// cannot know whether that server may receive (see sockmap.c, "Which
// connections join"). An entry the program wrote stays: it knows the
// socket's own cgroup.
func (f *FastPath) seedListeners(ids map[uint64]string) error {
	var errs []error
	listening := map[string]map[string]bool{} // netns -> "socket:[inode]" of listeners
	for id, dir := range ids {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			continue // gone, or not a cgroup with processes
		}
		for _, field := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(field)
			if err != nil {
				continue
			}
			if err := f.seedProcess(pid, id, listening); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("listeners of pid %d: %w", pid, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (f *FastPath) seedProcess(pid int, cgroup uint64, listening map[string]map[string]bool) error {
	proc := "/proc/" + strconv.Itoa(pid)
	// A thread may live in a network namespace of its own (setns, or
	// unshare after LockOSThread): look at every thread's, not only the
	// leader's that /proc/PID/net shows. The file descriptors are shared.
	tasks, err := os.ReadDir(proc + "/task")
	if err != nil {
		return err
	}
	socks := map[string]bool{}
	for _, task := range tasks {
		dir := proc + "/task/" + task.Name()
		netns, err := os.Readlink(dir + "/ns/net")
		if err != nil {
			continue // the thread exited
		}
		ns, ok := listening[netns]
		if !ok {
			if ns, err = listeningSockets(dir); err != nil {
				continue
			}
			listening[netns] = ns
		}
		for name := range ns {
			socks[name] = true
		}
	}
	if len(socks) == 0 {
		return nil
	}
	fds, err := os.ReadDir(proc + "/fd")
	if err != nil {
		return err
	}
	var pidfd = -1
	defer func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	for _, e := range fds {
		target, err := os.Readlink(filepath.Join(proc, "fd", e.Name()))
		if err != nil || !socks[target] {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pidfd < 0 {
			if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
				return err
			}
		}
		if err := f.seedListener(pidfd, n, cgroup); err != nil {
			return err
		}
	}
	return nil
}

// seedListener records one listening socket, fd n of the process behind
// pidfd, borrowed for the time of two getsockopt calls.
func (f *FastPath) seedListener(pidfd, n int, cgroup uint64) error {
	fd, err := unix.PidfdGetfd(pidfd, n, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return err
	}
	var port int
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	default:
		return nil
	}
	key := sockmap.ListenerKey{Netns: cookie, Port: uint16(port)}
	if err := f.objs.SmFpListeners.Update(key, cgroup, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return err
	}
	return nil
}

// listeningSockets returns the "socket:[inode]" names of the TCP sockets
// listening in the network namespace of the process or thread at proc.
func listeningSockets(proc string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(filepath.Join(proc, "net", table))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, err
		}
		for i, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if i == 0 || len(f) < 10 || f[3] != "0A" { // 0A: TCP_LISTEN
				continue
			}
			out["socket:["+f[9]+"]"] = true
		}
	}
	return out, nil
}
