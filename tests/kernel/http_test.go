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

// TestHTTPUprobes attaches the request probes to this very test binary (a
// static Go executable with DWARF), serves a request and makes it: the
// probed functions run, and the events carry the request, once per end.
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
	// The test is its own client too: the request is seen at both ends.
	if len(reqs) < 2 {
		more, _ := tr.Read(2 * time.Second)
		reqs = append(reqs, more...)
	}
	kinds := map[telemetry.Kind]int{}
	for _, r := range reqs {
		if r.Method != "GET" || r.Path != "/kettle" || r.Status != 418 || r.Bytes != 3 || r.ProtoMajor != 1 {
			t.Errorf("event %+v, want GET /kettle 418 of 3 bytes over HTTP/1", r)
		}
		kinds[r.Kind]++
	}
	if len(reqs) != 2 || kinds[telemetry.HTTPServer] != 1 || kinds[telemetry.HTTPClient] != 1 {
		t.Fatalf("events %+v, want the request once at the server and once at the client", reqs)
	}
}
