package tests

import (
	"os"
	"testing"

	"github.com/sockmesh/sockmesh/tests/harness"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopKubeAPI()
	harness.RemoveBinaries()
	os.Exit(code)
}
