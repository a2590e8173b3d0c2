// Package kube is the Kubernetes source: client-go shared informers for
// Services, EndpointSlices and Nodes feed the mesh registry through the same
// conversion as the YAML source (mesh/convert). Informers resync and relist
// on their own; while the API server is away the last state keeps serving.
package kube
