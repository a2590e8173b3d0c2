package testutil

import (
	"bufio"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BuildGo builds the Go main package pkg (a path go build accepts) with
// ldflags into the test's temporary directory and returns the binary.
func BuildGo(tb testing.TB, pkg, ldflags string) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), filepath.Base(pkg))
	if out, err := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin, pkg).CombinedOutput(); err != nil {
		tb.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// Program is a test program started by Start: its output is read line by
// line (test programs print their addresses, one a line), its input
// written to.
type Program struct {
	Cmd   *exec.Cmd
	Stdin io.WriteCloser
	out   *bufio.Reader
}

// Start runs bin with args, killed when the test ends.
func Start(tb testing.TB, bin string, args ...string) *Program {
	tb.Helper()
	p := &Program{Cmd: exec.Command(bin, args...)}
	stdout, err := p.Cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if p.Stdin, err = p.Cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Cmd.Process.Kill(); p.Cmd.Wait() })
	p.out = bufio.NewReader(stdout)
	return p
}

// Line reads the program's next line of output, without its newline.
func (p *Program) Line(tb testing.TB) string {
	tb.Helper()
	l, err := p.out.ReadString('\n')
	if err != nil {
		tb.Fatalf("%s: read output: %v", p.Cmd.Path, err)
	}
	return strings.TrimSpace(l)
}

// Pid is the program's process id.
func (p *Program) Pid() int { return p.Cmd.Process.Pid }
