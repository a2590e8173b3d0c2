// Package sockmap holds the same-node fast path: a sockops program that puts
// established connections of enrolled workloads into a sockhash, an sk_msg
// program that hands each send straight to the peer socket, and an
// lsm_cgroup program that takes a socket off the fast path before a splice
// could hang on it (see sockmap.c for the mechanism).
//
// It loads and describes kernel objects; the agent decides what is enrolled
// and attaches them.
package sockmap
