// Package kube builds the Kubernetes API server and etcd the tests run
// against (k8s.io/kubernetes v1.37.2 with its staging modules at v0.37.2,
// and the etcd it pins), in a module of its own so sockmesh's go.mod does
// not pull in k8s.io/kubernetes. tests/kubeapi builds and caches them.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app" // keeps the requirement tidy
)
