// Package mesh is sockmesh's model of the mesh: services, their ports and
// endpoints, and the Registry that merges what sources report into versioned
// snapshots and tells watchers when something changed.
//
// It knows nothing of xDS, BPF or the node agent; sources (mesh/file, later
// mesh/kube) fill it, the control plane reads it.
package mesh
