package nowbridge_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

// fastOpts are consume options with test-sized retry delays.
func fastOpts(durable string) nowbridge.ConsumeOptions {
	return nowbridge.ConsumeOptions{Durable: durable, Workers: 4, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}
}

// recorder collects what a handler saw.
type recorder struct {
	mu   sync.Mutex
	msgs []nowbridge.ApplyMessage
}

func (r *recorder) add(m *nowbridge.ApplyMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, *m)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) all() []nowbridge.ApplyMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

func (r *recorder) handler(ctx context.Context, m *nowbridge.ApplyMessage) error {
	r.add(m)
	return nil
}

// The bridge's real apply pipeline (SN_EVENTS -> mapping -> NATS applier ->
// BRIDGE_APPLY) feeds the SDK: the app receives the mapped incident as a
// typed ApplyMessage, with sys_id, number and sys_mod_count as version.
func TestConsume_ReceivesWhatTheBridgeApplyPipelinePublishes(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, ln, err := state.Open(ctx, e.js)
	if err != nil {
		t.Fatal(err)
	}
	runner, err := apply.New(apply.Config{
		JS: e.js, Applier: &apply.NATSApplier{JS: e.js}, Mapping: mapping.Default(nil), States: st, Links: ln,
		Tuning:     consume.Tuning{Workers: 2, AckWait: 5 * time.Second, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond},
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.run(runner.Run)

	sys := sysID(7)
	for v, action := range []string{events.ActionInsert, events.ActionUpdate} {
		ev := events.SNEvent{
			Instance: "dev12345", Table: "incident", SysID: sys, Action: action, SysModCount: events.ModCount(v),
			SysUpdatedOn: "2026-11-28 10:00:0" + strconv.Itoa(v), SysUpdatedBy: "beth.anglin",
			Record: events.Fields{"number": "INC0010007", "short_description": "Email down v" + strconv.Itoa(v), "state": "2", "priority": "2", "sys_id": sys},
		}
		body, err := events.EncodeWebhookBody(&ev)
		if err != nil {
			t.Fatal(err)
		}
		msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
		msg.Header.Set(events.HeaderMsgID, ev.MsgID())
		if _, err := e.js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}

	var rec recorder
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, rec.handler, fastOpts("app")) })
	waitFor(t, 10*time.Second, func() bool { return rec.len() >= 2 }, func() string { return fmt.Sprintf("the app got %d messages, want 2", rec.len()) })
	e.waitAcked(events.StreamApply, "app", 5*time.Second)

	got := rec.all()
	if len(got) != 2 {
		t.Fatalf("the app got %d messages, want the insert and the update once each: %+v", len(got), got)
	}
	for i, m := range got {
		wantAction := []string{events.ActionInsert, events.ActionUpdate}[i]
		if m.Entity != "ticket" || m.Action != wantAction || m.Table != "incident" || m.SysID != sys || m.Number != "INC0010007" || m.Version != int64(i) {
			t.Errorf("message %d = entity %q action %q table %q sys_id %q number %q version %d; want ticket %s incident %s INC0010007 %d",
				i, m.Entity, m.Action, m.Table, m.SysID, m.Number, m.Version, wantAction, sys, i)
		}
		if want := "Email down v" + strconv.Itoa(i); m.Fields["title"] != want || m.Fields["status"] != "in_progress" {
			t.Errorf("message %d fields = %v; want title %q and status in_progress (the shipped mapping)", i, m.Fields, want)
		}
		if want := events.ApplyMsgID("incident", sys, int64(i), wantAction); m.MsgID != want {
			t.Errorf("message %d MsgID = %q, want %q", i, m.MsgID, want)
		}
	}
}

// Many records, many versions each, some failing at first: every record's
// versions reach the handler one at a time and in order, each once
// successfully, while other records run on the other workers.
func TestConsume_OneRecordOnOneWorkerInOrderThroughRetries(t *testing.T) {
	e := newEnv(t)
	const records, versions = 12, 8
	var msgs []*apply.Message
	for v := range versions {
		for r := range records {
			action := events.ActionUpdate
			if v == 0 {
				action = events.ActionInsert
			}
			msgs = append(msgs, applyMessage(sysID(r), int64(v), action, nowbridge.Fields{"title": fmt.Sprint(v)}))
		}
	}
	e.publishApply(msgs...)

	var (
		mu        sync.Mutex
		active    = map[string]int{}
		handled   = map[string][]int64{}
		attempts  = map[string]int{}
		running   atomic.Int32
		peak      atomic.Int32
		overlaps  atomic.Int32
		successes atomic.Int32
	)
	h := func(ctx context.Context, m *nowbridge.ApplyMessage) error {
		n := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		mu.Lock()
		active[m.SysID]++
		if active[m.SysID] > 1 {
			overlaps.Add(1)
		}
		attempts[m.MsgID]++
		try := attempts[m.MsgID]
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		active[m.SysID]--
		if m.Version%3 == 1 && try == 1 { // fails once: comes back after a delay, holding its record's later versions
			return errors.New("the app's database is busy")
		}
		handled[m.SysID] = append(handled[m.SysID], m.Version)
		successes.Add(1)
		return nil
	}
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, h, fastOpts("app")) })
	waitFor(t, 30*time.Second, func() bool { return successes.Load() >= records*versions }, func() string {
		return fmt.Sprintf("%d of %d versions handled", successes.Load(), records*versions)
	})
	e.waitAcked(events.StreamApply, "app", 10*time.Second)

	if n := overlaps.Load(); n > 0 {
		t.Errorf("a record was on two workers at once %d times", n)
	}
	if p := peak.Load(); p < 2 {
		t.Errorf("at most %d handler ran at once; other records should run beside a busy one", p)
	}
	mu.Lock()
	defer mu.Unlock()
	for r := range records {
		want := make([]int64, versions)
		for v := range want {
			want[v] = int64(v)
		}
		if got := handled[sysID(r)]; !slices.Equal(got, want) {
			t.Errorf("record %d handled versions %v, want %v (each once, in order)", r, got, want)
		}
	}
}

// The version guard: an older version, or a version already handled
// arriving again (a replay under a new message id), is acknowledged without
// calling the handler; the delete of the handled version still reaches it.
func TestConsume_VersionGuardSkipsWhatTheAppAlreadyHas(t *testing.T) {
	e := newEnv(t)
	sys := sysID(1)
	var rec recorder
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, rec.handler, fastOpts("app")) })

	e.publishApply(applyMessage(sys, 3, events.ActionUpdate, nowbridge.Fields{"title": "v3"}))
	waitFor(t, 5*time.Second, func() bool { return rec.len() == 1 }, func() string { return "v3 not handled" })
	e.publishApply(applyMessage(sys, 2, events.ActionUpdate, nowbridge.Fields{"title": "v2"}))
	replay := applyMessage(sys, 3, events.ActionUpdate, nowbridge.Fields{"title": "v3"})
	replay.MsgID = "replay-" + replay.MsgID // a replay stored anew after the duplicate window
	e.publishApply(replay)
	e.waitAcked(events.StreamApply, "app", 5*time.Second)
	if got := rec.all(); len(got) != 1 {
		t.Fatalf("the handler saw %d messages, want only v3 (v2 is older, the replay of v3 is handled already): %+v", len(got), got)
	}

	e.publishApply(applyMessage(sys, 3, events.ActionDelete, nil))
	waitFor(t, 5*time.Second, func() bool { return rec.len() == 2 }, func() string {
		return "the delete of version 3 did not reach the handler: ServiceNow does not bump sys_mod_count on delete"
	})
	again := applyMessage(sys, 3, events.ActionDelete, nil)
	again.MsgID = "replay-" + again.MsgID
	e.publishApply(again)
	e.waitAcked(events.StreamApply, "app", 5*time.Second)
	if got := rec.all(); len(got) != 2 || got[1].Action != events.ActionDelete {
		t.Fatalf("after the delete and its replay the handler saw %+v; want v3 update then one delete", got)
	}
}

// A KVStore keeps the guard across restarts and consumers: a new consumer
// reading the stream from the start (after the app reset its durable)
// calls the handler only for versions nobody handled.
func TestConsume_KVStoreGuardsAcrossRestarts(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store, err := nowbridge.OpenKVStore(ctx, e.js, "app_versions")
	if err != nil {
		t.Fatal(err)
	}
	for v := range 3 {
		e.publishApply(applyMessage(sysID(1), int64(v), events.ActionUpdate, nil), applyMessage(sysID(2), int64(v), events.ActionUpdate, nil))
	}
	var first recorder
	opts := fastOpts("app")
	opts.Store = store
	stop := e.run(func(ctx context.Context) error { return e.client.Consume(ctx, first.handler, opts) })
	e.waitAcked(events.StreamApply, "app", 5*time.Second)
	stop()
	if n := first.len(); n != 6 {
		t.Fatalf("first run handled %d messages, want 6", n)
	}

	var second recorder
	opts.Durable = "app-reset"
	opts.Store, err = nowbridge.OpenKVStore(ctx, e.js, "app_versions") // as a restarted process would
	if err != nil {
		t.Fatal(err)
	}
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, second.handler, opts) })
	e.waitAcked(events.StreamApply, "app-reset", 5*time.Second)
	if n := second.len(); n != 0 {
		t.Fatalf("after the restart the handler was called %d times for versions already handled: %+v", n, second.all())
	}
	e.publishApply(applyMessage(sysID(1), 3, events.ActionUpdate, nil))
	waitFor(t, 5*time.Second, func() bool { return second.len() == 1 }, func() string { return "version 3 not handled after the restart" })
}

// Ack after the handler: a failing handler's message comes back after the
// backoff (or the handler's RetryAfter) until the handler returns nil; only
// then is it acknowledged. A panic is a failure like any other.
func TestConsume_RetriesUntilTheHandlerSucceeds(t *testing.T) {
	e := newEnv(t)
	e.publishApply(applyMessage(sysID(1), 1, events.ActionUpdate, nil))
	var (
		mu    sync.Mutex
		calls []time.Time
	)
	h := func(ctx context.Context, m *nowbridge.ApplyMessage) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		switch len(calls) {
		case 1:
			return errors.New("database down")
		case 2:
			return nowbridge.RetryAfter(errors.New("database in maintenance"), 150*time.Millisecond)
		case 3:
			panic("a bug in the handler")
		}
		return nil
	}
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, h, fastOpts("app")) })
	waitFor(t, 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) >= 4 }, func() string {
		return "the handler was not called a fourth time"
	})
	e.waitAcked(events.StreamApply, "app", 5*time.Second)
	time.Sleep(300 * time.Millisecond) // nothing more may come
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 4 {
		t.Fatalf("handler called %d times, want 4 (error, RetryAfter, panic, success)", len(calls))
	}
	if gap := calls[2].Sub(calls[1]); gap < 150*time.Millisecond {
		t.Errorf("the call after RetryAfter(150ms) came %v later", gap)
	}
}

// Permanent: the message is terminated after one call, not retried, and the
// record's next version is handled.
func TestConsume_PermanentErrorTerminatesTheMessage(t *testing.T) {
	e := newEnv(t)
	e.publishApply(applyMessage(sysID(1), 1, events.ActionUpdate, nowbridge.Fields{"title": "bad"}))
	var calls atomic.Int32
	var rec recorder
	h := func(ctx context.Context, m *nowbridge.ApplyMessage) error {
		calls.Add(1)
		if m.Fields["title"] == "bad" {
			return nowbridge.Permanent(errors.New("title refused by the app's validation"))
		}
		rec.add(m)
		return nil
	}
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, h, fastOpts("app")) })
	e.waitAcked(events.StreamApply, "app", 5*time.Second)
	time.Sleep(500 * time.Millisecond) // longer than RetryMax: a retry would have come
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times for a permanent failure, want 1", n)
	}
	e.publishApply(applyMessage(sysID(1), 2, events.ActionUpdate, nowbridge.Fields{"title": "good"}))
	waitFor(t, 5*time.Second, func() bool { return rec.len() == 1 }, func() string { return "the next version was not handled" })
}

// Two instances of the app on one durable: one consumes, the other stands by
// and takes over at once when the first stops cleanly.
func TestConsume_StandbyInstanceTakesOverWhenTheActiveStops(t *testing.T) {
	e := newEnv(t)
	var a, b recorder
	stopA := e.run(func(ctx context.Context) error { return e.client.Consume(ctx, a.handler, fastOpts("app")) })
	e.publishApply(applyMessage(sysID(0), 0, events.ActionInsert, nil))
	waitFor(t, 5*time.Second, func() bool { return a.len() == 1 }, func() string { return "instance A got nothing" })
	otherClient, err := nowbridge.New(e.js, nowbridge.Config{Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	e.run(func(ctx context.Context) error { return otherClient.Consume(ctx, b.handler, fastOpts("app")) })
	time.Sleep(200 * time.Millisecond) // B's pulls are waiting
	for i := 1; i <= 10; i++ {
		e.publishApply(applyMessage(sysID(i), 0, events.ActionInsert, nil))
	}
	e.waitAcked(events.StreamApply, "app", 5*time.Second)
	if a.len() != 11 || b.len() != 0 {
		t.Fatalf("active A got %d, standby B got %d; want all 11 on A", a.len(), b.len())
	}

	stopA()
	for i := 11; i <= 20; i++ {
		e.publishApply(applyMessage(sysID(i), 0, events.ActionInsert, nil))
	}
	waitFor(t, 5*time.Second, func() bool { return b.len() == 10 }, func() string {
		return fmt.Sprintf("standby B got %d of the 10 messages after A stopped (A: %d)", b.len(), a.len())
	})
	if a.len() != 11 {
		t.Errorf("A handled %d after it stopped", a.len()-11)
	}
}

// Without the bridge's streams, Consume says what to do.
func TestConsume_WithoutTheBridgeSaysToStartIt(t *testing.T) {
	e := newBareEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.client.Consume(ctx, (&recorder{}).handler, nowbridge.ConsumeOptions{})
	if err == nil || !strings.Contains(err.Error(), "BRIDGE_APPLY does not exist") || !strings.Contains(err.Error(), "start the bridge") {
		t.Fatalf("Consume without BRIDGE_APPLY = %v; want an error naming the stream and saying to start the bridge", err)
	}
}

// Entities limits the consumer; a bad entity or durable name is refused.
func TestConsume_EntitiesFilterAndOptionChecks(t *testing.T) {
	e := newEnv(t)
	change := applyMessage(sysID(1), 0, events.ActionInsert, nil)
	change.Entity = "change"
	e.publishApply(applyMessage(sysID(2), 0, events.ActionInsert, nil), change)
	var rec recorder
	opts := fastOpts("changes")
	opts.Entities = []string{"change"}
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, rec.handler, opts) })
	e.waitAcked(events.StreamApply, "changes", 5*time.Second)
	if got := rec.all(); len(got) != 1 || got[0].Entity != "change" {
		t.Fatalf("a consumer of entity change got %+v", got)
	}
	ctx := context.Background()
	if err := e.client.Consume(ctx, rec.handler, nowbridge.ConsumeOptions{Entities: []string{"Bad.Entity"}}); err == nil {
		t.Error("entity Bad.Entity accepted")
	}
	if err := e.client.Consume(ctx, rec.handler, nowbridge.ConsumeOptions{Durable: "a.b"}); err == nil {
		t.Error("durable a.b accepted")
	}
}

// A message that is not an apply message is terminated and logged; the
// handler never sees it and the record's next message flows.
func TestConsume_UndecodableMessageIsTerminated(t *testing.T) {
	e := newEnv(t)
	if _, err := e.js.Publish(context.Background(), events.ApplySubject("ticket", events.ActionUpdate), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	e.publishApply(applyMessage(sysID(1), 1, events.ActionUpdate, nil))
	var rec recorder
	e.run(func(ctx context.Context) error { return e.client.Consume(ctx, rec.handler, fastOpts("app")) })
	e.waitAcked(events.StreamApply, "app", 5*time.Second)
	if got := rec.all(); len(got) != 1 || got[0].Version != 1 {
		t.Fatalf("handler got %+v; want only the valid message", got)
	}
}
