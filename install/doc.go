// Package install holds what the sockmesh CLI does beyond running the
// control plane and agent: the kernel precheck, the example mesh that
// standalone mode embeds, and (later) Kubernetes manifests and their
// rendering.
package install
