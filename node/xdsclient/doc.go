// Package xdsclient is the agent's delta ADS client: it subscribes to
// listeners and clusters (wildcard) and to the endpoints of every cluster,
// hands each candidate state to the agent before acknowledging it, and
// NACKs what the agent rejects, keeping the last accepted state.
package xdsclient
