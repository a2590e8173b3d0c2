package node

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector reads the agent's counters when Prometheus scrapes, so the
// kernel is read once per scrape and never on the data path.
type collector struct {
	a *Agent

	ready, services, syncErrors, acks, nacks, sockaddr *prometheus.Desc
	fastPath, fastPathSockets, fastPathCgroups         *prometheus.Desc
}

func newCollector(a *Agent) *collector {
	return &collector{
		a:               a,
		ready:           prometheus.NewDesc("sockmesh_agent_ready", "1 once the first complete configuration is in the kernel.", nil, nil),
		services:        prometheus.NewDesc("sockmesh_dataplane_services", "Service ports (VIP, port, protocol) in the kernel's service map.", nil, nil),
		syncErrors:      prometheus.NewDesc("sockmesh_dataplane_sync_errors_total", "Service updates the kernel refused (e.g. a full map); the service kept its previous state.", nil, nil),
		acks:            prometheus.NewDesc("sockmesh_xds_acks_total", "xDS responses accepted.", nil, nil),
		nacks:           prometheus.NewDesc("sockmesh_xds_nacks_total", "xDS responses rejected; the previous state was kept.", nil, nil),
		sockaddr:        prometheus.NewDesc("sockmesh_sockaddr_events_total", "Events counted by the sock_addr programs.", []string{"event"}, nil),
		fastPath:        prometheus.NewDesc("sockmesh_fastpath_events_total", "Events counted by the fast path programs (redirect_msgs, redirect_bytes, fallback_msgs, splice_exits, splice_stranded, ...).", []string{"event"}, nil),
		fastPathSockets: prometheus.NewDesc("sockmesh_fastpath_sockets", "Sockets on the fast path that have not closed yet (socks_added - socks_closed).", nil, nil),
		fastPathCgroups: prometheus.NewDesc("sockmesh_fastpath_enrolled_cgroups", "Cgroups whose new connections may take the fast path.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.ready, c.services, c.syncErrors, c.acks, c.nacks, c.sockaddr, c.fastPath, c.fastPathSockets, c.fastPathCgroups} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ready := 0.0
	if c.a.Ready() {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, ready)
	if c.a.client != nil {
		st := c.a.client.Stats()
		ch <- prometheus.MustNewConstMetric(c.acks, prometheus.CounterValue, float64(st.Acks))
		ch <- prometheus.MustNewConstMetric(c.nacks, prometheus.CounterValue, float64(st.Nacks))
	}
	if c.a.fp != nil {
		fc, err := c.a.fp.Counters()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.fastPath, err)
		} else {
			for event, v := range fc.Stats.Events() {
				ch <- prometheus.MustNewConstMetric(c.fastPath, prometheus.CounterValue, float64(v), event)
			}
			ch <- prometheus.MustNewConstMetric(c.fastPathSockets, prometheus.GaugeValue, float64(fc.Open()))
			ch <- prometheus.MustNewConstMetric(c.fastPathCgroups, prometheus.GaugeValue, float64(fc.Enrolled))
		}
	}
	if c.a.dp == nil {
		return
	}
	cnt, err := c.a.dp.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.services, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.services, prometheus.GaugeValue, float64(cnt.Services))
	ch <- prometheus.MustNewConstMetric(c.syncErrors, prometheus.CounterValue, float64(cnt.SyncErrors))
	for event, v := range cnt.Stats.Events() {
		ch <- prometheus.MustNewConstMetric(c.sockaddr, prometheus.CounterValue, float64(v), event)
	}
}
