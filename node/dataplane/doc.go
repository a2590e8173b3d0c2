// Package dataplane owns the kernel state of one agent instance: it loads
// the sock_addr programs, attaches them to the agent's cgroup with bpf_links,
// pins links and maps under the instance's bpffs directory, adopts what a
// previous run left there, and keeps the service maps equal to the desired
// state by writing only differences.
//
// It does not speak xDS; it is given the complete desired state.
package dataplane
