// Package xdstest builds, for agent-side tests, the xDS state an agent
// would hold for a mesh: the control plane's real translation, put in the
// shape the agent's client accepts.
package xdstest

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/node/xdsclient"
	"github.com/sockmesh/sockmesh/xds"
)

// State translates svcs and returns the complete state an agent would
// have accepted for them.
func State(t testing.TB, svcs ...*mesh.Service) *xdsclient.State {
	t.Helper()
	return StateOf(t, &mesh.Snapshot{Services: svcs})
}

// StateOf is State for a whole snapshot (services and pods).
func StateOf(t testing.TB, snap *mesh.Snapshot) *xdsclient.State {
	t.Helper()
	res, err := xds.Translate(snap, mesh.DefaultDomain)
	if err != nil {
		t.Fatal(err)
	}
	st := &xdsclient.State{
		Listeners:   map[string]*listenerv3.Listener{},
		Clusters:    map[string]*clusterv3.Cluster{},
		Assignments: map[string]*endpointv3.ClusterLoadAssignment{},
		Received:    map[string]bool{resource.ListenerType: true, resource.ClusterType: true},
	}
	for _, r := range res.Listeners {
		l := r.(*listenerv3.Listener)
		st.Listeners[l.Name] = l
	}
	for _, r := range res.Clusters {
		c := r.(*clusterv3.Cluster)
		st.Clusters[c.Name] = c
	}
	for _, r := range res.Endpoints {
		e := r.(*endpointv3.ClusterLoadAssignment)
		st.Assignments[e.ClusterName] = e
	}
	return st
}
