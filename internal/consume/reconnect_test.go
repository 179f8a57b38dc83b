package consume

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

// Issue 16: "slow consumer, messages dropped" right after a reconnect. A
// reconnect (and a missed heartbeat during the outage) makes nats.go forget
// what its pull requests still owe and ask for a whole batch again, while the
// subscription's channel is only one batch deep; a pull loop that waited for
// a busy worker left that channel full, so the messages of the new request
// were dropped and came back only after the ack wait. The engine now empties
// the channel at once into its own backlog (kept alive with in-progress
// acks), so a restart under load drops nothing.
func TestEngine_NATSRestartedUnderLoadDropsNothing(t *testing.T) {
	opts := natstest.Options(t.TempDir())
	s := natstest.RunServerWithOptions(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var slow atomic.Int64
	nc, err := broker.Connect(ctx, s.ClientURL(), "consume-restart-test", nil, broker.OnSlowConsumer(func() { slow.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: testStream, Subjects: []string{"work.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	const n = 1200
	for i := range n {
		msg := &nats.Msg{Subject: "work.k", Data: fmt.Appendf(nil, "%d", i), Header: nats.Header{}}
		msg.Header.Set(headerKey, fmt.Sprintf("k%d", i%200))
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishing the load did not complete")
	}

	var mu sync.Mutex
	seen := map[string]int{}
	h := &harness{t: t, js: js}
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, _ *jetstream.MsgMetadata) error {
		// Busy workers: the pull loop would wait for them.
		time.Sleep(10 * time.Millisecond)
		mu.Lock()
		seen[string(msg.Data())]++
		mu.Unlock()
		return nil
	})
	cfg.Tuning = Tuning{Workers: 2, Batch: 64, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}
	handled := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
	stop := h.run(cfg)
	defer stop()

	for round := range 3 {
		want := (round + 1) * n / 5
		for deadline := time.Now().Add(20 * time.Second); handled() < want; {
			if time.Now().After(deadline) {
				t.Fatalf("restart %d: %d of %d handled within 20s", round, handled(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		s.Shutdown()
		s.WaitForShutdown()
		s = natstest.Restart(t, s, opts)
	}
	// Well within the 30 s ack wait: a dropped message would come back only
	// after it.
	for deadline := time.Now().Add(20 * time.Second); handled() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages handled within 20s of the last restart (%d slow-consumer reports)", handled(), n, slow.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := slow.Load(); got != 0 {
		t.Errorf("%d slow-consumer reports over 3 NATS restarts under load, want none", got)
	}
}
