// Package tests holds sockmesh's end-to-end tests: real sockmesh, real
// kernel, real processes in network namespaces and cgroups (see harness).
// They need root; see internal/testutil.Privileged.
package tests
