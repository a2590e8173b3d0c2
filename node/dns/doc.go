// Package dns is the agent's DNS server: it answers names of the mesh
// (NAME.NAMESPACE.svc.DOMAIN and friends) from the configuration the agent
// accepted over xDS, and forwards everything else to upstream resolvers
// through a TTL-respecting cache. Capturing pods' DNS traffic is not done
// here but by the sock_addr programs (see the agent).
package dns
