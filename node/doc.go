// Package node is the sockmesh agent: it subscribes to the control plane
// over delta ADS, turns what it accepts into the desired kernel state, keeps
// the dataplane in step, and serves the admin endpoints (/ready, /healthz,
// /config_dump, /maps) on loopback.
package node
