package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"time"
)

// AccessEntry is one line of the access log: a request a probed server
// finished, with what the agent knows of the server. Field names follow
// Envoy's access log where it has one.
type AccessEntry struct {
	StartTime            time.Time `json:"start_time"`
	Method               string    `json:"method"`
	Path                 string    `json:"path"`
	Protocol             string    `json:"protocol"`
	ResponseCode         int       `json:"response_code"`
	BytesReceived        uint64    `json:"bytes_received"`
	BytesSent            uint64    `json:"bytes_sent"`
	DurationMs           float64   `json:"duration"`
	Reporter             string    `json:"reporter"`
	DestinationWorkload  string    `json:"destination_workload"`
	DestinationNamespace string    `json:"destination_namespace"`
	DestinationService   string    `json:"destination_service"`
	PID                  uint32    `json:"pid"`
}

// drainAccessLog writes every request the probes report to the access log,
// one JSON object a line, polling the tracers' ring buffers every
// interval (the programs never wake a reader). A line's start time is when
// it was read minus its duration: within one interval of the truth.
func (w *Watcher) drainAccessLog(ctx context.Context, interval time.Duration) {
	enc := json.NewEncoder(w.cfg.AccessLog)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		tracers := make(map[int]*HTTPTracer, len(w.traced))
		for pid, tr := range w.traced {
			tracers[pid] = tr
		}
		w.mu.Unlock()
		for pid, tr := range tracers {
			reqs, err := tr.Read(0)
			if err != nil && !errors.Is(err, os.ErrClosed) {
				w.log.Warn("telemetry: access log", "pid", pid, "err", err)
			}
			if len(reqs) == 0 {
				continue
			}
			w.mu.Lock()
			dst := w.destination(pid)
			w.mu.Unlock()
			now := time.Now()
			for _, r := range reqs {
				enc.Encode(AccessEntry{
					StartTime: now.Add(-r.Duration).UTC(), Method: r.Method, Path: r.Path, Protocol: "HTTP/1.1",
					ResponseCode: r.Status, BytesReceived: r.ReqBytes, BytesSent: r.Bytes, DurationMs: float64(r.Duration) / 1e6,
					Reporter: "destination", DestinationWorkload: orUnknown(dst.Workload),
					DestinationNamespace: orUnknown(dst.Namespace), DestinationService: orUnknown(dst.Service), PID: r.PID,
				})
			}
		}
	}
}
