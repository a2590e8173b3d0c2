package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// maxMessage is the largest xDS response accepted.
const maxMessage = 512 << 20

// Config configures the client.
type Config struct {
	// Address of the control plane's xDS port, host:port.
	Address string
	// Node identifies this agent to the control plane.
	Node *corev3.Node
	// MaxBackoff caps the wait between reconnects.
	MaxBackoff time.Duration
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.Address == "" {
		return errors.New("xdsclient: no control plane address")
	}
	if c.Node.GetId() == "" {
		return errors.New("xdsclient: empty node id")
	}
	return nil
}

// State is a consistent set of accepted resources.
type State struct {
	Listeners   map[string]*listenerv3.Listener
	Clusters    map[string]*clusterv3.Cluster
	Assignments map[string]*endpointv3.ClusterLoadAssignment
	// Received holds the type URLs for which a first response came.
	Received map[string]bool
}

// Complete reports whether listeners and clusters have arrived and every
// cluster has its endpoints: the state the agent should wait for before it
// calls itself ready.
func (s *State) Complete() bool {
	if !s.Received[resource.ListenerType] || !s.Received[resource.ClusterType] {
		return false
	}
	for name := range s.Clusters {
		if _, ok := s.Assignments[name]; !ok {
			return false
		}
	}
	return true
}

func (s *State) clone() *State {
	return &State{
		Listeners:   maps.Clone(s.Listeners),
		Clusters:    maps.Clone(s.Clusters),
		Assignments: maps.Clone(s.Assignments),
		Received:    maps.Clone(s.Received),
	}
}

// Handler is given every candidate state before it is acknowledged. An error
// rejects it: the client NACKs with the error's text and keeps the previous
// state. Handler runs on the client's goroutine.
type Handler func(*State) error

// Client is a delta ADS client.
type Client struct {
	cfg    Config
	log    *slog.Logger
	handle Handler

	mu       sync.Mutex
	state    *State
	versions map[string]map[string]string // type → name → version
	acks     uint64
	nacks    uint64
	lastNack string
}

// New returns a client that reports states to handle.
func New(cfg Config, handle Handler, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	return &Client{
		cfg:    cfg,
		log:    log,
		handle: handle,
		state: &State{
			Listeners:   map[string]*listenerv3.Listener{},
			Clusters:    map[string]*clusterv3.Cluster{},
			Assignments: map[string]*endpointv3.ClusterLoadAssignment{},
			Received:    map[string]bool{},
		},
		versions: map[string]map[string]string{},
	}, nil
}

// Stats are the client's counters.
type Stats struct {
	Acks     uint64 `json:"acks"`
	Nacks    uint64 `json:"nacks"`
	LastNack string `json:"lastNack,omitempty"`
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Acks: c.acks, Nacks: c.nacks, LastNack: c.lastNack}
}

// State returns the last accepted state. The caller must not modify it.
func (c *Client) State() *State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Run keeps a stream to the control plane open until ctx ends, reconnecting
// with backoff. Accepted state survives reconnects: on a new stream the
// client tells the server what it has, so removals made meanwhile arrive.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(c.cfg.Address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A mesh of 10,000 services is ~5 MB of listeners in one response;
		// gRPC's default 4 MB limit would make the agent reconnect forever.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)))
	if err != nil {
		return fmt.Errorf("xdsclient: %w", err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := c.stream(ctx, ads)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		c.log.Warn("xDS stream ended, reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

func (c *Client) stream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	initial := []*discovery.DeltaDiscoveryRequest{
		{TypeUrl: resource.ListenerType, InitialResourceVersions: maps.Clone(c.versions[resource.ListenerType])},
		{TypeUrl: resource.ClusterType, InitialResourceVersions: maps.Clone(c.versions[resource.ClusterType])},
	}
	subscribed := slices.Sorted(maps.Keys(c.state.Clusters))
	if len(subscribed) > 0 {
		initial = append(initial, &discovery.DeltaDiscoveryRequest{
			TypeUrl:                 resource.EndpointType,
			ResourceNamesSubscribe:  subscribed,
			InitialResourceVersions: maps.Clone(c.versions[resource.EndpointType]),
		})
	}
	c.mu.Unlock()
	for i, req := range initial {
		if i == 0 {
			req.Node = c.cfg.Node
		}
		if err := st.Send(req); err != nil {
			return err
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		reqs := c.receive(resp, subscribed)
		for _, r := range reqs {
			if err := st.Send(r); err != nil {
				return err
			}
		}
		if resp.GetTypeUrl() == resource.ClusterType {
			subscribed = slices.Sorted(maps.Keys(c.State().Clusters))
		}
	}
}

// receive applies one response and returns the requests to send: the ACK or
// NACK, and for clusters, the change of endpoint subscriptions.
func (c *Client) receive(resp *discovery.DeltaDiscoveryResponse, subscribed []string) []*discovery.DeltaDiscoveryRequest {
	typ := resp.GetTypeUrl()
	next, versions, err := c.candidate(resp)
	if err == nil {
		err = c.handle(next)
	}
	reply := &discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()}
	c.mu.Lock()
	if err != nil {
		c.nacks++
		c.lastNack = err.Error()
		reply.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		c.mu.Unlock()
		c.log.Warn("xDS NACK", "type", typ, "nonce", resp.GetNonce(), "err", err)
		return []*discovery.DeltaDiscoveryRequest{reply}
	}
	c.acks++
	c.state = next
	c.versions[typ] = versions
	for name := range c.versions[resource.EndpointType] {
		if _, ok := next.Clusters[name]; !ok {
			delete(c.versions[resource.EndpointType], name)
		}
	}
	c.mu.Unlock()
	out := []*discovery.DeltaDiscoveryRequest{reply}
	if typ == resource.ClusterType {
		want := slices.Sorted(maps.Keys(next.Clusters))
		sub := &discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType}
		for _, n := range want {
			if !slices.Contains(subscribed, n) {
				sub.ResourceNamesSubscribe = append(sub.ResourceNamesSubscribe, n)
			}
		}
		for _, n := range subscribed {
			if !slices.Contains(want, n) {
				sub.ResourceNamesUnsubscribe = append(sub.ResourceNamesUnsubscribe, n)
			}
		}
		if len(sub.ResourceNamesSubscribe)+len(sub.ResourceNamesUnsubscribe) > 0 {
			out = append(out, sub)
		}
	}
	return out
}

// candidate builds the state that accepting resp would produce.
func (c *Client) candidate(resp *discovery.DeltaDiscoveryResponse) (*State, map[string]string, error) {
	c.mu.Lock()
	next := c.state.clone()
	versions := maps.Clone(c.versions[resp.GetTypeUrl()])
	c.mu.Unlock()
	if versions == nil {
		versions = map[string]string{}
	}
	typ := resp.GetTypeUrl()
	for _, r := range resp.GetResources() {
		if r.GetResource() == nil {
			return nil, nil, fmt.Errorf("resource %q has no body", r.GetName())
		}
		if r.GetResource().GetTypeUrl() != typ {
			return nil, nil, fmt.Errorf("resource %q is a %s in a %s response", r.GetName(), r.GetResource().GetTypeUrl(), typ)
		}
		msg, err := r.GetResource().UnmarshalNew()
		if err != nil {
			return nil, nil, fmt.Errorf("resource %q: %w", r.GetName(), err)
		}
		if v, ok := msg.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				return nil, nil, fmt.Errorf("resource %q: %w", r.GetName(), err)
			}
		}
		if err := put(next, typ, r.GetName(), msg); err != nil {
			return nil, nil, err
		}
		versions[r.GetName()] = r.GetVersion()
	}
	for _, name := range resp.GetRemovedResources() {
		put(next, typ, name, nil)
		delete(versions, name)
	}
	if typ == resource.ClusterType {
		// Endpoints of clusters that are gone are unsubscribed; the server
		// will not send their removal.
		for name := range next.Assignments {
			if _, ok := next.Clusters[name]; !ok {
				delete(next.Assignments, name)
			}
		}
	}
	next.Received[typ] = true
	return next, versions, nil
}

// put stores msg under name in the map of its type; a nil msg removes.
func put(s *State, typ, name string, msg proto.Message) error {
	switch typ {
	case resource.ListenerType:
		return putTyped(s.Listeners, name, msg)
	case resource.ClusterType:
		return putTyped(s.Clusters, name, msg)
	case resource.EndpointType:
		return putTyped(s.Assignments, name, msg)
	default:
		return fmt.Errorf("unexpected resource type %s", typ)
	}
}

func putTyped[T proto.Message](m map[string]T, name string, msg proto.Message) error {
	if msg == nil {
		delete(m, name)
		return nil
	}
	v, ok := msg.(T)
	if !ok {
		return fmt.Errorf("resource %q: unexpected message %T", name, msg)
	}
	m[name] = v
	return nil
}
