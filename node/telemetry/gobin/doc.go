// Package gobin reads what uprobes need from a Go executable: that it is Go
// (and which version), where functions start and end, found through the
// pclntab so binaries built with -s work, the file offsets of their RET
// instructions (return probes are placed there: uretprobes crash Go
// programs whose stacks move), and struct field offsets from DWARF, with an
// embedded per-version table for binaries built with -w.
//
// It only reads files; attaching probes is the telemetry package's job.
package gobin
