// Package convert turns the Kubernetes objects users write (v1 Service,
// discovery.k8s.io/v1 EndpointSlice) into the mesh model, with errors that
// name the object and field. Both sources use it: mesh/file for YAML files
// and mesh/kube for the API server, so the two cannot disagree.
package convert
