// Package telemetry observes requests inside applications with uprobes and
// turns them into events (metrics come in a later slice). So far: Go's
// net/http server, HTTP/1.x.
package telemetry
