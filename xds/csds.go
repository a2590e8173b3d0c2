package xds

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// SynczType is the type URL Istio's tooling requests over ADS to learn the
// sync state of every client.
const SynczType = "istio.io/debug/syncz"

// csds serves envoy.service.status.v3.ClientStatusDiscoveryService from the
// tracker.
type csds struct {
	statusv3.UnimplementedClientStatusDiscoveryServiceServer
	t *tracker
}

func (c *csds) FetchClientStatus(_ context.Context, req *statusv3.ClientStatusRequest) (*statusv3.ClientStatusResponse, error) {
	return &statusv3.ClientStatusResponse{Config: c.t.clientConfigs(nodeMatch(req.GetNodeMatchers()))}, nil
}

func (c *csds) StreamClientStatus(stream statusv3.ClientStatusDiscoveryService_StreamClientStatusServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		resp, _ := c.FetchClientStatus(stream.Context(), req)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// controlPlaneIdentity is what the control plane says it is, in the JSON
// shape Istio's tooling parses from control_plane.identifier.
func controlPlaneIdentity(version string) *corev3.ControlPlane {
	host, _ := os.Hostname()
	b, _ := json.Marshal(map[string]any{
		"Component": "sockmesh",
		"ID":        host,
		"Info":      map[string]string{"version": version},
	})
	return &corev3.ControlPlane{Identifier: string(b)}
}

// statusCache answers Istio's syncz requests itself and passes every other
// request to the snapshot cache.
type statusCache struct {
	cachev3.SnapshotCache
	t        *tracker
	identity *corev3.ControlPlane
}

// CreateWatch answers a syncz request with one ClientConfig per connected
// client. Istio's client sends a nonce even on its first request, so a
// request is a question when its version_info is empty, and otherwise the
// acknowledgement of an answer (which gets no reply).
func (c *statusCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, value chan cachev3.Response) (func(), error) {
	if req.GetTypeUrl() != SynczType {
		return c.SnapshotCache.CreateWatch(req, sub, value)
	}
	if req.GetVersionInfo() != "" {
		return func() {}, nil
	}
	resp := &discovery.DiscoveryResponse{TypeUrl: SynczType, VersionInfo: "1", ControlPlane: c.identity}
	for _, cc := range c.t.clientConfigs(nil) {
		a, err := anypb.New(cc)
		if err != nil {
			return nil, err
		}
		resp.Resources = append(resp.Resources, a)
	}
	value <- &cachev3.PassthroughResponse{Request: req, DiscoveryResponse: resp}
	return func() {}, nil
}
