package telemetry

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
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

// durationBuckets are Envoy's default histogram buckets (milliseconds),
// which Istio's istio_request_duration_milliseconds uses.
var durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// sizeBuckets are Istio's byte-size buckets.
var sizeBuckets = prometheus.ExponentialBuckets(1, 10, 9)

// Metrics are the Istio-standard request metrics, so Kiali and the Istio
// Grafana dashboards work unchanged.
type Metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	reqBytes  *prometheus.HistogramVec
	respBytes *prometheus.HistogramVec
}

// NewMetrics makes the collectors; register them with Collectors.
func NewMetrics() *Metrics {
	return &Metrics{
		requests:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Requests, as Istio counts them."}, istioLabels),
		duration:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds", Help: "Request duration in milliseconds.", Buckets: durationBuckets}, istioLabels),
		reqBytes:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes", Help: "Request body size in bytes.", Buckets: sizeBuckets}, istioLabels),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes", Help: "Response body size in bytes.", Buckets: sizeBuckets}, istioLabels),
	}
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.duration, m.reqBytes, m.respBytes}
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

// ObserveServer records a request seen at the server (reporter
// "destination").
func (m *Metrics) ObserveServer(r Request, src Peer, dst Destination) {
	labels := []string{
		"destination",
		orUnknown(src.Workload), orUnknown(src.Namespace), orUnknown(src.Principal), orUnknown(src.App), orUnknown(src.Version),
		orUnknown(src.CanonicalService), orUnknown(src.CanonicalRevision), orUnknown(src.Cluster),
		orUnknown(dst.Workload), orUnknown(dst.Namespace), orUnknown(dst.Principal), orUnknown(dst.App), orUnknown(dst.Version),
		orUnknown(dst.Service), orUnknown(dst.ServiceName), orUnknown(dst.ServiceNamespace),
		orUnknown(dst.CanonicalService), orUnknown(dst.CanonicalRevision), orUnknown(dst.Cluster),
		"http", strconv.Itoa(r.Status), "", "-", "unknown",
	}
	m.requests.WithLabelValues(labels...).Inc()
	m.duration.WithLabelValues(labels...).Observe(float64(r.Duration.Microseconds()) / 1000)
	m.respBytes.WithLabelValues(labels...).Observe(float64(r.Bytes))
}
