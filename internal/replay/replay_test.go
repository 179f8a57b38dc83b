package replay

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// guarded applies SN events behind a last-version guard, the contract the
// apply path implements; it lets the selection logic be tested alone.
type guarded struct {
	mu      sync.Mutex
	last    map[string]int64
	applied []string
}

func (g *guarded) decode(m Message) (events.SNEvent, error) {
	var ev events.SNEvent
	return ev, json.Unmarshal(m.Data, &ev)
}

func (g *guarded) Check(_ context.Context, m Message) (Check, error) {
	ev, err := g.decode(m)
	if err != nil {
		return Check{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c := Check{Record: ev.Table + "/" + ev.SysID, Verdict: VerdictApply}
	if v, ok := g.last[ev.SysID]; ok && v >= int64(ev.SysModCount) && ev.Action != events.ActionDelete {
		c.Verdict = VerdictSkip
	}
	return c, nil
}

func (g *guarded) Handle(_ context.Context, m Message, force bool) (string, error) {
	ev, _ := g.decode(m)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.applied = append(g.applied, ev.MsgID())
	if g.last == nil {
		g.last = map[string]int64{}
	}
	g.last[ev.SysID] = max(g.last[ev.SysID], int64(ev.SysModCount))
	return "applied", nil
}

func publish(t *testing.T, js jetstream.JetStream, table string, id, mc int, action string) {
	t.Helper()
	ev := events.SNEvent{Table: table, SysID: fmt.Sprintf("%032x", id), Action: action, SysModCount: events.ModCount(mc), SysUpdatedOn: "2026-11-28 10:00:00"}
	b, _ := json.Marshal(ev)
	m := nats.NewMsg(ev.Subject())
	m.Data = b
	m.Header.Set(events.HeaderMsgID, ev.MsgID())
	if _, err := js.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
}

func TestRun_SelectsTheWindowAndHonoursTheGuard(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		publish(t, js, "incident", i, 1, events.ActionUpdate) // seq 1..10
	}
	publish(t, js, "problem", 1, 0, events.ActionInsert)  // seq 11
	publish(t, js, "incident", 3, 1, events.ActionDelete) // seq 12
	g := &guarded{last: map[string]int64{}}
	for i := range 5 {
		g.last[fmt.Sprintf("%032x", i)] = 1 // records 0-4 already applied
	}

	dry, err := Run(ctx, js, Selection{Stream: events.StreamSN, Name: "incident"}, g, Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Selected != 11 || dry.Apply != 6 || dry.Skip != 5 || dry.Applied != 0 || len(g.applied) != 0 {
		t.Fatalf("dry run = %+v (applied %v); want 11 selected, 6 apply, 5 skip, nothing applied", dry, g.applied)
	}
	sum, err := Run(ctx, js, Selection{Stream: events.StreamSN, FromSeq: 3, ToSeq: 8}, g, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Selected != 6 || sum.Applied != 3 || sum.Skipped != 3 || sum.FirstSeq != 3 || sum.LastSeq != 8 {
		t.Fatalf("seq 3-8 = %+v; want 6 selected (records 2-7), 3 applied (5-7), 3 skipped", sum)
	}
	g.applied = nil
	sum, err = Run(ctx, js, Selection{Stream: events.StreamSN, SysID: fmt.Sprintf("%032x", 3)}, g, Options{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Selected != 2 || sum.Applied != 2 || len(g.applied) != 2 {
		t.Fatalf("--sys-id --force = %+v, applied %v; want the update and the delete of record 3", sum, g.applied)
	}
	future := time.Now().Add(time.Hour)
	sum, err = Run(ctx, js, Selection{Stream: events.StreamSN, Since: future}, g, Options{DryRun: true})
	if err != nil || sum.Selected != 0 {
		t.Fatalf("window in the future = %+v, %v; want nothing", sum, err)
	}
}

func TestParse(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2h":                   now.Add(-2 * time.Hour),
		"2026-11-28T10:00:00Z": time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC),
		"":                     {},
	} {
		got, err := ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseTime("yesterday", now); err == nil {
		t.Error("ParseTime(yesterday) succeeded")
	}
	for in, want := range map[string][2]uint64{"5-9": {5, 9}, "7": {7, 7}, "7-": {7, 0}} {
		a, b, err := ParseSeqRange(in)
		if err != nil || a != want[0] || b != want[1] {
			t.Errorf("ParseSeqRange(%q) = %d, %d, %v; want %v", in, a, b, err, want)
		}
	}
	for _, bad := range []string{"9-5", "x", "0", "-3"} {
		if _, _, err := ParseSeqRange(bad); err == nil {
			t.Errorf("ParseSeqRange(%q) succeeded", bad)
		}
	}
}
