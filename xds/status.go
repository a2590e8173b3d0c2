package xds

import (
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// StatusTypes are the resource types whose per-client state is reported.
var StatusTypes = []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}

// tracker follows every ADS stream: what was sent, acknowledged and
// rejected, per client and type. It feeds CSDS, Istio's syncz and the
// control-plane metrics, and it keeps state-of-the-world clients that
// rejected a version from being sent that same version again and again.
//
// go-control-plane's snapshot cache answers any request whose version_info
// differs from the snapshot's at once; a NACK carries the client's last
// accepted version, so the cache re-sends the rejected resources, the client
// rejects them again, and so on (8,164 re-sends in 1 s measured). Like
// Istio, we hold instead: a NACK's version_info is set to the version it
// rejected, so the cache answers only when the content changes. The delta
// protocol needs no help: the cache tracks what each stream was sent.
type tracker struct {
	log *slog.Logger

	mu      sync.Mutex
	streams map[streamKey]*streamState

	seq    uint64
	nacks  atomic.Uint64
	pushes atomic.Uint64
}

// streamKey names a stream: go-control-plane numbers SotW and delta
// streams separately, so an id alone is ambiguous.
type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	id    int64
	seq   uint64 // order of creation across SotW and delta
	node  *corev3.Node
	delta bool
	types map[string]*typeState
}

type typeState struct {
	sentNonce, sentVersion string
	ackedVersion           string
	acked                  bool   // the last sent nonce was acknowledged
	nackDetail             string // the last sent nonce was rejected with this
}

func newTracker(log *slog.Logger) *tracker {
	return &tracker{log: log, streams: make(map[streamKey]*streamState)}
}

func (t *tracker) stream(id int64, delta bool) *streamState {
	k := streamKey{delta, id}
	s := t.streams[k]
	if s == nil {
		t.seq++
		s = &streamState{id: id, seq: t.seq, delta: delta, types: make(map[string]*typeState)}
		t.streams[k] = s
	}
	return s
}

func (s *streamState) typ(url string) *typeState {
	ts := s.types[url]
	if ts == nil {
		ts = &typeState{}
		s.types[url] = ts
	}
	return ts
}

// onRequest records an ACK or NACK; for a NACK of the last response it
// rewrites version_info so the cache holds (see tracker).
func (t *tracker) onRequest(id int64, req *discovery.DiscoveryRequest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stream(id, false)
	if req.GetNode() != nil {
		s.node = req.GetNode()
	}
	nonce := req.GetResponseNonce()
	ts := s.typ(req.GetTypeUrl())
	if nonce == "" || nonce != ts.sentNonce {
		return // a new subscription, or a request about an older response
	}
	if req.GetErrorDetail() != nil {
		t.nack(s, req.GetTypeUrl(), ts, req.GetErrorDetail().GetMessage())
		req.VersionInfo = ts.sentVersion
		return
	}
	ts.acked, ts.ackedVersion, ts.nackDetail = true, req.GetVersionInfo(), ""
}

func (t *tracker) nack(s *streamState, typ string, ts *typeState, detail string) {
	t.nacks.Add(1)
	ts.acked, ts.nackDetail = false, detail
	t.log.Warn("xDS NACK", "node", s.node.GetId(), "type", typ, "rejected", ts.sentVersion, "detail", detail)
}

func (t *tracker) onResponse(id int64, resp *discovery.DiscoveryResponse) {
	t.pushes.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	ts := t.stream(id, false).typ(resp.GetTypeUrl())
	ts.sentNonce, ts.sentVersion, ts.acked, ts.nackDetail = resp.GetNonce(), resp.GetVersionInfo(), false, ""
}

func (t *tracker) onDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stream(id, true)
	if req.GetNode() != nil {
		s.node = req.GetNode()
	}
	ts := s.typ(req.GetTypeUrl())
	if req.GetResponseNonce() == "" || req.GetResponseNonce() != ts.sentNonce {
		return
	}
	if req.GetErrorDetail() != nil {
		t.nack(s, req.GetTypeUrl(), ts, req.GetErrorDetail().GetMessage())
		return
	}
	ts.acked, ts.ackedVersion, ts.nackDetail = true, ts.sentVersion, ""
}

func (t *tracker) onDeltaResponse(id int64, resp *discovery.DeltaDiscoveryResponse) {
	t.pushes.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	ts := t.stream(id, true).typ(resp.GetTypeUrl())
	ts.sentNonce, ts.sentVersion, ts.acked, ts.nackDetail = resp.GetNonce(), resp.GetSystemVersionInfo(), false, ""
}

func (t *tracker) onClosed(id int64, delta bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.streams, streamKey{delta, id})
}

// connected returns how many streams are open.
func (t *tracker) connected() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.streams)
}

// clientConfigs reports, per connected client (its newest stream), the
// state of each resource type: SYNCED when the last response was
// acknowledged, STALE while it is not, ERROR with the detail when it was
// rejected, NOT_SENT when nothing was sent. Clients are sorted by node id.
func (t *tracker) clientConfigs(match func(*corev3.Node) bool) []*statusv3.ClientConfig {
	t.mu.Lock()
	defer t.mu.Unlock()
	newest := map[string]*streamState{}
	for _, s := range t.streams {
		if s.node == nil || (match != nil && !match(s.node)) {
			continue
		}
		if cur, ok := newest[s.node.GetId()]; !ok || s.seq > cur.seq {
			newest[s.node.GetId()] = s
		}
	}
	var out []*statusv3.ClientConfig
	for _, id := range slices.Sorted(maps.Keys(newest)) {
		s := newest[id]
		cc := &statusv3.ClientConfig{Node: s.node}
		for _, typ := range StatusTypes {
			g := &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: typ, ConfigStatus: statusv3.ConfigStatus_NOT_SENT}
			if ts, ok := s.types[typ]; ok && ts.sentNonce != "" {
				g.VersionInfo = ts.ackedVersion
				switch {
				case ts.nackDetail != "":
					g.ConfigStatus = statusv3.ConfigStatus_ERROR
					g.ErrorState = &adminv3.UpdateFailureState{Details: ts.nackDetail, VersionInfo: ts.sentVersion}
				case ts.acked:
					g.ConfigStatus = statusv3.ConfigStatus_SYNCED
				default:
					g.ConfigStatus = statusv3.ConfigStatus_STALE
				}
			}
			cc.GenericXdsConfigs = append(cc.GenericXdsConfigs, g)
		}
		out = append(out, cc)
	}
	return out
}

// nodeMatch builds a filter from CSDS node matchers: a node matches if any
// matcher's node_id matches (an empty list matches everything).
func nodeMatch(ms []*matcherv3.NodeMatcher) func(*corev3.Node) bool {
	if len(ms) == 0 {
		return nil
	}
	return func(n *corev3.Node) bool {
		for _, m := range ms {
			if m.GetNodeId() == nil || stringMatch(m.GetNodeId(), n.GetId()) {
				return true
			}
		}
		return false
	}
}

func stringMatch(m *matcherv3.StringMatcher, s string) bool {
	if m.GetIgnoreCase() {
		s = strings.ToLower(s)
	}
	lower := func(p string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(p)
		}
		return p
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return s == lower(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(s, lower(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(s, lower(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(s, lower(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile(p.SafeRegex.GetRegex())
		return err == nil && re.MatchString(s)
	}
	return false
}
