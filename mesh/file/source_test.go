package file

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/mesh"
)

// TestSourceFollowsEdits drives the watcher through an editor-style
// replace, a bad edit (kept state) and a fix.
func TestSourceFollowsEdits(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	write := func(s string) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	one := "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n"
	two := one + "---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}\n"
	write(one)

	reg := mesh.NewRegistry()
	cfg := DefaultConfig()
	cfg.Paths = []string{path}
	cfg.Debounce = 10 * time.Millisecond
	src, err := New(cfg, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error)
	go func() { done <- src.Run(ctx) }()

	waitServices := func(n int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for len(reg.Snapshot().Services) != n {
			if time.Now().After(deadline) {
				t.Fatalf("registry has %d services, want %d (source error: %v)", len(reg.Snapshot().Services), n, src.Err())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitServices(1)
	write(two)
	waitServices(2)
	v := reg.Snapshot().Version
	write("not: [valid")
	deadline := time.Now().Add(3 * time.Second)
	for src.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if src.Err() == nil {
		t.Fatal("bad edit not reported")
	}
	if got := reg.Snapshot(); got.Version != v || len(got.Services) != 2 {
		t.Fatalf("bad edit changed the registry: version %d->%d, %d services", v, got.Version, len(got.Services))
	}
	write(one)
	waitServices(1)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestSourceFirstLoadMustSucceed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	os.WriteFile(path, []byte("kind: Nope\n"), 0o644)
	cfg := DefaultConfig()
	cfg.Paths = []string{path}
	src, _ := New(cfg, mesh.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := src.Run(context.Background()); err == nil {
		t.Fatal("Run accepted an invalid first load")
	}
}
