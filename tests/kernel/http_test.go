package kernel

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/node/telemetry"
)

// TestHTTPUprobes attaches the net/http server probes to this very test
// binary (a static Go executable with DWARF) and serves a request: the
// probed functions run, and the event carries the request.
func TestHTTPUprobes(t *testing.T) {
	testutil.Privileged(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := telemetry.TraceHTTP(self, os.Getpid(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprint(w, "tea")
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/kettle")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	reqs, err := tr.Read(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 1 || reqs[0].Method != "GET" || reqs[0].Path != "/kettle" || reqs[0].Status != 418 || reqs[0].Bytes != 3 {
		t.Fatalf("events %+v, want one GET /kettle 418 of 3 bytes", reqs)
	}
}
