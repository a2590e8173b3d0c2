// Package host discovers what the agent needs from the machine it runs on:
// where cgroup v2 is mounted and a bpffs directory to pin in. It reads the
// host; it loads no BPF.
package host
