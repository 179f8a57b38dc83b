package outbound_test

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// BenchmarkWritebackUnderRateLimit is the writeback's load figure
// (docs/PERFORMANCE.md): the simulator allows R API requests per second,
// the client is set to R, and N app changes over 50 records are written.
// It reports requests/s over R ("of_R") and the share of requests answered
// 429 ("pct_429"). One load run per sub-benchmark whatever b.N is (run with
// -benchtime=1x); R and N come from NOWBRIDGE_LOAD_RATE and _CHANGES.
func BenchmarkWritebackUnderRateLimit(b *testing.B) {
	rate := envInt("NOWBRIDGE_LOAD_RATE", 100)
	changes := envInt("NOWBRIDGE_LOAD_CHANGES", 1000)
	cases := []struct {
		name        string
		blind       bool
		clientLimit float64
	}{
		{"read-before-write, client limiter at R", false, float64(rate)},
		{"blind writes, client limiter at R", true, float64(rate)},
		{"read-before-write, no client limiter (contrast)", false, 0},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			h := newHarness(b, opts{
				cfg: outbound.Config{BlindWrites: tc.blind, Workers: 16},
				snCfg: func(c *snclient.Config) {
					c.RateLimit, c.RateBurst = tc.clientLimit, 1
					c.RetryMaxElapsed = 30 * time.Second
				},
			})
			const records = 50
			ids := make([]string, records)
			for i := range records {
				ids[i] = fmt.Sprintf("TCK-L%d", i)
				h.linkedIncident(ids[i], nil)
			}
			h.sim.SetBurstLimit(rate)
			h.sim.ResetStats()
			start := time.Now()
			last := map[string]int64{}
			for i := range changes {
				id := ids[i%records]
				last[id] = h.publish(events.AppUpsert, id, map[string]string{"title": fmt.Sprintf("load %d", i)}, time.Time{})
			}
			for id, v := range last {
				h.waitWritten(id, v)
			}
			elapsed := time.Since(start)
			ok := h.count("GET", pathOne, 200) + h.count("PATCH", pathOne, 200)
			limited := h.count("", "", 429)
			total := h.count("", pathOne, 0)
			perSec := float64(ok) / elapsed.Seconds()
			b.ReportMetric(perSec/float64(rate), "of_R")
			b.ReportMetric(100*float64(limited)/float64(max(total, 1)), "pct_429")
			b.Logf("R=%d req/s, %d changes in %s: %d requests answered 2xx = %.1f req/s = %.3f of R; %.1f changes/s; 429: %d of %d requests (%.2f%%)",
				rate, changes, elapsed.Round(time.Millisecond), ok, perSec, perSec/float64(rate),
				float64(changes)/elapsed.Seconds(), limited, total, 100*float64(limited)/float64(max(total, 1)))
			if d := h.dlq(); len(d) != 0 {
				b.Errorf("%d dead letters under load", len(d))
			}
		})
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
