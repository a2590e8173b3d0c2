package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sockmesh/sockmesh/bpf/pins"
	"github.com/sockmesh/sockmesh/bpf/sockaddr"
	"github.com/sockmesh/sockmesh/node/dataplane"
	"github.com/sockmesh/sockmesh/node/dns"
	"github.com/sockmesh/sockmesh/node/host"
	"github.com/sockmesh/sockmesh/node/telemetry"
	"github.com/sockmesh/sockmesh/node/xdsclient"
)

// Version is the agent's version, reported to the control plane.
var Version = "dev"

// Config configures one agent instance.
type Config struct {
	// XDSAddress is the control plane's xDS address, host:port.
	XDSAddress string
	// NodeID identifies the agent to the control plane.
	NodeID string
	// Cluster is the mesh cluster the node belongs to (Istio's CLUSTER_ID).
	Cluster string
	// PinDir is the bpffs directory of this instance.
	PinDir string
	// Cgroup is the cgroup v2 directory to attach to: empty for the root,
	// relative to the v2 mount, or absolute.
	Cgroup string
	// AdminAddress serves /ready, /healthz, /config_dump and /maps. Keep it
	// on loopback: it shows the whole configuration.
	AdminAddress string
	// MetricsAddress serves Prometheus metrics at /metrics (Istio's agent
	// port); empty disables it.
	MetricsAddress string
	// Region and Zone are the node's locality.
	Region, Zone string
	// MaxServices and MaxSlots size the kernel's service maps (0: defaults).
	MaxServices, MaxSlots uint32
	// DNS configures the agent's DNS server; an empty Address turns it off.
	DNS dns.Config
	// Telemetry probes the Go HTTP and gRPC servers and clients running in
	// the cgroup with uprobes and exports Istio's request metrics on
	// MetricsAddress.
	Telemetry bool
	// TelemetryClients, with Telemetry, probes clients as well as servers
	// (Istio's reporter "source"). A client's end probes are RETs the
	// kernel single-steps: they cost each client request far more than a
	// server's probes cost it.
	TelemetryClients bool
	// AccessLog, with Telemetry, is a file that gets one JSON line per
	// request ("-": standard output; empty: none).
	AccessLog string
	// TelemetryRescan is how often telemetry scans /proc for processes it
	// was not told about by exec/exit events (0: every second).
	TelemetryRescan time.Duration
	// FastPath turns on the same-node fast path: TCP connections between
	// processes of the cgroup tree on this node exchange data socket to
	// socket (bpf/sockmap). Off: new connections take the normal path,
	// connections already on the fast path stay on it until they close.
	FastPath bool
	// ClusterDNS is the DNS server address pods are configured with (e.g.
	// kube-dns's 10.96.0.10). When set, DNS sent there by processes in the
	// cgroup (UDP and TCP port 53) goes to the agent's DNS server while
	// the agent is alive, and to ClusterDNS itself when it is not.
	ClusterDNS netip.Addr
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		DNS:            dns.DefaultConfig(),
		XDSAddress:     "127.0.0.1:15010",
		Cluster:        "Kubernetes",
		PinDir:         "/sys/fs/bpf/sockmesh",
		AdminAddress:   "127.0.0.1:15000",
		MetricsAddress: ":15020",
	}
}

// Validate checks the config.
func (c Config) Validate() error {
	var errs []error
	if c.XDSAddress == "" {
		errs = append(errs, errors.New("agent: no xDS address"))
	}
	if c.NodeID == "" {
		errs = append(errs, errors.New("agent: empty node id"))
	}
	if c.PinDir == "" {
		errs = append(errs, errors.New("agent: empty pin directory"))
	}
	for flag, addr := range map[string]string{"admin": c.AdminAddress, "metrics": c.MetricsAddress} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("agent: %s address %q: %w", flag, addr, err))
		}
	}
	if c.DNS.Address != "" {
		if err := c.DNS.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("agent: %w", err))
		}
		for _, u := range c.DNS.Upstreams {
			if ap, err := netip.ParseAddrPort(u); err == nil && ap.Addr() == c.ClusterDNS {
				errs = append(errs, fmt.Errorf("agent: DNS upstream %s is the captured cluster DNS address: queries would loop back to the agent", u))
			}
		}
	} else if c.ClusterDNS.IsValid() {
		errs = append(errs, errors.New("agent: capturing DNS for the cluster DNS address needs the DNS server (--dns-address)"))
	}
	return errors.Join(errs...)
}

// dnsTarget is where captured DNS goes: the DNS server's address, with an
// unspecified IP made loopback.
func (c Config) dnsTarget() (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(c.DNS.Address)
	if err != nil {
		host, port, serr := net.SplitHostPort(c.DNS.Address)
		if serr != nil || host != "" {
			return netip.AddrPort{}, fmt.Errorf("DNS address %q: want IP:port", c.DNS.Address)
		}
		ap, err = netip.ParseAddrPort("0.0.0.0:" + port)
		if err != nil {
			return netip.AddrPort{}, err
		}
	}
	if ap.Addr().IsUnspecified() {
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port())
	}
	return ap, nil
}

// Agent is one node agent.
type Agent struct {
	cfg Config
	log *slog.Logger

	dp     *dataplane.Dataplane
	fp     *dataplane.FastPath
	client *xdsclient.Client
	dns    *dns.Server
	ready  atomic.Bool

	adminMu  sync.Mutex
	adminLis net.Listener

	dirMu sync.Mutex
	dir   *directory // names peers for telemetry; see directory()
}

// New checks the config and prepares an agent; Run starts it.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, log: log}, nil
}

// ListenAdmin binds the admin address ahead of Run, so callers (and tests
// with port 0) learn it.
func (a *Agent) ListenAdmin() (net.Addr, error) {
	lis, err := net.Listen("tcp", a.cfg.AdminAddress)
	if err != nil {
		return nil, fmt.Errorf("agent: admin listen: %w", err)
	}
	a.adminMu.Lock()
	a.adminLis = lis
	a.adminMu.Unlock()
	return lis.Addr(), nil
}

// Run loads and attaches the dataplane, then follows the control plane
// until ctx ends. The kernel state stays in place when Run returns.
func (a *Agent) Run(ctx context.Context) error {
	cg, err := host.ResolveCgroup(a.cfg.Cgroup)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	dp, err := dataplane.Open(dataplane.Config{PinDir: a.cfg.PinDir, Cgroup: cg, MaxServices: a.cfg.MaxServices, MaxSlots: a.cfg.MaxSlots}, a.log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer dp.Close()
	a.dp = dp
	a.log.Info("dataplane attached", "cgroup", cg, "pin_dir", a.cfg.PinDir)
	dpCfg := dataplane.Config{PinDir: a.cfg.PinDir, Cgroup: cg}
	if a.cfg.FastPath {
		fp, err := dataplane.OpenFastPath(dpCfg, a.log)
		switch {
		case errors.Is(err, pins.ErrHeld):
			// An earlier release's fast path, of another layout, still
			// carries sockets: leave them on it and start without one
			// until they have closed (the next start takes it over).
			a.log.Error("fast path stays off: sockets of an earlier release's fast path are still open", "err", err)
			if err := dataplane.DisableFastPath(dpCfg); err != nil {
				return fmt.Errorf("agent: %w", err)
			}
		case err != nil:
			return fmt.Errorf("agent: fast path: %w", err)
		default:
			defer fp.Close()
			if err := fp.EnrollTree(cg); err != nil {
				a.log.Warn("fast path: enroll cgroups", "err", err)
			}
			a.fp = fp
			a.log.Info("fast path attached", "enrolled_cgroups", len(fp.Enrolled()))
		}
	} else if err := dataplane.DisableFastPath(dpCfg); err != nil {
		return fmt.Errorf("agent: %w", err)
	}

	meta, _ := structpb.NewStruct(map[string]any{
		"CLUSTER_ID":       a.cfg.Cluster,
		"SOCKMESH_VERSION": Version,
		"ISTIO_VERSION":    Version,
		"ADMIN_ADDRESS":    a.cfg.AdminAddress,
	})
	client, err := xdsclient.New(xdsclient.Config{
		Address: a.cfg.XDSAddress,
		Node: &corev3.Node{
			Id:            a.cfg.NodeID,
			Cluster:       a.cfg.Cluster,
			Metadata:      meta,
			Locality:      &corev3.Locality{Region: a.cfg.Region, Zone: a.cfg.Zone},
			UserAgentName: "sockmesh-agent",
			UserAgentVersionType: &corev3.Node_UserAgentVersion{
				UserAgentVersion: Version,
			},
		},
	}, a.apply, a.log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.client = client

	g, ctx := errgroup.WithContext(ctx)
	if a.cfg.DNS.Address != "" {
		if a.dns, err = dns.New(a.cfg.DNS, a.log.With("subsystem", "dns")); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		g.Go(func() error { return a.dns.Run(ctx) })
		g.Go(func() error { return a.heartbeat(ctx) })
	}
	g.Go(func() error { return client.Run(ctx) })
	if a.fp != nil {
		g.Go(func() error { return a.enrollLoop(ctx, cg) })
	}
	if a.cfg.AdminAddress != "" {
		g.Go(func() error { return a.serveAdmin(ctx) })
	}
	var requestMetrics *telemetry.Metrics
	if a.cfg.AccessLog != "" && !a.cfg.Telemetry {
		return errors.New("agent: an access log needs --telemetry")
	}
	if a.cfg.Telemetry {
		mnt, err := host.Cgroup2Mount()
		if err != nil {
			return fmt.Errorf("agent: telemetry: %w", err)
		}
		wc := telemetry.WatchConfig{Cgroup: cg, CgroupMount: mnt, Cluster: a.cfg.Cluster, Identify: a.identify, Service: a.service, Interval: a.cfg.TelemetryRescan,
			ServersOnly: !a.cfg.TelemetryClients}
		switch a.cfg.AccessLog {
		case "":
		case "-":
			wc.AccessLog = os.Stdout
		default:
			f, err := os.OpenFile(a.cfg.AccessLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				return fmt.Errorf("agent: access log: %w", err)
			}
			defer f.Close()
			wc.AccessLog = f
		}
		w := telemetry.NewWatcher(wc, a.log.With("subsystem", "telemetry"))
		requestMetrics = w.Metrics()
		g.Go(func() error { return w.Run(ctx) })
	}
	if a.cfg.MetricsAddress != "" {
		reg := prometheus.NewRegistry()
		if requestMetrics != nil {
			reg.MustRegister(requestMetrics)
		}
		reg.MustRegister(newCollector(a), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		if a.dns != nil {
			reg.MustRegister(a.dns.Collectors()...)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		g.Go(func() error { return serveHTTP(ctx, a.cfg.MetricsAddress, mux, a.log) })
	}
	return g.Wait()
}

// apply is the xDS client's handler: it programs the kernel from a
// candidate state, and its error NACKs the state.
func (a *Agent) apply(st *xdsclient.State) error {
	svcs, err := desired(st, a.cfg.Zone)
	if err != nil {
		return err
	}
	if a.cfg.ClusterDNS.IsValid() {
		target, err := a.cfg.dnsTarget()
		if err != nil {
			return err
		}
		for _, proto := range []uint8{sockaddr.ProtoUDP, sockaddr.ProtoTCP} {
			svcs = append(svcs, dataplane.Service{
				VIP: a.cfg.ClusterDNS, Port: 53, Proto: proto, Name: "dns-capture", RequireAgent: true,
				Backends: []dataplane.Backend{{Addr: target.Addr(), Port: target.Port(), Weight: 1}},
			})
		}
	}
	start := time.Now()
	if err := a.dp.Sync(svcs); err != nil {
		return fmt.Errorf("program kernel: %w", err)
	}
	if a.dns != nil {
		a.dns.SetTable(dns.BuildTable(st, a.cfg.DNS.Domain))
	}
	if !a.ready.Load() && st.Complete() {
		a.ready.Store(true)
		a.log.Info("agent ready: first configuration is in the kernel", "services", len(svcs), "took", time.Since(start))
	}
	return nil
}

// heartbeat tells the kernel, twice a second, whether captured DNS may go
// to the agent: only while the DNS server listens and the mesh's names are
// loaded. Stopping says so at once; dying lets the heartbeat age out (2 s).
func (a *Agent) heartbeat(ctx context.Context) error {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		alive := a.dns.Serving() && a.Ready()
		if err := a.dp.Heartbeat(alive); err != nil {
			a.log.Warn("heartbeat", "err", err)
		}
		select {
		case <-ctx.Done():
			if err := a.dp.Heartbeat(false); err != nil {
				a.log.Warn("heartbeat", "err", err)
			}
			return nil
		case <-t.C:
		}
	}
}

// identify finds, among the endpoints the agent accepted over xDS, the one
// at one of addrs, and names it for the request metrics: its service (from
// the cluster's metadata) and its workload (from the endpoint's).
func (a *Agent) identify(addrs []netip.Addr) (telemetry.Destination, bool) {
	if a.client == nil {
		return telemetry.Destination{}, false
	}
	return a.directory().identify(addrs)
}

func (a *Agent) service(host, ns string) (telemetry.Destination, bool) {
	if a.client == nil {
		return telemetry.Destination{}, false
	}
	return a.directory().service(host, ns)
}

// directory is the index of the accepted xDS state, made again when the
// state changes: telemetry asks it for every series at every scrape.
func (a *Agent) directory() *directory {
	st := a.client.State()
	a.dirMu.Lock()
	defer a.dirMu.Unlock()
	if a.dir == nil || a.dir.st != st {
		a.dir = newDirectory(st)
	}
	return a.dir
}

// Ready reports whether the first complete configuration is in the maps.
func (a *Agent) Ready() bool { return a.ready.Load() }

func (a *Agent) serveAdmin(ctx context.Context) error {
	a.adminMu.Lock()
	lis := a.adminLis
	a.adminMu.Unlock()
	if lis == nil {
		if _, err := a.ListenAdmin(); err != nil {
			return err
		}
		lis = a.adminLis
	}
	a.log.Info("admin serving", "address", lis.Addr().String())
	return serveOn(ctx, lis, a.adminHandler())
}

func serveHTTP(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("agent: listen %s: %w", addr, err)
	}
	log.Info("metrics serving", "address", lis.Addr().String())
	return serveOn(ctx, lis, h)
}

// serveOn serves h on lis until ctx ends.
func serveOn(ctx context.Context, lis net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		return fmt.Errorf("agent: serve %s: %w", lis.Addr(), err)
	}
}

// enrollLoop keeps the fast path's enrolled cgroups equal to the cgroup tree
// under the attach point: a cgroup made later is enrolled within a second
// (until then its connections take the normal path, which is always safe).
func (a *Agent) enrollLoop(ctx context.Context, cg string) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := a.fp.EnrollTree(cg); err != nil {
				a.log.Warn("fast path: enroll cgroups", "err", err)
			}
		}
	}
}
