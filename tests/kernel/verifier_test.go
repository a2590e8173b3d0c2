package kernel

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockmesh/sockmesh/bpf/verifier"
	"github.com/sockmesh/sockmesh/install/precheck"
	"github.com/sockmesh/sockmesh/internal/testutil"
)

// TestBrokenProgramIsReportedWithItsLog loads a program the verifier must
// reject (it returns without setting R0) and checks the error carries the
// verifier's log.
func TestBrokenProgramIsReportedWithItsLog(t *testing.T) {
	testutil.Privileged(t)
	_, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "broken",
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Return()},
	})
	err = verifier.Explain("broken test program", err)
	if err == nil {
		t.Fatal("the verifier accepted a program that returns an unset R0")
	}
	if !strings.Contains(err.Error(), "verifier log:") || !strings.Contains(err.Error(), "R0 !read_ok") {
		t.Fatalf("error lacks the verifier log:\n%v", err)
	}
}

// TestPrecheck reports what this kernel has (the table lands in the test
// log, once per kernel of the matrix) and requires what routing needs.
func TestPrecheck(t *testing.T) {
	testutil.Privileged(t)
	var b strings.Builder
	err := precheck.Write(&b, precheck.Run())
	t.Logf("precheck:\n%s", b.String())
	if err != nil {
		t.Fatal(err)
	}
}
