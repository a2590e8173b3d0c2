package xdsclient

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/xds"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func service(name, vip string, eps ...string) *mesh.Service {
	s := &mesh.Service{Namespace: "default", Name: name, VIPs: []netip.Addr{netip.MustParseAddr(vip)},
		Ports: []mesh.Port{{Name: "http", Port: 80, Protocol: mesh.TCP}}}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, mesh.Endpoint{Address: netip.MustParseAddr(e), Ready: true, Weight: 1})
	}
	return s
}

type recorder struct {
	mu     sync.Mutex
	states []*State
	reject func(*State) error
}

func (r *recorder) handle(s *State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reject != nil {
		if err := r.reject(s); err != nil {
			return err
		}
	}
	r.states = append(r.states, s)
	return nil
}

func (r *recorder) last() *State {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return nil
	}
	return r.states[len(r.states)-1]
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClientFollowsControlPlane runs the real control plane and the client
// over gRPC: initial state, an added endpoint, a removed service, a NACKed
// update that leaves the accepted state alone, and a reconnect that learns
// what was removed meanwhile.
func TestClientFollowsControlPlane(t *testing.T) {
	reg := mesh.NewRegistry()
	reg.Set("t", []*mesh.Service{service("a", "10.96.0.1", "10.0.0.1"), service("b", "10.96.0.2", "10.0.0.2")})
	cfg := xds.DefaultConfig()
	cfg.Address, cfg.MonitorAddress = "127.0.0.1:0", ""
	srv, _ := xds.New(cfg, reg, quiet)
	addr, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	sctx, stopServer := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { srv.Run(sctx); close(served) }()

	rec := &recorder{}
	c, err := New(Config{Address: addr.String(), Node: &corev3.Node{Id: "n1"}, MaxBackoff: 200 * time.Millisecond}, rec.handle, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)

	eventually(t, "complete initial state", func() bool {
		s := rec.last()
		return s != nil && s.Complete() && socketListeners(s) == 2 && len(s.Assignments) == 2
	})

	reg.Set("t", []*mesh.Service{service("a", "10.96.0.1", "10.0.0.1", "10.0.0.9")})
	eventually(t, "endpoint added and service b removed", func() bool {
		s := rec.last()
		cla := s.Assignments["outbound|80||a.default.svc.cluster.local"]
		return socketListeners(s) == 1 && len(s.Clusters) == 1 && len(s.Assignments) == 1 &&
			cla != nil && len(cla.GetEndpoints()[0].GetLbEndpoints()) == 2
	})

	// The handler rejects any state with service c: it is NACKed.
	rec.mu.Lock()
	rec.reject = func(s *State) error {
		for name := range s.Listeners {
			if name == "10.96.0.3_80" {
				return errors.New("no c allowed")
			}
		}
		return nil
	}
	rec.mu.Unlock()
	reg.Set("t", []*mesh.Service{service("a", "10.96.0.1", "10.0.0.1"), service("c", "10.96.0.3", "10.0.0.3")})
	eventually(t, "NACK", func() bool { return c.Stats().Nacks > 0 })
	if st := c.State(); socketListeners(st) != 1 || st.Listeners["10.96.0.1_80"] == nil {
		t.Fatalf("accepted state changed after a NACK: %v", st.Listeners)
	}

	// Restart the server with a smaller mesh; the client reconnects and
	// must drop what disappeared while it was away.
	rec.mu.Lock()
	rec.reject = nil
	rec.mu.Unlock()
	stopServer()
	<-served
	reg2 := mesh.NewRegistry()
	reg2.Set("t", []*mesh.Service{service("d", "10.96.0.4", "10.0.0.4")})
	cfg.Address = addr.String()
	srv2, _ := xds.New(cfg, reg2, quiet)
	if _, err := srv2.Listen(); err != nil {
		t.Fatal(err)
	}
	sctx2, stop2 := context.WithCancel(context.Background())
	defer stop2()
	go srv2.Run(sctx2)
	eventually(t, "state of the new server", func() bool {
		s := c.State()
		return socketListeners(s) == 1 && s.Listeners["10.96.0.4_80"] != nil && len(s.Assignments) == 1 &&
			s.Assignments["outbound|80||d.default.svc.cluster.local"] != nil
	})
}

// socketListeners counts listeners with an address (not proxyless gRPC's).
func socketListeners(s *State) int {
	n := 0
	for _, l := range s.Listeners {
		if l.GetAddress() != nil {
			n++
		}
	}
	return n
}
