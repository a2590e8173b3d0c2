// Package sockaddr holds the cgroup sock_addr programs that route service
// traffic at connect time, and thin typed wrappers for their maps.
//
// It loads and describes kernel objects; it does not decide what is a service
// (that is the agent's desired state) and it does not attach anything.
package sockaddr
