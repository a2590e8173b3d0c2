// Package l7 holds the uprobe programs that observe requests inside
// applications (Go's net/http server so far) and their Go bindings.
package l7

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sockmesh/sockmesh/bpf/verifier"
)

// HTTPEvent is one finished request, as the programs report it.
type HTTPEvent = bpfHttpEvent

// Objects are the loaded programs and maps.
type Objects = bpfObjects

// Offsets are the struct field offsets the programs read, by field name as
// node/telemetry/gobin names them ("net/http.Request.Method", ...).
type Offsets map[string]uint64

// HTTPStats are the in-kernel aggregates of one {pid, status}.
type HTTPStats = bpfHttpStats

// HTTPStatsKey keys HTTPStats.
type HTTPStatsKey = bpfHttpStatsKey

// DurationBoundsMs are the upper bounds of HTTPStats.DurationBuckets, in
// milliseconds (Envoy's defaults, which Istio uses).
var DurationBoundsMs = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// BytesBounds are the upper bounds of HTTPStats.BytesBuckets.
var BytesBounds = []float64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8}

// Load loads the HTTP programs with the offsets of one binary's Go
// version. events turns on one ring-buffer event per request (access logs
// and tests); the aggregates in sm_http_stats are always kept.
func Load(off Offsets, events bool) (*Objects, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load l7 spec: %w", err)
	}
	for variable, field := range map[string]string{
		"off_request_method":         "net/http.Request.Method",
		"off_request_url":            "net/http.Request.URL",
		"off_url_path":               "net/url.URL.Path",
		"off_response_req":           "net/http.response.req",
		"off_response_status":        "net/http.response.status",
		"off_response_written":       "net/http.response.written",
		"off_request_content_length": "net/http.Request.ContentLength",
	} {
		v, ok := off[field]
		if !ok {
			return nil, fmt.Errorf("no offset for %s", field)
		}
		if err := spec.Variables[variable].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", variable, err)
		}
	}
	if err := spec.Variables["emit_events"].Set(events); err != nil {
		return nil, fmt.Errorf("set emit_events: %w", err)
	}
	var objs Objects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{}); err != nil {
		return nil, verifier.Explain("l7 http programs", err)
	}
	return &objs, nil
}

// CString turns a NUL-padded byte array from an event into a string.
func CString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
