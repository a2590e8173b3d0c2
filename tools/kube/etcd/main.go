// Command etcd is etcd's server, built from the module version Kubernetes
// pins, for the tests' API server.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
