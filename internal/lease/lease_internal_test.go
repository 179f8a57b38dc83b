package lease

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

// A renewal JetStream stored but whose ack never reached the holder (its
// context ended on the way) leaves the holder a revision behind. The lease
// is still its own: renewing and releasing it must work, not report it
// taken (which made the holder stop) or leave it to expire (which kept the
// same replica's next reconcile pass out for a TTL).
func TestLease_RenewalWithLostAckIsStillOurs(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, events.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	lostAck := func(l *Lease) {
		t.Helper()
		if _, err := js.Publish(ctx, "$KV."+kv.Bucket()+"."+l.key, l.value(),
			jetstream.WithExpectLastSequencePerSubject(l.rev), jetstream.WithMsgTTL(l.ttl)); err != nil {
			t.Fatal(err)
		}
	}

	l, err := Acquire(ctx, js, kv, "reconcile.lease.incident", "a", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lostAck(l)
	if err := l.Renew(ctx); err != nil {
		t.Fatalf("renewing after a renewal whose ack was lost: %v, want the lease renewed", err)
	}
	lostAck(l)
	if err := l.Release(ctx); err != nil {
		t.Fatalf("releasing after a renewal whose ack was lost: %v", err)
	}
	if _, err := Acquire(ctx, js, kv, "reconcile.lease.incident", "a", 5*time.Second); err != nil {
		t.Fatalf("the released lease cannot be taken again at once: %v", err)
	}

	// Someone else's entry is never taken for ours, even under our name.
	other, err := Acquire(ctx, js, kv, "sync.owner", "a", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stale := *other
	stale.since = other.since.Add(-time.Minute) // an earlier lease of the same holder
	lostAck(other)
	if err := stale.Renew(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("renewing a lease whose entry is another's: %v, want ErrHeld", err)
	}
	if err := stale.Release(ctx); err == nil {
		t.Fatal("releasing a lease whose entry is another's succeeded")
	}
	if err := other.Renew(ctx); err != nil {
		t.Fatalf("the entry's own lease: %v", err)
	}
}
