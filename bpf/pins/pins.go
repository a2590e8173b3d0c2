// Package pins adopts maps an earlier sockmesh pinned, across releases
// whose map layouts differ. ebpf.CollectionSpec.LoadAndAssign refuses a
// pinned map that does not match its spec ("map spec is incompatible"),
// which would stop an upgraded agent from starting at all. Migrate, run
// before loading, replaces each such map with one made from the new spec,
// carrying its entries over where their layout allows.
package pins

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// ErrHeld means a pinned map that cannot be copied (it holds sockets,
// per-socket data or events) has a layout this release cannot use and is
// not empty: replacing it would take live sockets off what they use.
var ErrHeld = errors.New("pinned map of another layout is in use")

// Migration says what Migrate did to one map.
type Migration struct {
	Map     string
	Reason  string // why the pinned one did not fit
	Copied  int    // entries carried over
	Dropped bool   // entries could not be carried over (counters start at zero)
}

// Migrate replaces every map pinned in dir that spec pins by name but
// that does not fit its MapSpec. Entries are copied when key and value
// sizes are unchanged and the map is not per-CPU (per-CPU counters start
// again from zero); a socket map, socket storage or ring buffer is only
// replaced when empty, else Migrate stops with ErrHeld.
//
// Nothing is replaced unless everything can be: the check for held maps
// comes first.
func Migrate(spec *ebpf.CollectionSpec, dir string) ([]Migration, error) {
	type change struct {
		name, path string
		spec       *ebpf.MapSpec
		old        *ebpf.Map
		reason     error
	}
	var changes []change
	defer func() {
		for _, c := range changes {
			c.old.Close()
		}
	}()
	sockets := false // any pinned socket map of spec holds a socket
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(dir, name)
		old, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("pinned map %s: %w", name, err)
		}
		isSockMap := old.Type() == ebpf.SockHash || old.Type() == ebpf.SockMap
		held := isSockMap && !errors.Is(old.NextKey(nil, make([]byte, old.KeySize())), ebpf.ErrKeyNotExist)
		sockets = sockets || held
		reason := ms.Compatible(old)
		if reason == nil {
			old.Close()
			continue
		}
		if held {
			old.Close()
			return nil, fmt.Errorf("pinned map %s: %w (%v)", name, ErrHeld, reason)
		}
		changes = append(changes, change{name, path, ms, old, reason})
	}
	// Socket storage cannot be listed; it is in use if the socket maps
	// beside it hold sockets.
	for _, c := range changes {
		if c.old.Type() == ebpf.SkStorage && sockets {
			return nil, fmt.Errorf("pinned map %s: %w (%v)", c.name, ErrHeld, c.reason)
		}
	}
	var done []Migration
	for _, c := range changes {
		m, err := migrate(c.spec, c.old, c.path, c.reason)
		if err != nil {
			return done, fmt.Errorf("pinned map %s: %w", c.name, err)
		}
		m.Map = c.name
		done = append(done, *m)
	}
	return done, nil
}

func migrate(ms *ebpf.MapSpec, old *ebpf.Map, path string, reason error) (*Migration, error) {
	m := &Migration{Reason: reason.Error()}
	spec := ms.Copy()
	spec.Pinning = ebpf.PinNone
	fresh, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, err
	}
	defer fresh.Close()
	perCPU := old.Type() == ebpf.PerCPUHash || old.Type() == ebpf.PerCPUArray || old.Type() == ebpf.LRUCPUHash
	if !perCPU && old.Type() != ebpf.RingBuf && old.Type() != ebpf.SkStorage &&
		old.KeySize() == fresh.KeySize() && old.ValueSize() == fresh.ValueSize() {
		key, val := make([]byte, old.KeySize()), make([]byte, old.ValueSize())
		it := old.Iterate()
		for it.Next(&key, &val) {
			if err := fresh.Put(key, val); err == nil {
				m.Copied++
			}
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("copy entries: %w", err)
		}
	} else {
		m.Dropped = true
	}
	// Replace the pin. The old map lives on while programs still use it
	// (until their links are replaced), then goes.
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	if err := fresh.Pin(path); err != nil {
		return nil, err
	}
	return m, nil
}
