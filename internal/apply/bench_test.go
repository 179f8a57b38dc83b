package apply

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
)

// benchApply stores b.N events (1,000 records, successive versions) in
// SN_EVENTS, then times the pipeline draining them through the applier.
func benchApply(b *testing.B, newApplier func(e *env) Applier) {
	e := newEnv(b)
	ctx := context.Background()
	const records = 1000
	for i := range b.N {
		ev := snEvent(sysID(i%records), int64(i/records), events.ActionUpdate)
		body, _ := json.Marshal(ev)
		msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
		msg.Header.Set(events.HeaderMsgID, ev.MsgID())
		if _, err := e.js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishing the events took over a minute")
	}
	cfg := e.testConfig(newApplier(e))
	cfg.Workers, cfg.Batch, cfg.AckWait, cfg.Registerer = 8, 128, 30*time.Second, nil
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	_, stop := e.start(cfg)
	e.waitDrained("apply", 10*time.Minute)
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	_ = ctx
}

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
