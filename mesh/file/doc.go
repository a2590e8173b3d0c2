// Package file is the standalone source: it reads multi-document YAML files
// of the Kubernetes kinds users already write (v1 Service and
// discovery.k8s.io/v1 EndpointSlice, and v1 Pod for the workload identity of
// endpoints whose targetRef names one), validates them, and keeps the registry
// in step with the files as they are edited. A set of files that does not
// validate is reported and ignored; the last good state keeps serving.
package file
