package dataplane

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// exeKeyOf names the file at path as the kernel does (inode and kernel
// device number).
func exeKeyOf(path string) (sockmap.ExeKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return sockmap.ExeKey{}, err
	}
	return sockmap.ExeKey{Ino: st.Ino, Dev: unix.Major(st.Dev)<<20 | unix.Minor(st.Dev)}, nil
}

// neededLibs returns the shared objects the ELF executable at exe needs,
// directly or through each other (DT_NEEDED), found as the dynamic loader
// would in the file system rooted at root: DT_RUNPATH/DT_RPATH, then the
// usual directories. Libraries loaded later with dlopen are not known here
// (the splice watch remains for them). A library it cannot find is an
// error: its imports cannot be judged.
func neededLibs(root, exe string) ([]string, error) {
	var libs []string
	seen := map[string]bool{}
	queue := []string{exe}
	for len(queue) > 0 {
		obj := queue[0]
		queue = queue[1:]
		f, err := elf.Open(obj)
		if err != nil {
			return nil, err
		}
		needed, _ := f.ImportedLibraries()
		var dirs []string
		for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
			paths, _ := f.DynString(tag)
			for _, p := range paths {
				for _, d := range strings.Split(p, ":") {
					// $ORIGIN is the object's directory, inside root.
					origin := strings.TrimPrefix(filepath.Dir(obj), root)
					dirs = append(dirs, strings.NewReplacer("$ORIGIN", origin, "${ORIGIN}", origin).Replace(d))
				}
			}
		}
		f.Close()
		dirs = append(dirs, libDirs...)
		for _, name := range needed {
			if seen[name] {
				continue
			}
			seen[name] = true
			path := ""
			for _, d := range dirs {
				if p := filepath.Join(root, d, name); fileExists(p) {
					path = p
					break
				}
			}
			if path == "" {
				return nil, fmt.Errorf("%s: library %s not found", filepath.Base(exe), name)
			}
			libs = append(libs, path)
			queue = append(queue, path)
		}
	}
	return libs, nil
}

// libDirs are where the dynamic loader looks after an object's own paths
// (Debian's multiarch directories first).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
