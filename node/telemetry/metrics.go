package telemetry

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sockmesh/sockmesh/bpf/l7"
)

// Istio's standard metric labels, in Istio's order.
var istioLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// Metrics are the Istio-standard request metrics, so Kiali and the Istio
// Grafana dashboards work unchanged. They are computed when Prometheus
// scrapes, from totals the kernel aggregated.
type Metrics struct {
	totals   func() map[Series]Totals
	health   func() Health
	requests *prometheus.Desc
	duration *prometheus.Desc
	reqSize  *prometheus.Desc
	respSize *prometheus.Desc

	processes, probes, dropped, attachErrors *prometheus.Desc
}

// Health is how the telemetry itself is doing.
type Health struct {
	Processes    int    // processes carrying probes now
	Probes       int    // probe points attached in them
	Dropped      uint64 // requests not counted or not reported (all time)
	AttachErrors uint64 // processes that could not be probed (all time)
}

// Series is one label set of the request metrics.
type Series struct {
	Kind        Kind // the reporter and protocol
	Source      Peer
	Destination Destination
	Status      int
	GRPCStatus  int // -1: not gRPC
}

// NewMetrics makes the collector; totals and health are called on every
// scrape.
func NewMetrics(totals func() map[Series]Totals, health func() Health) *Metrics {
	return &Metrics{
		totals:    totals,
		health:    health,
		processes: prometheus.NewDesc("sockmesh_telemetry_processes_instrumented", "Processes carrying request probes now.", nil, nil),
		probes:    prometheus.NewDesc("sockmesh_telemetry_probes_attached", "Uprobe points attached in instrumented processes now.", nil, nil),
		dropped: prometheus.NewDesc("sockmesh_telemetry_requests_dropped_total",
			"Requests the probes could not count or report (no start slot, a full stats map or ring buffer).", nil, nil),
		attachErrors: prometheus.NewDesc("sockmesh_telemetry_attach_errors_total", "Go processes that could not be probed (see the agent's log).", nil, nil),
		requests:     prometheus.NewDesc("istio_requests_total", "Requests, as Istio counts them.", istioLabels, nil),
		duration:     prometheus.NewDesc("istio_request_duration_milliseconds", "Request duration in milliseconds.", istioLabels, nil),
		reqSize:      prometheus.NewDesc("istio_request_bytes", "Request body size in bytes (HTTP: Content-Length, 0 when chunked; gRPC: messages with their 5-byte prefixes).", istioLabels, nil),
		respSize:     prometheus.NewDesc("istio_response_bytes", "Response body size in bytes (gRPC: messages with their 5-byte prefixes).", istioLabels, nil),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.requests
	ch <- m.duration
	ch <- m.reqSize
	ch <- m.respSize
	ch <- m.processes
	ch <- m.probes
	ch <- m.dropped
	ch <- m.attachErrors
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	h := m.health()
	ch <- prometheus.MustNewConstMetric(m.processes, prometheus.GaugeValue, float64(h.Processes))
	ch <- prometheus.MustNewConstMetric(m.probes, prometheus.GaugeValue, float64(h.Probes))
	ch <- prometheus.MustNewConstMetric(m.dropped, prometheus.CounterValue, float64(h.Dropped))
	ch <- prometheus.MustNewConstMetric(m.attachErrors, prometheus.CounterValue, float64(h.AttachErrors))
	for s, t := range m.totals() {
		labels := seriesLabels(s)
		ch <- prometheus.MustNewConstMetric(m.requests, prometheus.CounterValue, float64(t.Count), labels...)
		ch <- prometheus.MustNewConstHistogram(m.duration, t.Count, float64(t.DurationSumNs)/1e6, cumulative(t.DurationBuckets[:], l7.DurationBoundsMs), labels...)
		ch <- prometheus.MustNewConstHistogram(m.reqSize, t.Count, float64(t.ReqBytesSum), cumulative(t.ReqBytesBuckets[:], l7.BytesBounds), labels...)
		ch <- prometheus.MustNewConstHistogram(m.respSize, t.Count, float64(t.BytesSum), cumulative(t.BytesBuckets[:], l7.BytesBounds), labels...)
	}
}

// cumulative turns per-bucket counts into Prometheus' cumulative ones.
func cumulative(counts []uint64, bounds []float64) map[float64]uint64 {
	out := make(map[float64]uint64, len(bounds))
	var sum uint64
	for i, b := range bounds {
		sum += counts[i]
		out[b] = sum
	}
	return out
}

// Peer is what is known about one side of a request; empty fields become
// "unknown", as Istio reports them.
type Peer struct {
	Workload, Namespace, Principal, App, Version, CanonicalService, CanonicalRevision, Cluster string
}

// Destination adds the service to a destination peer.
type Destination struct {
	Peer
	Service, ServiceName, ServiceNamespace string
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// seriesLabels are the label values of a series, in istioLabels' order.
func seriesLabels(s Series) []string {
	src, dst := s.Source, s.Destination
	reporter := "source"
	if s.Kind.Server() {
		reporter = "destination"
	}
	grpcStatus := ""
	if s.GRPCStatus >= 0 {
		grpcStatus = strconv.Itoa(s.GRPCStatus)
	}
	return []string{
		reporter,
		orUnknown(src.Workload), orUnknown(src.Namespace), orUnknown(src.Principal), orUnknown(src.App), orUnknown(src.Version),
		orUnknown(src.CanonicalService), orUnknown(src.CanonicalRevision), orUnknown(src.Cluster),
		orUnknown(dst.Workload), orUnknown(dst.Namespace), orUnknown(dst.Principal), orUnknown(dst.App), orUnknown(dst.Version),
		orUnknown(dst.Service), orUnknown(dst.ServiceName), orUnknown(dst.ServiceNamespace),
		orUnknown(dst.CanonicalService), orUnknown(dst.CanonicalRevision), orUnknown(dst.Cluster),
		s.Kind.Protocol(), strconv.Itoa(s.Status), grpcStatus, "-", "unknown",
	}
}
