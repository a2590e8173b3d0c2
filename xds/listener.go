package xds

import (
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
)

// ListenerCluster reads back the one cluster a socket listener routes to,
// as Translate writes it: a tcp_proxy network filter, or a udp_proxy
// listener filter (its deprecated cluster field, or a matcher with a single
// on_no_match route). It returns "" for a listener with neither, and an
// error for one that routes in a way sockmesh cannot follow (weighted
// clusters, real matchers). Agents and the CLI both read listeners with it.
func ListenerCluster(l *listenerv3.Listener) (string, error) {
	if c, err := tcpCluster(l); err != nil || c != "" {
		return c, err
	}
	return udpCluster(l)
}

func tcpCluster(l *listenerv3.Listener) (string, error) {
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if f.GetTypedConfig() == nil {
				continue
			}
			var tp tcpproxyv3.TcpProxy
			if !f.GetTypedConfig().MessageIs(&tp) {
				continue
			}
			if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
				return "", fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			if tp.GetCluster() == "" {
				return "", fmt.Errorf("filter %s: only a single cluster is supported", f.GetName())
			}
			return tp.GetCluster(), nil
		}
	}
	return "", nil
}

func udpCluster(l *listenerv3.Listener) (string, error) {
	for _, f := range l.GetListenerFilters() {
		var up udpproxyv3.UdpProxyConfig
		if f.GetTypedConfig() == nil || !f.GetTypedConfig().MessageIs(&up) {
			continue
		}
		if err := f.GetTypedConfig().UnmarshalTo(&up); err != nil {
			return "", fmt.Errorf("filter %s: %w", f.GetName(), err)
		}
		if c := up.GetCluster(); c != "" {
			return c, nil
		}
		m := up.GetMatcher()
		if m == nil || m.GetMatcherType() != nil || m.GetOnNoMatch().GetAction() == nil {
			return "", fmt.Errorf("filter %s: only a matcher with a single on_no_match route is supported", f.GetName())
		}
		var route udpproxyv3.Route
		if err := m.GetOnNoMatch().GetAction().GetTypedConfig().UnmarshalTo(&route); err != nil {
			return "", fmt.Errorf("filter %s: route: %w", f.GetName(), err)
		}
		return route.GetCluster(), nil
	}
	return "", nil
}
