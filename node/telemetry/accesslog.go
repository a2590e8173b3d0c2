package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"time"
)

// AccessEntry is one line of the access log: a request a probed server
// or client finished, with what the agent knows of both sides. Field
// names follow Envoy's access log where it has one.
type AccessEntry struct {
	StartTime    time.Time `json:"start_time"`
	Method       string    `json:"method"`
	Path         string    `json:"path"` // gRPC: /package.Service/Method
	Protocol     string    `json:"protocol"`
	ResponseCode int       `json:"response_code"`
	// GRPCStatus is the gRPC status code; absent for HTTP.
	GRPCStatus    *int    `json:"grpc_status,omitempty"`
	BytesReceived uint64  `json:"bytes_received"`
	BytesSent     uint64  `json:"bytes_sent"`
	DurationMs    float64 `json:"duration"`
	Reporter      string  `json:"reporter"`
	// Authority is the host a client asked for (reporter source).
	Authority string `json:"authority,omitempty"`
	// DownstreamRemoteAddress is the client's address, as a server saw it
	// (reporter destination; without port).
	DownstreamRemoteAddress string `json:"downstream_remote_address,omitempty"`
	SourceWorkload          string `json:"source_workload"`
	SourceNamespace         string `json:"source_namespace"`
	DestinationWorkload     string `json:"destination_workload"`
	DestinationNamespace    string `json:"destination_namespace"`
	DestinationService      string `json:"destination_service"`
	PID                     uint32 `json:"pid"`
}

// entry turns a request of a process that is self into its access log
// line; now is when it was read.
func (w *Watcher) entry(self Destination, r Request, now time.Time) AccessEntry {
	src, dst := w.peers(self, StatsKey{Kind: r.Kind, Status: r.Status, GRPCStatus: r.GRPCStatus, Peer: r.Peer})
	e := AccessEntry{
		StartTime: now.Add(-r.Duration).UTC(), Method: r.Method, Path: r.Path, Protocol: "HTTP/" + strconv.Itoa(r.ProtoMajor),
		ResponseCode: r.Status, BytesReceived: r.ReqBytes, BytesSent: r.Bytes, DurationMs: float64(r.Duration) / 1e6,
		Reporter: "source", SourceWorkload: orUnknown(src.Workload), SourceNamespace: orUnknown(src.Namespace),
		DestinationWorkload: orUnknown(dst.Workload), DestinationNamespace: orUnknown(dst.Namespace),
		DestinationService: orUnknown(dst.Service), PID: r.PID,
	}
	switch r.ProtoMajor {
	case 1:
		e.Protocol = "HTTP/1.1"
	case 0:
		e.Protocol = "-"
	}
	if r.GRPCStatus >= 0 {
		g := r.GRPCStatus
		e.GRPCStatus = &g
	}
	if r.Kind.Server() {
		e.Reporter, e.DownstreamRemoteAddress = "destination", r.Peer
		// A server's response is what it sent, its request what it got.
	} else {
		e.Authority = r.Peer
		// A client sent the request and received the response.
		e.BytesReceived, e.BytesSent = r.Bytes, r.ReqBytes
	}
	return e
}

// logRequests writes requests to the access log. w.mu is held (each
// request's process is named from what the watcher knows of it); the log
// has its own lock.
func (w *Watcher) logRequests(reqs []Request) {
	if len(reqs) == 0 {
		return
	}
	now := time.Now()
	w.logMu.Lock()
	defer w.logMu.Unlock()
	if w.enc == nil {
		w.enc = json.NewEncoder(w.cfg.AccessLog)
	}
	for _, r := range reqs {
		w.enc.Encode(w.entry(w.self(int(r.PID)), r, now))
	}
}

// drainAccessLog writes every request the probes report to the access log,
// one JSON object a line, polling the shared ring buffer every interval
// (the programs never wake a reader). A line's start time is when it was
// read minus its duration: within one interval of the truth. What a
// process reported just before it exited is written when it is retired.
func (w *Watcher) drainAccessLog(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Read and name under w.mu: a process retired between the two
		// would be named by addresses already forgotten ("unknown").
		w.mu.Lock()
		reqs, err := w.tr.Read(0)
		if err != nil && !errors.Is(err, os.ErrClosed) {
			w.log.Warn("telemetry: access log", "err", err)
		}
		w.logRequests(reqs)
		w.mu.Unlock()
	}
}
