package telemetry

import (
	"bufio"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockmesh/sockmesh/internal/testutil"
)

// TestHTTPServerRequests probes a real Go HTTP server (built plain and with
// -s -w, so offsets come from DWARF and from the table) and checks every
// request is reported with its method, path, status and size.
func TestHTTPServerRequests(t *testing.T) {
	testutil.Privileged(t)
	for _, ldflags := range []string{"", "-s -w"} {
		t.Run("ldflags="+ldflags, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "httpserver")
			if out, err := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin, "./testdata/httpserver").CombinedOutput(); err != nil {
				t.Fatalf("build: %v\n%s", err, out)
			}
			srv := exec.Command(bin)
			stdout, _ := srv.StdoutPipe()
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { srv.Process.Kill(); srv.Wait() }()
			addr, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			addr = strings.TrimSpace(addr)

			tr, err := TraceHTTP(bin, srv.Process.Pid, true)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()

			// method, path, status, response bytes, request bytes
			want := []string{"GET /ok 200 5 0", "POST /missing 404 19 123", "GET /fail 500 5 0"}
			for _, w := range want {
				f := strings.Fields(w)
				n, _ := strconv.Atoi(f[4])
				req, _ := http.NewRequest(f[0], "http://"+addr+f[1], strings.NewReader(strings.Repeat("x", n)))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			var got []string
			deadline := time.Now().Add(5 * time.Second)
			for len(got) < len(want) && time.Now().Before(deadline) {
				reqs, err := tr.Read(time.Second)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range reqs {
					if r.PID != uint32(srv.Process.Pid) || r.Duration <= 0 {
						t.Errorf("event %+v: wrong pid or duration", r)
					}
					got = append(got, strings.Join([]string{r.Method, r.Path, strconv.Itoa(r.Status), strconv.FormatUint(r.Bytes, 10), strconv.FormatUint(r.ReqBytes, 10)}, " "))
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("requests seen %q, want %q", got, want)
			}
			if d, _ := tr.Drops(); d != 0 {
				t.Errorf("%d events dropped", d)
			}
			// The in-kernel aggregates agree with the events.
			stats, err := tr.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if stats[200].Count != 1 || stats[404].Count != 1 || stats[500].Count != 1 || stats[200].BytesSum != 5 || stats[404].BytesSum != 19 ||
				stats[404].ReqBytesSum != 123 || stats[404].ReqBytesBuckets[3] != 1 || stats[200].ReqBytesBuckets[0] != 1 {
				t.Fatalf("aggregates %+v", stats)
			}
			var inBuckets uint64
			for _, n := range stats[200].DurationBuckets {
				inBuckets += n
			}
			if inBuckets != 1 || stats[200].BytesBuckets[1] != 1 { // 5 bytes: the <= 10 bucket
				t.Fatalf("buckets %+v", stats[200])
			}
		})
	}
}
