package dataplane

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildGo builds a one-file Go program in its own module.
func buildGo(t *testing.T, src string, ldflags ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module fixture\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"build", "-o", "prog"}
	if len(ldflags) > 0 {
		args = append(args, "-ldflags="+strings.Join(ldflags, " "))
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "prog")
}

// buildC compiles a one-file C program.
func buildC(t *testing.T, src string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("gcc", append(flags, "-o", "prog", "main.c")...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return filepath.Join(dir, "prog")
}

func TestSpliceRisk(t *testing.T) {
	const goEcho = `package main

import "net"

func main() {
	c, err := net.Dial("tcp", "127.0.0.1:1")
	if err != nil {
		return
	}
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	c.Write(buf[:n])
}
`
	const goCopy = `package main

import (
	"io"
	"net"
)

func main() {
	c, err := net.Dial("tcp", "127.0.0.1:1")
	if err != nil {
		return
	}
	io.Copy(c, c)
}
`
	const cPlain = `#include <unistd.h>
int main(void) { char b[8]; return read(0, b, sizeof b) < 0; }
`
	const cSendfile = `#include <sys/sendfile.h>
int main(void) { return sendfile(1, 0, 0, 4096) < 0; }
`
	const cSplice = `#define _GNU_SOURCE
#include <fcntl.h>
int main(void) { return splice(0, 0, 1, 0, 4096, 0) < 0; }
`
	for _, tc := range []struct {
		name  string
		exe   func() string
		risky bool
		why   string
	}{
		{"Go, Read and Write only", func() string { return buildGo(t, goEcho) }, false, "Go program without"},
		{"Go, io.Copy", func() string { return buildGo(t, goCopy) }, true, "internal/poll.Splice"},
		// Stripped: the pclntab still names the functions.
		{"Go, io.Copy, -s -w", func() string { return buildGo(t, goCopy, "-s", "-w") }, true, "internal/poll.Splice"},
		{"Go, Read and Write only, -s -w", func() string { return buildGo(t, goEcho, "-s", "-w") }, false, "Go program without"},
		{"C, read", func() string { return buildC(t, cPlain) }, false, "does not import splice"},
		{"C, sendfile", func() string { return buildC(t, cSendfile) }, false, "does not import splice"},
		{"C, splice", func() string { return buildC(t, cSplice) }, true, "imports splice"},
		{"C, static", func() string { return buildC(t, cPlain, "-static") }, true, "statically linked"},
		{"not an executable", func() string {
			p := filepath.Join(t.TempDir(), "script")
			os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
			return p
		}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			risky, why := SpliceRisk(tc.exe(), nil)
			if risky != tc.risky || !strings.Contains(why, tc.why) {
				t.Errorf("SpliceRisk = %v, %q; want %v, containing %q", risky, why, tc.risky, tc.why)
			}
		})
	}
}

// TestSpliceRiskLibraries: a library mapped into the process that imports
// splice makes the program risky.
func TestSpliceRiskLibraries(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libcopy.so")
	src := filepath.Join(dir, "copy.c")
	os.WriteFile(src, []byte("#define _GNU_SOURCE\n#include <fcntl.h>\nlong copy(int a, int b) { return splice(a, 0, b, 0, 4096, 0); }\n"), 0o644)
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	exe := buildC(t, "int main(void) { return 0; }\n")
	if risky, why := SpliceRisk(exe, nil); risky {
		t.Fatalf("plain program judged risky: %s", why)
	}
	if risky, why := SpliceRisk(exe, []string{lib}); !risky || !strings.Contains(why, "libcopy.so imports splice") {
		t.Errorf("with libcopy.so: %v, %q", risky, why)
	}
}

// TestNeededLibs: the libraries of a dynamically linked program are found
// as the loader finds them, through RUNPATH with $ORIGIN here, and one that
// imports splice makes the program risky; a library that is missing makes
// it an error.
func TestNeededLibs(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "copy.c")
	os.WriteFile(src, []byte("#define _GNU_SOURCE\n#include <fcntl.h>\nlong copy(int a, int b) { return splice(a, 0, b, 0, 4096, 0); }\n"), 0o644)
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", filepath.Join(dir, "libcopy.so"), src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	main := filepath.Join(dir, "main.c")
	os.WriteFile(main, []byte("long copy(int, int);\nint main(void) { return copy(0, 1) < 0; }\n"), 0o644)
	exe := filepath.Join(dir, "prog")
	if out, err := exec.Command("gcc", "-o", exe, main, "-L"+dir, "-lcopy", "-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	libs, err := neededLibs("/", exe)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range libs {
		found = found || filepath.Base(l) == "libcopy.so"
	}
	if !found {
		t.Fatalf("libcopy.so not among %v", libs)
	}
	if risky, why := SpliceRisk(exe, libs); !risky || !strings.Contains(why, "libcopy.so imports splice") {
		t.Errorf("SpliceRisk = %v, %q", risky, why)
	}
	os.Remove(filepath.Join(dir, "libcopy.so"))
	if _, err := neededLibs("/", exe); err == nil || !strings.Contains(err.Error(), "libcopy.so not found") {
		t.Errorf("a missing library: %v", err)
	}
}
