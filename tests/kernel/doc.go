// Package kernel holds the kernel tests: every BPF object sockmesh ships is
// loaded, attached where it belongs and exercised with real traffic, using
// nothing but the Go test binary (no ip, no shell), so the same tests run on
// the host and as the init of a guest kernel (make test-kernels).
//
// Traffic runs in a network namespace of the test's own with only loopback
// up: a VIP that is not translated fails there instead of leaving the
// machine.
package kernel
