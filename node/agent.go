package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sockmesh/sockmesh/node/dataplane"
	"github.com/sockmesh/sockmesh/node/host"
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
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
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
	return errors.Join(errs...)
}

// Agent is one node agent.
type Agent struct {
	cfg Config
	log *slog.Logger

	dp     *dataplane.Dataplane
	client *xdsclient.Client
	ready  atomic.Bool

	adminMu  sync.Mutex
	adminLis net.Listener
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
	g.Go(func() error { return client.Run(ctx) })
	if a.cfg.AdminAddress != "" {
		g.Go(func() error { return a.serveAdmin(ctx) })
	}
	if a.cfg.MetricsAddress != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(newCollector(a), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		g.Go(func() error { return serveHTTP(ctx, a.cfg.MetricsAddress, mux, a.log) })
	}
	return g.Wait()
}

// apply is the xDS client's handler: it programs the kernel from a
// candidate state, and its error NACKs the state.
func (a *Agent) apply(st *xdsclient.State) error {
	svcs, err := desired(st)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := a.dp.Sync(svcs); err != nil {
		return fmt.Errorf("program kernel: %w", err)
	}
	if !a.ready.Load() && st.Complete() {
		a.ready.Store(true)
		a.log.Info("agent ready: first configuration is in the kernel", "services", len(svcs), "took", time.Since(start))
	}
	return nil
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
