package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/host"
)

// isolated runs fn on a goroutine locked to an OS thread that has a network
// namespace of its own (only loopback, up) and whose process sits in a
// fresh cgroup, which is returned to fn. Sockets made by fn belong to both.
// Everything is undone afterwards; the thread is discarded.
func isolated(t *testing.T, fn func(cgroup string)) {
	t.Helper()
	testutil.Privileged(t)
	cg := testutil.Cgroup(t)
	done := make(chan struct{})
	var setupErr error
	go func() {
		defer close(done)
		// Never unlocked: the thread dies with the goroutine, and its
		// network namespace with it.
		runtime.LockOSThread()
		if setupErr = unix.Unshare(unix.CLONE_NEWNET); setupErr != nil {
			return
		}
		if setupErr = loopbackUp(); setupErr != nil {
			return
		}
		var back string
		if back, setupErr = enterCgroup(cg); setupErr != nil {
			return
		}
		defer func() {
			if err := moveTo(back); err != nil {
				t.Errorf("leave cgroup: %v", err)
			}
		}()
		fn(cg)
	}()
	<-done
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// enterCgroup moves the whole test process into cg and returns the cgroup
// it was in.
func enterCgroup(cg string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	mnt, err := host.Cgroup2Mount()
	if err != nil {
		return "", err
	}
	back := mnt
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			back = filepath.Join(mnt, rest)
		}
	}
	return back, moveTo(cg)
}

func moveTo(cg string) error {
	return os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0o644)
}
