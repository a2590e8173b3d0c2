package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/sockmesh/sockmesh/mesh"
)

// Config configures the control plane.
type Config struct {
	// Address is where xDS is served (plaintext gRPC).
	Address string
	// Domain is the cluster domain of service hostnames.
	Domain string
}

// DefaultConfig returns the defaults: Istio's plaintext xDS port.
func DefaultConfig() Config {
	return Config{Address: ":15010", Domain: mesh.DefaultDomain}
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.Address == "" {
		return errors.New("xds: no listen address")
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return fmt.Errorf("xds: listen address %q: %w", c.Address, err)
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
	cfg   Config
	reg   *mesh.Registry
	log   *slog.Logger
	cache cachev3.SnapshotCache
	nacks *nackHold

	mu       sync.Mutex
	lis      net.Listener
	resource *Resources
	version  uint64 // registry version last translated
}

// New returns a control plane serving reg.
func New(cfg Config, reg *mesh.Registry, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Server{
		cfg:   cfg,
		reg:   reg,
		log:   log,
		cache: cachev3.NewSnapshotCache(true, sharedHash{}, cacheLogger{log}),
		nacks: newNackHold(log),
	}, nil
}

// Listen binds the xDS address; Run serves on it. Split so callers (and
// tests using port 0) learn the address before serving starts.
func (s *Server) Listen() (net.Addr, error) {
	lis, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("xds: listen: %w", err)
	}
	s.mu.Lock()
	s.lis = lis
	s.mu.Unlock()
	return lis.Addr(), nil
}

// Run translates every registry change into a new snapshot and serves ADS
// until ctx ends. It calls Listen if that was not done.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	lis := s.lis
	s.mu.Unlock()
	if lis == nil {
		if _, err := s.Listen(); err != nil {
			return err
		}
		lis = s.lis
	}
	changes, stop := s.reg.Watch()
	defer stop()
	if err := s.publish(ctx); err != nil {
		lis.Close()
		return err
	}

	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			s.nacks.onRequest(id, req)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.nacks.onResponse(id, resp)
		},
		StreamClosedFunc: func(id int64, _ *corev3.Node) { s.nacks.onClosed(id) },
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			s.nacks.onDeltaRequest(id, req)
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { s.nacks.onClosed(id) },
	}
	xdsServer := serverv3.NewServer(ctx, s.cache, cb)
	gs := grpc.NewServer(
		grpc.MaxConcurrentStreams(100000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, xdsServer)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xdsServer)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xdsServer)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xdsServer)

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	s.log.Info("xDS serving", "address", lis.Addr().String())
	for {
		select {
		case <-ctx.Done():
			gs.GracefulStop()
			<-errc
			return nil
		case err := <-errc:
			return fmt.Errorf("xds: serve: %w", err)
		case <-changes:
			if err := s.publish(ctx); err != nil {
				// The previous snapshot keeps serving; the next change
				// tries again.
				s.log.Error("xds: translation failed, keeping the previous config", "err", err)
			}
		}
	}
}

// publish translates the registry's current snapshot and hands it to the
// cache.
func (s *Server) publish(ctx context.Context) error {
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
	s.resource, s.version = res, snap.Version
	s.mu.Unlock()
	s.log.Debug("xDS snapshot published", "registry_version", snap.Version,
		"listeners", len(res.Listeners), "clusters", len(res.Clusters))
	return nil
}

// Nacks returns how many NACKs clients have sent.
func (s *Server) Nacks() uint64 { return s.nacks.nacks.Load() }

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
