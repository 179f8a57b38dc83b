package outbound_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/outbound"
)

// BenchmarkWritebackThroughput is the writeback's throughput figure
// (docs/PERFORMANCE.md): b.N app changes (title edits over 200 linked
// incidents) written back by 8 workers to the simulator without a rate
// limit, blind (one PATCH a change) and read-before-write (GET + PATCH).
// In the same run, 8 publishers store b.N bodies of the same size in
// JetStream, each waiting for its ack: "raw_pub/s", and "of_raw" is the
// writeback's rate over it, which compares runs on a machine whose speed
// varies.
func BenchmarkWritebackThroughput(b *testing.B) {
	for _, blind := range []bool{true, false} {
		name := "read-before-write"
		if blind {
			name = "blind"
		}
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, opts{cfg: outbound.Config{BlindWrites: blind, Workers: 8}})
			const records = 200
			ids := make([]string, records)
			for i := range records {
				ids[i] = fmt.Sprintf("TCK-T%d", i)
				h.linkedIncident(ids[i], nil)
			}
			raw := rawPublishRate(b, h, b.N, ids)
			h.sim.ResetStats()
			b.ResetTimer()
			start := time.Now()
			last := map[string]int64{}
			for i := range b.N {
				id := ids[i%records]
				last[id] = h.publish(events.AppUpsert, id, map[string]string{"title": fmt.Sprintf("edit %d", i)}, time.Time{})
			}
			for id, v := range last {
				h.waitWritten(id, v)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			rate := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "changes/s")
			b.ReportMetric(raw, "raw_pub/s")
			b.ReportMetric(rate/raw, "of_raw")
			if d := h.dlq(); len(d) != 0 {
				b.Errorf("%d dead letters", len(d))
			}
		})
	}
}

// rawPublishRate stores n app-change bodies on bridge.apply.ticket.update
// (BRIDGE_APPLY, which nothing here consumes) with 8 publishers waiting for
// each ack, and returns publishes per second.
func rawPublishRate(b *testing.B, h *harness, n int, ids []string) float64 {
	b.Helper()
	const publishers = 8
	bodies := make([][]byte, n)
	for i := range n {
		bodies[i], _ = json.Marshal(events.AppChange{ExternalID: ids[i%len(ids)], Version: int64(i + 1), UpdatedAt: time.Now().UTC(),
			Fields: map[string]string{"title": fmt.Sprintf("edit %d", i)}})
	}
	start := time.Now()
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := p; i < n; i += publishers {
				if _, err := h.js.Publish(context.Background(), events.ApplySubject("ticket", events.ActionUpdate), bodies[i]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}
