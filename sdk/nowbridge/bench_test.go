package nowbridge_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

// BenchmarkConsume stores b.N apply messages (1,000 records, successive
// versions, the shipped incident mapping's fields) in BRIDGE_APPLY through
// the bridge's NATS applier (8 publishers), then drains the stream three
// times in the same run, each with its own durable consumer:
//
//  1. a raw JetStream consumer: one goroutine pulling with Messages (the
//     SDK's batch size), decoding each body into an ApplyMessage and
//     acking it -- the least an app consuming bridge.apply can do;
//  2. the SDK's Consume (8 workers, a handler that returns nil, the
//     in-memory version guard), timed ("msgs/s");
//  3. the raw consumer again.
//
// "raw_msgs/s" is the mean of the two raw drains and "of_raw" the SDK's
// rate over it: the SDK's cost (ordering per record, the guard, in-progress
// acks) on the same server, store and machine load (docs/PERFORMANCE.md).
func BenchmarkConsume(b *testing.B) { benchConsume(b, 0) }

// BenchmarkConsumeSlowHandler is BenchmarkConsume with a handler that
// waits 1 ms, as one write to the app's database would; the raw consumer
// waits as long per message. It shows what the workers buy while the order
// per record holds (docs/PERFORMANCE.md).
func BenchmarkConsumeSlowHandler(b *testing.B) { benchConsume(b, time.Millisecond) }

func benchConsume(b *testing.B, work time.Duration) {
	e := newEnv(b)
	const records, publishers = 1000, 8
	a := &apply.NATSApplier{JS: e.js}
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := p; i < b.N; i += publishers {
				m := applyMessage(sysID(i%records), int64(i/records), events.ActionUpdate,
					nowbridge.Fields{"title": "Email down", "description": "Users cannot send mail since 9:00", "status": "in_progress", "priority": "2", "urgency": "2", "impact": "2"})
				if _, err := a.Apply(context.Background(), m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()

	raw1 := rawDrain(b, e, "raw-before", work)
	var handled atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	stop := e.run(func(ctx context.Context) error {
		return e.client.Consume(ctx, func(context.Context, *nowbridge.ApplyMessage) error {
			if work > 0 {
				time.Sleep(work)
			}
			handled.Add(1)
			return nil
		}, nowbridge.ConsumeOptions{Durable: "sdk", Workers: 8, Logger: e.log})
	})
	waitFor(b, 10*time.Minute, func() bool { return handled.Load() >= int64(b.N) }, func() string { return "the SDK did not drain the stream" })
	e.waitAcked(events.StreamApply, "sdk", time.Minute)
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	raw2 := rawDrain(b, e, "raw-after", work)

	rate := float64(b.N) / elapsed.Seconds()
	raw := (raw1 + raw2) / 2
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(raw, "raw_msgs/s")
	b.ReportMetric(rate/raw, "of_raw")
}

// rawDrain consumes the whole of BRIDGE_APPLY with a plain pull consumer,
// spending work on each message, and returns its rate in messages per
// second.
func rawDrain(b *testing.B, e *env, durable string, work time.Duration) float64 {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	cons, err := e.js.CreateOrUpdateConsumer(ctx, events.StreamApply, jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 4 * 32,
	})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(32))
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		msg, err := it.Next()
		if err != nil {
			b.Fatal(err)
		}
		var m nowbridge.ApplyMessage
		if err := json.Unmarshal(msg.Data(), &m); err != nil {
			b.Fatal(err)
		}
		m.MsgID = msg.Headers().Get(events.HeaderMsgID)
		if work > 0 {
			time.Sleep(work)
		}
		if err := msg.Ack(); err != nil {
			b.Fatal(err)
		}
	}
	it.Stop()
	e.waitAcked(events.StreamApply, durable, time.Minute)
	return float64(b.N) / time.Since(start).Seconds()
}
