// Package workload is the request/response loop podbin and rrbin share.
// It must not copy with io.Copy or anything else that splices: rrbin links
// it and must stay a program the fast path lets receive.
package workload

import (
	"io"
	"slices"
	"time"
)

// RRResult is what "rr" prints: request/response over one TCP connection.
type RRResult struct {
	Ops     int     `json:"ops"`
	OpsPerS float64 `json:"opsPerS"`
	P50us   float64 `json:"p50us"`
	P99us   float64 `json:"p99us"`
}

// RoundTrips writes size bytes to w and reads their echo from r, n times,
// timing each round trip.
func RoundTrips(w io.Writer, r io.Reader, n, size int) (RRResult, error) {
	req, resp := make([]byte, size), make([]byte, size)
	lat := make([]time.Duration, n)
	start := time.Now()
	for i := range lat {
		t0 := time.Now()
		if _, err := w.Write(req); err != nil {
			return RRResult{}, err
		}
		if _, err := io.ReadFull(r, resp); err != nil {
			return RRResult{}, err
		}
		lat[i] = time.Since(t0)
	}
	total := time.Since(start)
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return RRResult{
		Ops: n, OpsPerS: float64(n) / total.Seconds(),
		P50us: us(lat[len(lat)/2]), P99us: us(lat[len(lat)*99/100]),
	}, nil
}
