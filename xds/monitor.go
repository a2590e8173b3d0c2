package xds

import (
	"encoding/json"
	"net/http"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

type serverMetrics struct {
	reg       *prometheus.Registry
	translate prometheus.Histogram
}

func newServerMetrics(s *Server) *serverMetrics {
	m := &serverMetrics{
		reg: prometheus.NewRegistry(),
		translate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sockmesh_xds_push_seconds",
			Help:    "Time from a mesh change to a new snapshot in the cache (translation included).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
	}
	m.reg.MustRegister(m.translate,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sockmesh_xds_pushes_total", Help: "xDS responses sent (SotW and delta)."},
			func() float64 { return float64(s.tracker.pushes.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sockmesh_xds_nacks_total", Help: "xDS responses clients rejected."},
			func() float64 { return float64(s.tracker.nacks.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sockmesh_xds_connected_clients", Help: "Open ADS streams."},
			func() float64 { return float64(s.tracker.connected()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// monitorHandler serves Istio's http-monitoring port: /metrics,
// /debug/syncz (the same client states as CSDS and ADS syncz, as JSON) and
// /debug/config_dump (the resources being served).
func (s *Server) monitorHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/syncz", func(w http.ResponseWriter, _ *http.Request) {
		var out []json.RawMessage
		for _, cc := range s.tracker.clientConfigs(nil) {
			b, err := protojson.Marshal(cc)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			out = append(out, b)
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /debug/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		res := s.resource
		s.mu.Unlock()
		out := map[string][]json.RawMessage{}
		for name, items := range map[string][]types.Resource{
			"listeners": res.Listeners, "routes": res.Routes, "clusters": res.Clusters, "endpoints": res.Endpoints,
		} {
			out[name] = []json.RawMessage{}
			for _, it := range items {
				b, err := protojson.Marshal(it.(proto.Message))
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				out[name] = append(out[name], b)
			}
		}
		writeJSON(w, out)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
