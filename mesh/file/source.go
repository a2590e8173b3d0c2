package file

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/sockmesh/sockmesh/mesh"
)

// Config says what to read.
type Config struct {
	// Paths are YAML files, or directories whose *.yaml and *.yml files are
	// read (not recursively).
	Paths []string
	// Debounce is how long to wait after a change before reading, so an
	// editor's write-rename-chmod sequence is read once.
	Debounce time.Duration
}

// DefaultConfig returns a Config with the defaults filled in.
func DefaultConfig() Config {
	return Config{Debounce: 100 * time.Millisecond}
}

// Validate checks the config.
func (c Config) Validate() error {
	if len(c.Paths) == 0 {
		return errors.New("file source: no paths given")
	}
	if c.Debounce < 0 {
		return errors.New("file source: negative debounce")
	}
	return nil
}

// SourceName is the name this source registers its services under.
const SourceName = "file"

// Source keeps a registry in step with a set of YAML files.
type Source struct {
	cfg Config
	reg *mesh.Registry
	log *slog.Logger

	watcher *fsnotify.Watcher

	mu      sync.Mutex
	lastErr error
	loaded  bool
}

// New returns a source that will feed reg. It starts watching the files at
// once, so nothing written after New returns is missed, even before Run.
func New(cfg Config, reg *mesh.Registry, log *slog.Logger) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("file source: watch: %w", err)
	}
	// Watch directories, not files: editors replace files by rename, which
	// ends a watch on the file itself.
	dirs := map[string]bool{}
	for _, p := range cfg.Paths {
		dir := p
		if st, err := os.Stat(p); err != nil || !st.IsDir() {
			dir = filepath.Dir(p)
		}
		if !dirs[dir] {
			if err := w.Add(dir); err != nil {
				w.Close()
				return nil, fmt.Errorf("file source: watch %s: %w", dir, err)
			}
			dirs[dir] = true
		}
	}
	return &Source{cfg: cfg, reg: reg, log: log, watcher: w}, nil
}

// Err returns the problem with the files as last read, or nil when they were
// accepted.
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Load reads and validates the files once and, if they are good, puts them
// in the registry.
func (s *Source) Load() error {
	files, err := readAll(s.cfg.Paths)
	if err == nil {
		var m *Mesh
		if m, err = ParseMesh(files); err == nil {
			s.reg.SetMesh(SourceName, m.Services, m.Pods)
		}
	}
	s.mu.Lock()
	s.lastErr = err
	s.loaded = s.loaded || err == nil
	s.mu.Unlock()
	return err
}

// Run loads the files unless Load already succeeded, then reloads them
// whenever they change until ctx ends. The first load must succeed; later
// failures are logged and the last good state stays in the registry.
func (s *Source) Run(ctx context.Context) error {
	w := s.watcher
	defer w.Close()
	s.mu.Lock()
	loaded := s.loaded
	s.mu.Unlock()
	if !loaded {
		if err := s.Load(); err != nil {
			return fmt.Errorf("file source: %w", err)
		}
	}
	s.log.Info("mesh files loaded", "paths", s.cfg.Paths, "version", s.reg.Snapshot().Version)

	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			if s.relevant(ev.Name) {
				timer = time.After(s.cfg.Debounce)
			}
		case err := <-w.Errors:
			s.log.Warn("file watch error", "err", err)
		case <-timer:
			timer = nil
			if err := s.Load(); err != nil {
				s.log.Error("mesh files rejected, keeping the last good state", "err", err)
				continue
			}
			s.log.Info("mesh files reloaded", "version", s.reg.Snapshot().Version)
		}
	}
}

func (s *Source) relevant(name string) bool {
	for _, p := range s.cfg.Paths {
		if filepath.Clean(p) == filepath.Clean(name) {
			return true
		}
		if st, err := os.Stat(p); err == nil && st.IsDir() && filepath.Dir(name) == filepath.Clean(p) && isYAML(name) {
			return true
		}
	}
	return false
}

func isYAML(name string) bool {
	return strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")
}

// readAll reads every file named by paths.
func readAll(paths []string) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		names := []string{p}
		if st.IsDir() {
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, err
			}
			names = names[:0]
			for _, e := range entries {
				if !e.IsDir() && isYAML(e.Name()) {
					names = append(names, filepath.Join(p, e.Name()))
				}
			}
		}
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				return nil, err
			}
			files[n] = b
		}
	}
	return files, nil
}
