package mesh

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Registry merges the services reported by each source into one snapshot.
// Every Set makes a new snapshot with a higher version; watchers are told
// that something changed and read Snapshot themselves, so a slow watcher sees
// the latest state, never a backlog.
type Registry struct {
	mu        sync.Mutex
	sources   map[string][]*Service
	pods      map[string][]*Pod
	nodeAddrs map[string][]netip.Addr
	snapshot  *Snapshot
	watchers  map[chan struct{}]struct{}
}

// NewRegistry returns an empty registry at version 0.
func NewRegistry() *Registry {
	return &Registry{
		sources:   make(map[string][]*Service),
		pods:      make(map[string][]*Pod),
		nodeAddrs: make(map[string][]netip.Addr),
		snapshot:  &Snapshot{},
		watchers:  make(map[chan struct{}]struct{}),
	}
}

// Set replaces everything source reports. When two sources report the same
// service, the one whose name sorts first wins.
func (r *Registry) Set(source string, services []*Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sources[source] = services
	r.publish()
}

// SetMesh replaces the services and the pods source reports, in one new
// snapshot. When two sources report the same pod, the one whose name
// sorts first wins.
func (r *Registry) SetMesh(source string, services []*Service, pods []*Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sources[source] = services
	r.pods[source] = pods
	r.publish()
}

// SetNodeAddrs replaces the node addresses source reports.
func (r *Registry) SetNodeAddrs(source string, addrs []netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Equal(r.nodeAddrs[source], addrs) {
		return
	}
	r.nodeAddrs[source] = addrs
	r.publish()
}

// mergeByKey merges what each source reports, sorted by key; when two
// sources report the same key, the one whose name sorts first wins.
func mergeByKey[T interface{ Key() string }](bySource map[string][]T) []T {
	merged := map[string]T{}
	for _, name := range slices.Sorted(maps.Keys(bySource)) {
		for _, v := range bySource[name] {
			if _, ok := merged[v.Key()]; !ok {
				merged[v.Key()] = v
			}
		}
	}
	list := slices.Collect(maps.Values(merged))
	slices.SortFunc(list, func(a, b T) int { return strings.Compare(a.Key(), b.Key()) })
	return list
}

// publish makes a new snapshot from every source and tells the watchers.
func (r *Registry) publish() {
	var addrs []netip.Addr
	for _, name := range slices.Sorted(maps.Keys(r.nodeAddrs)) {
		for _, a := range r.nodeAddrs[name] {
			if !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	r.snapshot = &Snapshot{Version: r.snapshot.Version + 1, Services: mergeByKey(r.sources), Pods: mergeByKey(r.pods), NodeAddrs: addrs}
	for w := range r.watchers {
		select {
		case w <- struct{}{}:
		default: // a change is already pending for this watcher
		}
	}
}

// Snapshot returns the current snapshot.
func (r *Registry) Snapshot() *Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshot
}

// Watch returns a channel that receives a value after each change, and a
// function that stops the watch. Changes coalesce.
func (r *Registry) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	r.watchers[ch] = struct{}{}
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		delete(r.watchers, ch)
		r.mu.Unlock()
	}
}
