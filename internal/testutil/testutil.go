// Package testutil holds helpers shared by sockmesh's tests.
package testutil

import (
	"os"
	"testing"
)

// PrivilegedEnv, when "1", makes kernel tests fail instead of skip when they
// cannot run. CI sets it: a kernel test CI skipped is a test that did not run.
const PrivilegedEnv = "SOCKMESH_TEST_PRIVILEGED"

// Privileged skips t unless it runs as root, or fails it if PrivilegedEnv
// demands kernel tests.
func Privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(PrivilegedEnv) == "1" {
		t.Fatalf("kernel test needs root, and %s=1 forbids skipping it", PrivilegedEnv)
	}
	t.Skip("kernel test: needs root (set " + PrivilegedEnv + "=1 to make this a failure)")
}
