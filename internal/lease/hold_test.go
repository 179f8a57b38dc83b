package lease_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/lease"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// replica is one process competing for the lease over its own connection.
type replica struct {
	name    string
	running atomic.Bool
	starts  atomic.Int32
	stop    context.CancelFunc
	done    chan error
}

func startReplica(t *testing.T, js jetstream.JetStream, name string, ttl time.Duration, running *atomic.Int32) *replica {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), events.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{name: name, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	h := &lease.Holding{JS: js, KV: kv, Key: "sync.owner", Holder: name, TTL: ttl, Name: "sync ownership", What: "the test's work"}
	go func() {
		r.done <- h.Run(ctx, func(ctx context.Context) error {
			r.starts.Add(1)
			if n := running.Add(1); n > 1 {
				t.Errorf("%s started while %d other replicas run the work", name, n-1)
			}
			r.running.Store(true)
			<-ctx.Done()
			r.running.Store(false)
			running.Add(-1)
			return nil
		})
	}()
	return r
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func owner(rs ...*replica) *replica {
	for _, r := range rs {
		if r.running.Load() {
			return r
		}
	}
	return nil
}

// TestHolding_OneOwnerAndFailOver runs three replicas on one lease: exactly
// one runs the work; a clean stop hands it over within the poll interval,
// a replica cut off from NATS (as good as dead) loses it within the TTL and
// another takes over, never two at once.
func TestHolding_OneOwnerAndFailOver(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	if err := broker.EnsureAll(t.Context(), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	const ttl = 2 * time.Second
	var running atomic.Int32
	conns := make([]jetstream.JetStream, 3)
	var ncs []func()
	for i := range conns {
		nc, js := natstest.Connect(t, s)
		conns[i] = js
		ncs = append(ncs, nc.Close)
	}
	rs := []*replica{
		startReplica(t, conns[0], "a", ttl, &running),
		startReplica(t, conns[1], "b", ttl, &running),
		startReplica(t, conns[2], "c", ttl, &running),
	}
	defer func() {
		for _, r := range rs {
			r.stop()
			<-r.done
		}
	}()
	waitFor(t, 5*time.Second, "one replica owns the work", func() bool { return owner(rs...) != nil })
	first := owner(rs...)

	// A clean stop releases the lease: another replica takes over within
	// the poll interval (TTL/10 here), not the TTL.
	first.stop()
	if err := <-first.done; err != nil {
		t.Fatalf("a stopped owner's Run returned %v, want nil", err)
	}
	first.done <- nil // for the deferred wait
	gap := waitFor(t, ttl, "a standby takes over after a clean stop", func() bool { o := owner(rs...); return o != nil && o != first })
	t.Logf("hand-over after a clean stop: %s", gap)
	second := owner(rs...)

	// The owner loses NATS: it cannot renew, stops its work before the
	// lease can have expired, and another replica takes over once it has.
	for i, r := range rs {
		if r == second {
			ncs[i]()
		}
	}
	lostAt := time.Now()
	waitFor(t, ttl+time.Second, "the cut-off owner stops its work", func() bool { return !second.running.Load() })
	if stopped := time.Since(lostAt); stopped > ttl {
		t.Errorf("the cut-off owner ran for %s after its last renewal could have been, longer than the TTL %s", stopped, ttl)
	}
	gap = waitFor(t, 3*ttl, "the remaining replica takes over", func() bool { o := owner(rs...); return o != nil && o != second })
	t.Logf("fail-over after the owner lost NATS: %s after its work stopped", gap)
	if n := running.Load(); n != 1 {
		t.Fatalf("%d replicas run the work, want 1", n)
	}
}

// TestHolding_TakenLeaseStopsWorkAndCompetesAgain: when the entry is
// overwritten (an operator, or an expiry and another holder), the renewal
// fails on its revision and the work stops at once; the holder competes
// again and gets the lease back once it is free.
func TestHolding_TakenLeaseStopsWorkAndCompetesAgain(t *testing.T) {
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
	var mu sync.Mutex
	var owned []bool
	h := &lease.Holding{JS: js, KV: kv, Key: "sync.owner", Holder: "a", TTL: 1500 * time.Millisecond,
		Owned: func(o bool) { mu.Lock(); owned = append(owned, o); mu.Unlock() }}
	runs := make(chan struct{}, 4)
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- h.Run(rctx, func(ctx context.Context) error { runs <- struct{}{}; <-ctx.Done(); return ctx.Err() })
	}()
	<-runs
	if _, err := kv.Put(ctx, "sync.owner", []byte(`{"holder":"intruder"}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "sync.owner"); err != nil { // and gone again: a takes it back
		t.Fatal(err)
	}
	select {
	case <-runs:
	case <-time.After(5 * time.Second):
		t.Fatal("the work did not start again after the lease was taken and freed")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []bool{true, false, true, false}
	if len(owned) != len(want) {
		t.Fatalf("ownership changes %v, want %v", owned, want)
	}
	for i := range want {
		if owned[i] != want[i] {
			t.Fatalf("ownership changes %v, want %v", owned, want)
		}
	}
}

// TestHolding_WorkErrorEndsRun: a failure of the work itself is not an
// ownership matter; Run returns it (serve stops, as before) and frees the
// lease for a standby.
func TestHolding_WorkErrorEndsRun(t *testing.T) {
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
	boom := errors.New("consumer create failed")
	h := &lease.Holding{JS: js, KV: kv, Key: "sync.owner", TTL: 5 * time.Second}
	if err := h.Run(ctx, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Run returned %v, want the work's error", err)
	}
	if _, err := kv.Get(ctx, "sync.owner"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("lease after the work failed: %v, want it released", err)
	}
}
