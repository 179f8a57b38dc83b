package consume

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// NoDeadLetters: a permanent failure is terminated once, nothing reaches
// BRIDGE_DLQ, and the record's next message still runs.
func TestEngine_NoDeadLettersTerminatesOnly(t *testing.T) {
	h := newHarness(t)
	var calls sync.Map // seq -> attempts
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		n, _ := calls.LoadOrStore(meta.Sequence.Stream, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if string(msg.Data()) == "bad" {
			return Permanent(errors.New("app rejected the title"), "")
		}
		return nil
	})
	cfg.NoDeadLetters = true
	h.run(cfg)
	bad := h.publish("a", "bad")
	good := h.publish("a", "good")
	h.waitDone(10 * time.Second)
	time.Sleep(300 * time.Millisecond) // a redelivery would come by now (RetryMax 200 ms)

	handledOnce(t, &calls, bad, good)
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("BRIDGE_DLQ holds %d messages, want none with NoDeadLetters", len(dl))
	}
}

// PriorityGroup with a pinned consumer: one engine consumes at a time, and
// a clean stop hands over to the standby at once, not after the PinnedTTL.
func TestEngine_PinnedPriorityGroupHandsOverAtStop(t *testing.T) {
	h := newHarness(t)
	var got [2]atomic.Int32
	config := func(i int) Config {
		cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
			got[i].Add(1)
			return nil
		})
		cfg.Consumer.PriorityPolicy = jetstream.PriorityPolicyPinned
		cfg.Consumer.PriorityGroups = []string{"g"}
		cfg.Consumer.PinnedTTL = time.Minute
		cfg.PriorityGroup = "g"
		return cfg
	}
	stopFirst := h.run(config(0))
	h.publish("a", "1")
	h.waitDone(10 * time.Second)
	h.run(config(1))
	for i := range 5 {
		h.publish("b", string(rune('0'+i)))
	}
	h.waitDone(10 * time.Second)
	if got[0].Load() != 6 || got[1].Load() != 0 {
		t.Fatalf("handled %d by the pinned engine and %d by the standby; want 6 and 0", got[0].Load(), got[1].Load())
	}

	stopFirst()
	start := time.Now()
	h.publish("c", "after")
	h.waitDone(10 * time.Second)
	if got[1].Load() != 1 {
		t.Fatalf("the standby handled %d after the stop, want 1", got[1].Load())
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the standby took over after %v; a clean stop should unpin at once (PinnedTTL 1m)", took)
	}
}

// handledOnce checks that each of seqs was handled exactly once (calls:
// sequence -> *atomic.Int32 of attempts).
func handledOnce(t *testing.T, calls *sync.Map, seqs ...uint64) {
	t.Helper()
	for _, seq := range seqs {
		n, ok := calls.Load(seq)
		if !ok || n.(*atomic.Int32).Load() != 1 {
			t.Errorf("message %d handled %v times, want once", seq, n)
		}
	}
}
