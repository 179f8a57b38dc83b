package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
)

// TestDev_DemoRunsBothDirectionsAndExitsZero runs `bridge dev --demo` the
// way a newcomer does: the whole binary in-process, nothing installed.
func TestDev_DemoRunsBothDirectionsAndExitsZero(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"dev", "--demo", "--data-dir", t.TempDir()}, func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("bridge dev --demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{
		"nats --server", "sub 'bridge.apply.>'", "pub app.ticket.upsert", "/oauth_token.do", "/api/now/table/incident/",
		"<- bridge.apply.ticket.update", "its webhook was an echo", "bridge.apply: quiet", "no write to ServiceNow", "Demo done",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// amplifyChanges is the size of the amplification check. 1,000 by default,
// under -race too (about 20 s on 2 cores); -amplify.changes tunes it.
var (
	amplifyChanges = flag.Int("amplify.changes", 1000, "random changes of TestDev_NoEchoAmplification")
	amplifySeed    = flag.Uint64("amplify.seed", 7, "random seed of TestDev_NoEchoAmplification")
)

// fakeApp is the SaaS side: it keeps tickets, applies what arrives on
// bridge.apply, and sometimes republishes what it was handed (an app that
// emits a change event for every write, its own integration's included).
type fakeApp struct {
	mu        sync.Mutex
	tickets   map[string]map[string]string // external_id -> SaaS fields
	versions  map[string]int64
	applied   int // bridge.apply messages received for linked tickets
	published int // messages sent to app.ticket.upsert
	ctx       context.Context
	t         *testing.T
	st        *devStack

	// done is the BRIDGE_APPLY sequence of the last message the app
	// finished with, its echo published.
	done uint64
	// seen lists every apply message for a linked ticket, for failure reports.
	seen []string
}

// startFakeApp consumes bridge.apply like a SaaS app: it applies the
// fields of linked tickets and republishes every third version it is
// handed (its echo).
func startFakeApp(ctx context.Context, t *testing.T, st *devStack) *fakeApp {
	t.Helper()
	app := &fakeApp{tickets: map[string]map[string]string{}, versions: map[string]int64{}, ctx: ctx, t: t, st: st}
	cons, err := st.js.OrderedConsumer(ctx, events.StreamApply, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		defer func() {
			if meta, err := m.Metadata(); err == nil {
				app.mu.Lock()
				app.done = meta.Sequence.Stream
				app.mu.Unlock()
			}
		}()
		var am apply.Message
		if json.Unmarshal(m.Data(), &am) != nil || am.ExternalID == "" {
			return
		}
		app.mu.Lock()
		_, ok := app.tickets[am.ExternalID]
		if ok {
			app.seen = append(app.seen, fmt.Sprintf("%s v%d %v", am.ExternalID, am.Version, am.Fields))
			app.applied++
			for k, v := range am.Fields {
				app.tickets[am.ExternalID][k] = v
			}
		}
		app.mu.Unlock()
		if ok && am.Version%3 == 0 {
			app.publish(am.ExternalID) // the app's echo of what it was handed
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return app
}

// publish sends the ticket's current fields as its next version.
func (app *fakeApp) publish(id string) {
	app.mu.Lock()
	app.versions[id]++
	v, fields := app.versions[id], maps.Clone(app.tickets[id])
	// A comment is an action ("add this"), not state: sent once.
	delete(app.tickets[id], "comment")
	app.published++
	app.mu.Unlock()
	body, _ := json.Marshal(events.AppChange{ExternalID: id, Version: v, UpdatedAt: time.Now().UTC(), Fields: fields})
	if _, err := app.st.js.Publish(app.ctx, "app.ticket.upsert", body, jetstream.WithMsgID(events.AppMsgID("ticket", id, v, "upsert"))); err != nil && app.ctx.Err() == nil {
		app.t.Error(err)
	}
}

// drain waits until nothing is in flight anywhere: the simulator's business
// rules delivered, every durable consumer of SN_EVENTS (apply) and
// APP_EVENTS (writeback) with nothing pending or unacknowledged (a consumer
// acks only once a message's effects are done), and the app through
// BRIDGE_APPLY with its echoes published. Each stage can start work for
// another, so a pass counts only when every stage was idle and nothing new
// was fired or stored while it looked.
func (app *fakeApp) drain(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		before, err := app.progress(ctx)
		if err != nil {
			return err
		}
		idle, why, err := app.idle(ctx)
		if err != nil {
			return err
		}
		after, err := app.progress(ctx)
		if err != nil {
			return err
		}
		if idle && after == before {
			return nil
		}
		select {
		case <-ctx.Done():
			if why == "" {
				why = "new work arrived during every check"
			}
			return fmt.Errorf("not drained within %s: %s", timeout, why)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// progress is everything that grows when work starts: business rules fired,
// and the last sequence of each stream.
func (app *fakeApp) progress(ctx context.Context) (string, error) {
	out := fmt.Sprint(app.st.sim.WebhookStats().Fired)
	for _, name := range []string{events.StreamSN, events.StreamApp, events.StreamApply} {
		s, err := app.st.js.Stream(ctx, name)
		if err != nil {
			return "", err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return "", err
		}
		out += fmt.Sprintf(" %s:%d", name, info.State.LastSeq)
	}
	return out, nil
}

func (app *fakeApp) idle(ctx context.Context) (bool, string, error) {
	if err := app.st.sim.WaitWebhooks(ctx); err != nil {
		return false, "", err
	}
	for _, name := range []string{events.StreamSN, events.StreamApp} {
		s, err := app.st.js.Stream(ctx, name)
		if err != nil {
			return false, "", err
		}
		list := s.ListConsumers(ctx)
		busy := ""
		for ci := range list.Info() {
			if ci.NumPending > 0 || ci.NumAckPending > 0 {
				busy = fmt.Sprintf("consumer %s on %s: %d pending, %d unacknowledged", ci.Name, name, ci.NumPending, ci.NumAckPending)
			}
		}
		if err := list.Err(); err != nil {
			return false, "", err
		}
		if busy != "" {
			return false, busy, nil
		}
	}
	s, err := app.st.js.Stream(ctx, events.StreamApply)
	if err != nil {
		return false, "", err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return false, "", err
	}
	app.mu.Lock()
	done := app.done
	app.mu.Unlock()
	if done < info.State.LastSeq {
		return false, fmt.Sprintf("the app is at %s sequence %d of %d", events.StreamApply, done, info.State.LastSeq), nil
	}
	return true, "", nil
}

func TestDev_NoEchoAmplification(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &lockedBuffer{}
	st, wait, err := startDev(ctx, logs, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: t.TempDir(), debug: true,
		// Each record changes every round, every few tens of milliseconds:
		// under the default grace nearly every app change would follow a
		// hand-over of its record closely enough to go unclaimed (correct,
		// and accounted for below, but then the echo claim is hardly tested).
		grace: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("dev stack: %v", err)
		}
	}()
	rng := rand.New(rand.NewPCG(*amplifySeed, 11))
	app := startFakeApp(ctx, t, st)
	publish := app.publish
	snWrites := func() int {
		return st.sim.RequestCount("PATCH", "/api/now/table/incident/{sys_id}", 200) + st.sim.RequestCount("POST", "/api/now/table/incident", 201)
	}
	handled := func() int { return int(gather(t, st, "bridge_writeback_messages_total")) }
	// quiesce waits until nothing is in flight (not merely until the
	// counts look right: the next round must not start while the bridge
	// still settles the last one), then checks the counts.
	var roundLog []string // the changes of the round being checked
	roundSeen := 0        // len(app.seen) when it started
	// Every human change reaches the app once, and so does every write the
	// writeback did not claim as the app's own (a computed side effect, or
	// a change that crossed a hand-over: the app gets its own values back
	// once). Nothing else may: that would be an echo.
	quiesce := func(what string, wantWrites, humanChanges int) {
		t.Helper()
		derr := app.drain(ctx, 30*time.Second)
		wantApplied := humanChanges + int(gather(t, st, "bridge_writeback_unclaimed_total"))
		app.mu.Lock()
		applied, published := app.applied, app.published
		app.mu.Unlock()
		if w, h := snWrites(), handled(); derr != nil || w != wantWrites || applied != wantApplied || h != published {
			app.mu.Lock()
			t.Logf("this round's changes: %v\napply messages of this round: %v\nwrites not claimed, conflicts, warnings:\n%s", roundLog, app.seen[roundSeen:], notable(logs))
			app.mu.Unlock()
			t.Fatalf("%s: ServiceNow writes %d (want %d), apply messages %d (want %d), app messages handled %d of %d (drained: %v)",
				what, w, wantWrites, applied, wantApplied, h, published, derr)
		}
	}

	const records = 25
	ids := make([]string, records)
	for i := range records {
		ids[i] = fmt.Sprintf("TCK-%04d", i)
		app.mu.Lock()
		app.tickets[ids[i]] = map[string]string{"title": "ticket " + ids[i], "description": "", "status": "new", "urgency": "3", "impact": "3", "priority": "5"}
		app.mu.Unlock()
		publish(ids[i])
	}
	wantWrites, wantApplied := records, 0
	quiesce("initial creates", wantWrites, wantApplied)
	sysIDs := map[string]string{}
	for _, id := range ids {
		_, sysID, ok, err := st.links.SysID(ctx, "ticket", id)
		if !ok || err != nil {
			t.Fatalf("%s not linked: %v", id, err)
		}
		sysIDs[id] = sysID
	}

	appStatus := []string{"new", "in_progress", "on_hold", "resolved"}
	changes, appChanges, humanChanges := 0, 0, 0
	for round := 0; changes < *amplifyChanges; round++ {
		// Each round touches distinct records, each on one side, then waits:
		// same-record races between the sides are TestWriteback_* territory.
		app.mu.Lock()
		roundLog, roundSeen = nil, len(app.seen)
		app.mu.Unlock()
		perm := rng.Perm(records)
		k := min(records, *amplifyChanges-changes)
		for _, i := range perm[:k] {
			id := ids[i]
			if rng.IntN(2) == 0 {
				app.mu.Lock()
				tk := app.tickets[id]
				switch rng.IntN(3) {
				case 0:
					tk["title"] = fmt.Sprintf("title %d", rng.IntN(1e6))
				case 1:
					tk["description"] = fmt.Sprintf("description %d", rng.IntN(1e6))
				default:
					cur := tk["status"]
					for tk["status"] == cur {
						tk["status"] = appStatus[rng.IntN(len(appStatus))]
					}
				}
				if rng.IntN(4) == 0 {
					tk["comment"] = fmt.Sprintf("comment %d", rng.IntN(1e6))
				}
				roundLog = append(roundLog, fmt.Sprintf("app %s %v", id, tk))
				app.mu.Unlock()
				publish(id)
				appChanges++
			} else {
				rec, _ := st.sim.Get("incident", sysIDs[id])
				var f map[string]string
				switch rng.IntN(4) {
				case 0:
					f = map[string]string{"short_description": fmt.Sprintf("sn title %d", rng.IntN(1e6))}
				case 1:
					f = map[string]string{"description": fmt.Sprintf("sn description %d", rng.IntN(1e6))}
				case 2:
					u := rec["urgency"]
					for u == rec["urgency"] {
						u = fmt.Sprint(1 + rng.IntN(3))
					}
					f = map[string]string{"urgency": u}
				default:
					s := rec["state"]
					for s == rec["state"] {
						s = fmt.Sprint(1 + rng.IntN(3))
					}
					f = map[string]string{"state": s}
				}
				if _, err := st.sim.Update("incident", sysIDs[id], f, "beth.anglin"); err != nil {
					t.Fatal(err)
				}
				roundLog = append(roundLog, fmt.Sprintf("human %s %v", id, f))
				humanChanges++
			}
			changes++
		}
		quiesce(fmt.Sprintf("round %d", round), records+appChanges, humanChanges)
	}
	// Quiet means quiet: nothing more may happen.
	time.Sleep(300 * time.Millisecond)
	quiesce("after quiescence", records+appChanges, humanChanges)

	tbl, _ := mapping.Default(nil).ForEntity("ticket")
	app.mu.Lock()
	defer app.mu.Unlock()
	for _, id := range ids {
		rec, _ := st.sim.Get("incident", sysIDs[id])
		sn, _, _ := tbl.ToSaaS(rec)
		for _, f := range []string{"title", "description", "status", "urgency", "impact", "priority"} {
			if sn[f] != app.tickets[id][f] {
				t.Errorf("%s.%s: ServiceNow %q, app %q", id, f, sn[f], app.tickets[id][f])
			}
		}
	}
	if unclaimed := int(gather(t, st, "bridge_writeback_unclaimed_total")); unclaimed*10 > appChanges {
		t.Errorf("%d of %d app writes not claimed as the app's own: the echo claim hardly worked", unclaimed, appChanges)
	}
	t.Logf("%d changes (%d app, %d human): %d ServiceNow writes, %d apply messages (%v of them for writes not claimed), %d app messages (echoes included)",
		changes, appChanges, humanChanges, snWrites()-records, app.applied, gather(t, st, "bridge_writeback_unclaimed_total"), app.published)
}

// notable picks the log lines that explain a sync failure: writes not
// claimed as echoes (and why), conflicts, warnings and errors.
func notable(logs *lockedBuffer) string {
	var out []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "not claimed") || strings.Contains(l, "conflict") || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func gather(t *testing.T, st *devStack, name string) float64 {
	t.Helper()
	mfs, err := st.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func TestDev_RapidEditsOnBothSidesConvergeAndStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &lockedBuffer{}
	st, wait, err := startDev(ctx, logs, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: t.TempDir(), debug: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("dev stack: %v", err)
		}
	}()
	app := startFakeApp(ctx, t, st)
	writes := func() int {
		return st.sim.RequestCount("PATCH", "/api/now/table/incident/{sys_id}", 200) + st.sim.RequestCount("POST", "/api/now/table/incident", 201)
	}
	snapshot := func() string {
		app.mu.Lock()
		defer app.mu.Unlock()
		return fmt.Sprint(writes(), app.applied, app.published, int(gather(t, st, "bridge_writeback_messages_total")))
	}
	// settle waits until nothing is in flight; ping-pong never gets there.
	settle := func(what string) {
		t.Helper()
		if err := app.drain(ctx, 30*time.Second); err != nil {
			t.Fatalf("%s: still moving (writes, applied, published, handled = %s): ping-pong? %v", what, snapshot(), err)
		}
	}
	ids := []string{"TCK-A", "TCK-B"}
	for _, id := range ids {
		app.mu.Lock()
		app.tickets[id] = map[string]string{"title": "start", "description": "", "status": "new", "urgency": "3", "impact": "3", "priority": "5"}
		app.mu.Unlock()
		app.publish(id)
	}
	settle("creates")
	sysIDs := map[string]string{}
	for _, id := range ids {
		_, sysIDs[id], _, _ = st.links.SysID(ctx, "ticket", id)
	}
	// TCK-A: five app edits within a second. TCK-B: app and ServiceNow edits interleaved.
	for i := range 5 {
		app.mu.Lock()
		app.tickets["TCK-A"]["title"] = fmt.Sprintf("app edit %d", i)
		app.tickets["TCK-B"]["title"] = fmt.Sprintf("app edit %d", i)
		app.tickets["TCK-B"]["status"] = []string{"in_progress", "on_hold"}[i%2]
		app.mu.Unlock()
		app.publish("TCK-A")
		app.publish("TCK-B")
		if _, err := st.sim.Update("incident", sysIDs["TCK-B"], map[string]string{"short_description": fmt.Sprintf("sn edit %d", i), "urgency": fmt.Sprint(1 + i%3)}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+40*i) * time.Millisecond)
	}
	settle("rapid edits")
	before := writes()
	time.Sleep(time.Second)
	if after := writes(); after != before {
		t.Fatalf("writes kept coming after the edits: %d then %d", before, after)
	}
	tbl, _ := mapping.Default(nil).ForEntity("ticket")
	app.mu.Lock()
	defer app.mu.Unlock()
	for _, id := range ids {
		rec, _ := st.sim.Get("incident", sysIDs[id])
		sn, _, _ := tbl.ToSaaS(rec)
		for _, f := range []string{"title", "status", "urgency", "impact", "priority"} {
			if sn[f] != app.tickets[id][f] {
				t.Errorf("%s.%s: ServiceNow %q, app %q (diverged)", id, f, sn[f], app.tickets[id][f])
			}
		}
	}
	if t.Failed() {
		t.Logf("apply messages: %v\nwrites not claimed, conflicts, warnings:\n%s", app.seen, notable(logs))
	}
	if got := app.tickets["TCK-A"]["title"]; got != "app edit 4" {
		t.Errorf("TCK-A title = %q, want the last of five app edits", got)
	}
	t.Logf("TCK-B ended as %q; %d writes to ServiceNow in all", app.tickets["TCK-B"]["title"], writes())
}
