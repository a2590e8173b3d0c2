package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/sockmesh/sockmesh/mesh"
)

// Version is the control plane's version, reported to clients.
var Version = "dev"

// Config configures the control plane.
type Config struct {
	// Address is where xDS, CSDS and gRPC reflection are served
	// (plaintext gRPC).
	Address string
	// MonitorAddress serves /metrics, /debug/syncz and /debug/config_dump
	// over HTTP; empty disables it.
	MonitorAddress string
	// Domain is the cluster domain of service hostnames.
	Domain string
}

// DefaultConfig returns the defaults: Istio's ports.
func DefaultConfig() Config {
	return Config{Address: ":15010", MonitorAddress: ":15014", Domain: mesh.DefaultDomain}
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.Address == "" {
		return errors.New("xds: no listen address")
	}
	for name, a := range map[string]string{"xds": c.Address, "monitoring": c.MonitorAddress} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("xds: %s address %q: %w", name, a, err)
		}
	}
	if c.Domain == "" {
		return errors.New("xds: empty cluster domain")
	}
	return nil
}

// snapshotNode is the one cache key every client shares: all nodes see the
// same mesh.
const snapshotNode = "mesh"

type sharedHash struct{}

func (sharedHash) ID(*corev3.Node) string { return snapshotNode }

// Server serves the mesh over ADS.
type Server struct {
	cfg     Config
	reg     *mesh.Registry
	log     *slog.Logger
	cache   cachev3.SnapshotCache
	tracker *tracker
	metrics *serverMetrics

	mu       sync.Mutex
	lis      net.Listener
	monLis   net.Listener
	resource *Resources
}

// New returns a control plane serving reg.
func New(cfg Config, reg *mesh.Registry, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg,
		reg: reg,
		log: log,
		// Not in "ADS mode": there the cache answers a request for named
		// resources only if it names every resource of the type, which
		// suits Envoy's EDS but never answers a gRPC client asking for
		// one listener.
		cache:   cachev3.NewSnapshotCache(false, sharedHash{}, cacheLogger{log}),
		tracker: newTracker(log),
	}
	s.metrics = newServerMetrics(s)
	return s, nil
}

// Listen binds the xDS (and monitoring) addresses; Run serves on them.
// Split so callers (and tests using port 0) learn the addresses first.
func (s *Server) Listen() (net.Addr, error) {
	lis, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("xds: listen: %w", err)
	}
	var mon net.Listener
	if s.cfg.MonitorAddress != "" {
		if mon, err = net.Listen("tcp", s.cfg.MonitorAddress); err != nil {
			lis.Close()
			return nil, fmt.Errorf("xds: listen (monitoring): %w", err)
		}
	}
	s.mu.Lock()
	s.lis, s.monLis = lis, mon
	s.mu.Unlock()
	return lis.Addr(), nil
}

// MonitorAddr returns the monitoring address once Listen succeeded.
func (s *Server) MonitorAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.monLis == nil {
		return nil
	}
	return s.monLis.Addr()
}

// Run translates every registry change into a new snapshot and serves until
// ctx ends. It calls Listen if that was not done.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	bound := s.lis != nil
	s.mu.Unlock()
	if !bound {
		if _, err := s.Listen(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	lis, mon := s.lis, s.monLis
	s.mu.Unlock()
	changes, stop := s.reg.Watch()
	defer stop()
	if err := s.publish(ctx); err != nil {
		lis.Close()
		if mon != nil {
			mon.Close()
		}
		return err
	}

	t := s.tracker
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error { t.onRequest(id, req); return nil },
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			t.onResponse(id, resp)
		},
		StreamClosedFunc:       func(id int64, _ *corev3.Node) { t.onClosed(id, false) },
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error { t.onDeltaRequest(id, req); return nil },
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			t.onDeltaResponse(id, resp)
		},
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { t.onClosed(id, true) },
	}
	watcher := &statusCache{SnapshotCache: s.cache, t: t, identity: controlPlaneIdentity(Version)}
	xdsServer := serverv3.NewServer(ctx, watcher, cb)
	gs := grpc.NewServer(
		grpc.MaxConcurrentStreams(100000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, xdsServer)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xdsServer)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xdsServer)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xdsServer)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xdsServer)
	statusv3.RegisterClientStatusDiscoveryServiceServer(gs, &csds{t: t})
	reflection.Register(gs)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := gs.Serve(lis); err != nil {
			return fmt.Errorf("xds: serve: %w", err)
		}
		return nil
	})
	if mon != nil {
		hs := &http.Server{Handler: s.monitorHandler(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(mon); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("xds: monitoring: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		})
		s.log.Info("monitoring serving", "address", mon.Addr().String())
	}
	g.Go(func() error {
		<-gctx.Done()
		gs.GracefulStop()
		return nil
	})
	s.log.Info("xDS serving", "address", lis.Addr().String())
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-changes:
				if err := s.publish(gctx); err != nil {
					// The previous snapshot keeps serving; the next
					// change tries again.
					s.log.Error("xds: translation failed, keeping the previous config", "err", err)
				}
			}
		}
	})
	return g.Wait()
}

// publish translates the registry's current snapshot and hands it to the
// cache.
func (s *Server) publish(ctx context.Context) error {
	start := time.Now()
	snap := s.reg.Snapshot()
	res, err := Translate(snap, s.cfg.Domain)
	if err != nil {
		return err
	}
	cs, err := res.Snapshot()
	if err != nil {
		return err
	}
	if err := s.cache.SetSnapshot(ctx, snapshotNode, cs); err != nil {
		return fmt.Errorf("xds: set snapshot: %w", err)
	}
	s.mu.Lock()
	s.resource = res
	s.mu.Unlock()
	s.metrics.translate.Observe(time.Since(start).Seconds())
	s.log.Debug("xDS snapshot published", "registry_version", snap.Version,
		"listeners", len(res.Listeners), "clusters", len(res.Clusters))
	return nil
}

// Nacks returns how many NACKs clients have sent.
func (s *Server) Nacks() uint64 { return s.tracker.nacks.Load() }

// cacheLogger adapts slog to go-control-plane's logger.
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) Debugf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "xds-cache")
}
func (l cacheLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "xds-cache")
}
func (l cacheLogger) Warnf(format string, args ...any) {
	l.log.Warn(fmt.Sprintf(format, args...), "component", "xds-cache")
}
func (l cacheLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "xds-cache")
}
