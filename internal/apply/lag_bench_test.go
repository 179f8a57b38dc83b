package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
)

// BenchmarkApplyLagUnderIngest measures how far apply falls behind while
// events keep arriving (issue 16: ~2,000 applied of ~22,000 stored). The
// pipeline runs with serve's tuning and the NATS applier while 16
// publishers store events in SN_EVENTS as fast as JetStream acks them (the
// receiver's path: one synchronous publish per event; 1,000 records,
// successive versions) for NOWBRIDGE_LAG_FOR (default 5s). Metrics:
// stored/s and applied/s during the ingest, of_ingest (their ratio),
// lag_msgs (stored and not yet applied when the ingest stops) and
// catchup_s (how long apply then takes to finish). Run it with -benchtime 1x.
func BenchmarkApplyLagUnderIngest(b *testing.B) {
	ingestFor := 5 * time.Second
	if v := os.Getenv("NOWBRIDGE_LAG_FOR"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			b.Fatalf("NOWBRIDGE_LAG_FOR=%q: want a duration like 10s", v)
		}
		ingestFor = d
	}
	for range b.N {
		e := newEnv(b)
		cfg := e.testConfig(&NATSApplier{JS: e.js})
		cfg.Tuning = consume.Tuning{} // serve's: the defaults (apply.Config, consume)
		cfg.Workers = applyLagWorkers()
		cfg.Registerer = nil
		_, stop := e.start(cfg)

		const records, publishers = 1000, 16
		var next, stored atomic.Int64
		deadline := time.Now().Add(ingestFor)
		start := time.Now()
		var wg sync.WaitGroup
		for range publishers {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					i := int(next.Add(1) - 1)
					ev := snEvent(sysID(i%records), int64(i/records), events.ActionUpdate)
					body, _ := json.Marshal(ev)
					msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
					msg.Header.Set(events.HeaderMsgID, ev.MsgID())
					if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
						b.Error(err)
						return
					}
					stored.Add(1)
				}
			})
		}
		wg.Wait()
		ingest := time.Since(start)
		lag := e.applyLag()
		caught := time.Now()
		e.waitDrained("apply", 10*time.Minute)
		catchup := time.Since(caught)
		stop()
		n := stored.Load()
		applied := n - lag
		b.ReportMetric(float64(n)/ingest.Seconds(), "stored/s")
		b.ReportMetric(float64(applied)/ingest.Seconds(), "applied/s")
		b.ReportMetric(float64(applied)/float64(n), "of_ingest")
		b.ReportMetric(float64(lag), "lag_msgs")
		b.ReportMetric(catchup.Seconds(), "catchup_s")
	}
}

// applyLagWorkers is serve's apply worker count, or NOWBRIDGE_LAG_WORKERS.
func applyLagWorkers() int {
	if v := os.Getenv("NOWBRIDGE_LAG_WORKERS"); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err == nil && n > 0 {
			return n
		}
	}
	return 0 // the default
}

// applyLag is how many stored events the apply consumer has not acked.
func (e *env) applyLag() int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, events.StreamSN)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := e.js.Consumer(ctx, events.StreamSN, "apply")
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return int64(st.CachedInfo().State.LastSeq - info.AckFloor.Stream)
}
