// Package harness builds throwaway topologies for end-to-end tests and
// benchmarks: pods as network namespaces on a private bridge (no default
// route, so an untranslated VIP fails inside the machine), cgroups as
// workloads, real processes in them, and a real sockmesh binary routing for
// them. Everything is removed when the test ends, also when it fails.
package harness
