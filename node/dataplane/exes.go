package dataplane

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf/sockmap"
	"github.com/sockmesh/sockmesh/node/telemetry/gobin"
)

// Executables and the fast path (rule 1 of bpf/sockmap): a socket only
// receives redirected data if the program sending on it cannot read a
// socket with splice(2), which would miss that data and wait forever.
// Whether it can is read from the executable, before it could matter.
//
// sendfile(2) from a socket would miss it too, but programs use sendfile to
// send files: its input is a socket only by design, never by accident (Go's
// sendfile path only takes an *os.File). Counting every program that
// imports sendfile (nginx, iperf3, node, half of util-linux) would refuse
// the fast path to most C programs for a case the splice watch still
// catches and counts; splice is the call that reads sockets in practice
// (io.Copy between TCP connections, proxies).

// goSpliceFuncs are the Go functions through which a Go program can splice
// from a socket: the runtime's (io.Copy from a TCP connection, net/http
// responses copying one), and the raw system call wrappers.
var goSpliceFuncs = []string{
	"internal/poll.Splice",
	"syscall.Splice",
	"golang.org/x/sys/unix.Splice",
}

// cSpliceImports are the C library functions that do the same.
var cSpliceImports = []string{"splice"}

// SpliceRisk says whether the program in exe, with the shared objects libs
// mapped into it, can splice from a socket, and why. When it cannot tell (a
// statically linked non-Go program, a file it cannot read), it answers yes:
// the cost of a wrong yes is the normal path, of a wrong no a hang.
func SpliceRisk(exe string, libs []string) (risky bool, why string) {
	if b, err := gobin.Open(exe); err == nil {
		defer b.Close()
		for _, fn := range goSpliceFuncs {
			if _, err := b.Func(fn); err == nil {
				return true, "Go program with " + fn
			}
		}
		return false, "Go program without splice"
	} else if !errors.Is(err, gobin.ErrNotGo) {
		return true, err.Error()
	}
	f, err := elf.Open(exe)
	if err != nil {
		return true, err.Error()
	}
	defer f.Close()
	if f.Section(".dynamic") == nil {
		return true, "statically linked, not Go: its system calls cannot be read"
	}
	for _, obj := range append([]string{exe}, libs...) {
		if imp, err := importsAny(obj, cSpliceImports); err != nil {
			return true, err.Error()
		} else if imp != "" {
			return true, fmt.Sprintf("%s imports %s", filepath.Base(obj), imp)
		}
	}
	return false, "does not import splice"
}

// importsAny returns the first of names that the ELF object at path
// imports (an undefined dynamic symbol), or "".
func importsAny(path string, names []string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF {
			continue
		}
		name, _, _ := strings.Cut(s.Name, "@") // versioned: splice@GLIBC_2.5
		for _, n := range names {
			if name == n {
				return n, nil
			}
		}
	}
	return "", nil
}

// exeKeyOf names the executable of process pid as the kernel does (inode
// and kernel device number).
func exeKeyOf(pid int) (sockmap.ExeKey, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/exe", &st); err != nil {
		return sockmap.ExeKey{}, err
	}
	return sockmap.ExeKey{Ino: st.Ino, Dev: unix.Major(st.Dev)<<20 | unix.Minor(st.Dev)}, nil
}

// mappedObjects returns paths to read the executable of process pid and
// the shared objects mapped into it, through the process's own root.
func mappedObjects(pid int) (exe string, libs []string, err error) {
	proc := "/proc/" + strconv.Itoa(pid)
	f, err := os.Open(proc + "/maps")
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.HasPrefix(fields[5], "/") || seen[fields[5]] {
			continue
		}
		seen[fields[5]] = true
		if strings.Contains(fields[5], ".so") {
			libs = append(libs, proc+"/root"+fields[5])
		}
	}
	return proc + "/exe", libs, sc.Err()
}
