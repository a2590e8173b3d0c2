package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds sockmesh and podbin once per test process and returns
// their paths.
func Binaries() (sockmesh, podbin string, err error) {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "sockmesh-bin-")
		if buildErr != nil {
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		for _, pkg := range []string{"./cmd/sockmesh", "./tests/podbin", "./tests/rrbin"} {
			cmd := exec.Command("go", "build", "-o", buildDir+"/", pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	return filepath.Join(buildDir, "sockmesh"), filepath.Join(buildDir, "podbin"), buildErr
}

// RRBin returns the path of tests/rrbin, the workload built without splice
// (built with the others by Binaries).
func RRBin() (string, error) {
	_, _, err := Binaries()
	return filepath.Join(buildDir, "rrbin"), err
}

func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the module")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// RemoveBinaries deletes what Binaries built; call it from TestMain.
func RemoveBinaries() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

var (
	toolMu    sync.Mutex
	toolBuilt = map[string]string{}
)

// Tool builds a third-party program pinned in the tools module (e.g.
// "github.com/fullstorydev/grpcurl/cmd/grpcurl") once per test process and
// returns its path.
func Tool(pkg string) (string, error) {
	if _, _, err := Binaries(); err != nil {
		return "", err
	}
	toolMu.Lock()
	defer toolMu.Unlock()
	if p, ok := toolBuilt[pkg]; ok {
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = filepath.Join(root, "tools")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	toolBuilt[pkg] = out
	return out, nil
}
