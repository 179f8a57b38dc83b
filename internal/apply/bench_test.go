package apply

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// benchApply stores b.N events (1,000 records, successive versions) in
// SN_EVENTS with 8 publishers each waiting for its ack -- the raw JetStream
// publish rate of this run ("raw_pub/s") -- then times the pipeline draining
// them through the applier ("events/s"), recording each outcome in the
// decision log as the bridge does. "of_raw" is their ratio: it
// compares runs on a machine whose speed varies (docs/PERFORMANCE.md).
func benchApply(b *testing.B, newApplier func(e *env) Applier) {
	e := newEnv(b)
	const records, publishers = 1000, 8
	bodies := make([]*nats.Msg, b.N)
	for i := range b.N {
		ev := snEvent(sysID(i%records), int64(i/records), events.ActionUpdate)
		body, _ := json.Marshal(ev)
		msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
		msg.Header.Set(events.HeaderMsgID, ev.MsgID())
		bodies[i] = msg
	}
	pubStart := time.Now()
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := p; i < len(bodies); i += publishers {
				if _, err := e.js.PublishMsg(context.Background(), bodies[i]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	raw := float64(b.N) / time.Since(pubStart).Seconds()
	cfg := e.testConfig(newApplier(e))
	cfg.Workers, cfg.Batch, cfg.Registerer = 8, 128, nil
	benchTuning(&cfg)
	// As the bridge runs: every outcome recorded in the decision log.
	rec, err := trace.NewRecorder(trace.RecorderConfig{Conn: e.nc})
	if err != nil {
		b.Fatal(err)
	}
	cfg.Trace = rec
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	_, stop := e.start(cfg)
	e.waitDrained("apply", 10*time.Minute)
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	rec.Close()
	rate := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(raw, "raw_pub/s")
	b.ReportMetric(rate/raw, "of_raw")
}

// benchTuning gives the pipeline a production ack wait: the test config's
// 2 s would redeliver messages still queued behind a busy worker.
func benchTuning(cfg *Config) { cfg.AckWait = 30 * time.Second }

func BenchmarkApplyNATS(b *testing.B) {
	benchApply(b, func(e *env) Applier { return &NATSApplier{JS: e.js} })
}

func BenchmarkApplyHTTP(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	benchApply(b, func(e *env) Applier {
		h := NewHTTPApplier(srv.URL, newSecret(), 5*time.Second, 8)
		b.Cleanup(h.CloseIdleConnections)
		return h
	})
}
