// Command build makes sure the tests' kube-apiserver and etcd are built and
// cached (make kube-assets; CI runs it before the tests so their time limit
// is not spent compiling Kubernetes).
package main

import (
	"fmt"
	"os"

	"github.com/sockmesh/sockmesh/tests/kubeapi"
)

func main() {
	dir, err := kubeapi.Assets()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("kube-apiserver and etcd", kubeapi.Version, "in", dir)
}
