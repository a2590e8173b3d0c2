// Package xds is the control plane: it translates the mesh model into Envoy
// v3 resources (Listener, Cluster, ClusterLoadAssignment) and serves them
// over ADS, state-of-the-world and delta, with go-control-plane.
//
// It does not know how agents program the kernel: everything an agent needs
// travels in standard xDS fields or in filter_metadata["sockmesh"].
package xds
