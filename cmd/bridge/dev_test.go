package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
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
// way a newcomer does: the whole binary in-process, nothing installed. It
// syncs incident and change_request at once, both ways.
func TestDev_DemoRunsBothDirectionsAndExitsZero(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"dev", "--demo", "--data-dir", t.TempDir()}, func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("bridge dev --demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{
		"incident,change_request", "nats --server", "sub 'bridge.apply.>'", "/oauth_token.do",
		"pub app.ticket.upsert", "pub app.change.upsert", "/api/now/table/incident/", "/api/now/table/change_request/",
		"<- bridge.apply.ticket.update", "<- bridge.apply.change.update",
		"incident INC", "change_request CHG", "correlation_id=TCK-1001", "correlation_id=CR-1001", "state=-4",
		"its webhook was an echo", "bridge.apply: quiet", "no write to ServiceNow", "Demo done: incident and change_request in sync both ways",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// The demo follows --tables: a table without a story of its own gets the
// generic one (titles), and every table is seeded.
func TestDev_DemoOfOtherTables(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"dev", "--demo", "--tables", "problem,sc_req_item", "--seed", "2", "--data-dir", t.TempDir()},
		func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("bridge dev --demo --tables problem,sc_req_item exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"<- bridge.apply.problem.update", "<- bridge.apply.request_item.update", "correlation_id=PROBLEM-1001",
		"correlation_id=REQUEST-ITEM-1001", "Demo done: problem and sc_req_item in sync both ways"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	code = run(ctx, []string{"dev", "--tables", "incident,u_custom"}, func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "u_custom") {
		t.Errorf("dev --tables with an unknown table: exit %d, stderr %q; want 2 naming it", code, errb.String())
	}
}

// amplifyChanges is the size of the amplification check. 1,000 by default,
// under -race too (about 20 s on 2 cores); -amplify.changes tunes it.
var (
	amplifyChanges = flag.Int("amplify.changes", 1000, "random changes of TestDev_NoEchoAmplification")
	amplifySeed    = flag.Uint64("amplify.seed", 7, "random seed of TestDev_NoEchoAmplification")
	// Each record changes every round, every few tens of milliseconds:
	// under the default grace (1s) nearly every app change follows a
	// hand-over of its record closely enough to go unclaimed (correct, and
	// accounted for, but then the echo claim is hardly tested).
	amplifyGrace = flag.Duration("amplify.grace", 20*time.Millisecond, "BRIDGE_WRITEBACK_HANDOVER_GRACE of TestDev_NoEchoAmplification")
)

// fakeApp is the SaaS side: it keeps records of every entity, applies what
// arrives on bridge.apply, and sometimes republishes what it was handed (an
// app that emits a change event for every write, its own integration's
// included). Records are keyed entity/external_id.
type fakeApp struct {
	mu        sync.Mutex
	records   map[string]map[string]string // entity/external_id -> SaaS fields
	versions  map[string]int64
	applied   int // bridge.apply messages received for linked records
	published int // messages sent to app.<entity>.upsert
	ctx       context.Context
	t         *testing.T
	st        *devStack

	// done is the BRIDGE_APPLY sequence of the last message the app
	// finished with, its echo published.
	done uint64
	// seen lists every apply message for a linked record, for failure reports.
	seen []string
}

func appKey(entity, id string) string { return entity + "/" + id }

// startFakeApp consumes bridge.apply like a SaaS app: it applies the
// fields of linked records and republishes every third version it is
// handed (its echo).
func startFakeApp(ctx context.Context, t *testing.T, st *devStack) *fakeApp {
	t.Helper()
	app := &fakeApp{records: map[string]map[string]string{}, versions: map[string]int64{}, ctx: ctx, t: t, st: st}
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
		key := appKey(am.Entity, am.ExternalID)
		app.mu.Lock()
		_, ok := app.records[key]
		if ok {
			app.seen = append(app.seen, fmt.Sprintf("%s v%d %v", key, am.Version, am.Fields))
			app.applied++
			for k, v := range am.Fields {
				app.records[key][k] = v
			}
		}
		app.mu.Unlock()
		if ok && am.Version%3 == 0 {
			app.publish(key) // the app's echo of what it was handed
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return app
}

// publish sends the record's current fields as its next version.
func (app *fakeApp) publish(key string) {
	entity, id, _ := strings.Cut(key, "/")
	app.mu.Lock()
	app.versions[key]++
	v, fields := app.versions[key], maps.Clone(app.records[key])
	// Journal entries are actions ("add this"), not state: sent once.
	delete(app.records[key], "comment")
	delete(app.records[key], "work_note")
	app.published++
	app.mu.Unlock()
	body, _ := json.Marshal(events.AppChange{ExternalID: id, Version: v, UpdatedAt: time.Now().UTC(), Fields: fields})
	if _, err := app.st.js.Publish(app.ctx, events.AppSubject(entity, events.AppUpsert), body, jetstream.WithMsgID(events.AppMsgID(entity, id, v, events.AppUpsert))); err != nil && app.ctx.Err() == nil {
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
		sinfo, err := s.Info(ctx)
		if err != nil {
			return false, "", err
		}
		list := s.ListConsumers(ctx)
		busy := ""
		for ci := range list.Info() {
			// Right after a publish a consumer's pending count may not
			// include it yet: one that reads the whole stream is idle only
			// once it has acked the stream's last message.
			whole := len(ci.Config.FilterSubjects) == 0 && (ci.Config.FilterSubject == "" || slices.Equal([]string{ci.Config.FilterSubject}, sinfo.Config.Subjects))
			if ci.NumPending > 0 || ci.NumAckPending > 0 || whole && ci.AckFloor.Stream < sinfo.State.LastSeq {
				busy = fmt.Sprintf("consumer %s on %s: %d pending, %d unacknowledged, acked to %d of %d", ci.Name, name, ci.NumPending, ci.NumAckPending, ci.AckFloor.Stream, sinfo.State.LastSeq)
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

// amplifyTable is how TestDev_NoEchoAmplification changes the records of
// one table on either side.
type amplifyTable struct {
	table, entity, prefix string
	initial               map[string]string // the app's first version (title added)
	compare               []string          // SaaS fields both sides must agree on at the end
	appEdit               func(rng *rand.Rand, rec map[string]string)
	personEdit            func(rng *rand.Rand, rec map[string]string) map[string]string
}

// another draws a value of options other than cur.
func another(rng *rand.Rand, cur string, options ...string) string {
	for {
		if v := options[rng.IntN(len(options))]; v != cur {
			return v
		}
	}
}

// amplifyTables are the two tables the check syncs at once: every round
// changes records of both.
var amplifyTables = []amplifyTable{
	{
		table: "incident", entity: "ticket", prefix: "TCK",
		initial: map[string]string{"description": "", "status": "new", "urgency": "3", "impact": "3", "priority": "5"},
		compare: []string{"title", "description", "status", "urgency", "impact", "priority"},
		appEdit: func(rng *rand.Rand, tk map[string]string) {
			switch rng.IntN(3) {
			case 0:
				tk["title"] = fmt.Sprintf("title %d", rng.IntN(1e6))
			case 1:
				tk["description"] = fmt.Sprintf("description %d", rng.IntN(1e6))
			default:
				tk["status"] = another(rng, tk["status"], "new", "in_progress", "on_hold", "resolved")
			}
			if rng.IntN(4) == 0 {
				tk["comment"] = fmt.Sprintf("comment %d", rng.IntN(1e6))
			}
		},
		personEdit: func(rng *rand.Rand, rec map[string]string) map[string]string {
			switch rng.IntN(4) {
			case 0:
				return map[string]string{"short_description": fmt.Sprintf("sn title %d", rng.IntN(1e6))}
			case 1:
				return map[string]string{"description": fmt.Sprintf("sn description %d", rng.IntN(1e6))}
			case 2:
				return map[string]string{"urgency": another(rng, rec["urgency"], "1", "2", "3")}
			default:
				return map[string]string{"state": another(rng, rec["state"], "1", "2", "3")}
			}
		},
	},
	{
		// A change's priority is not derived; its states are negative.
		table: "change_request", entity: "change", prefix: "CR",
		initial: map[string]string{"description": "", "status": "new", "type": "normal", "risk": "3", "impact": "3", "priority": "4"},
		compare: []string{"title", "description", "status", "type", "risk", "impact", "priority"},
		appEdit: func(rng *rand.Rand, ch map[string]string) {
			switch rng.IntN(3) {
			case 0:
				ch["title"] = fmt.Sprintf("title %d", rng.IntN(1e6))
			case 1:
				ch["description"] = fmt.Sprintf("description %d", rng.IntN(1e6))
			default:
				ch["status"] = another(rng, ch["status"], "new", "assess", "authorize", "scheduled", "implement", "review")
			}
			if rng.IntN(4) == 0 {
				ch["work_note"] = fmt.Sprintf("work note %d", rng.IntN(1e6))
			}
		},
		personEdit: func(rng *rand.Rand, rec map[string]string) map[string]string {
			switch rng.IntN(4) {
			case 0:
				return map[string]string{"short_description": fmt.Sprintf("sn title %d", rng.IntN(1e6))}
			case 1:
				return map[string]string{"description": fmt.Sprintf("sn description %d", rng.IntN(1e6))}
			case 2:
				return map[string]string{"risk": another(rng, rec["risk"], "1", "2", "3", "4")}
			default:
				return map[string]string{"state": another(rng, rec["state"], "-5", "-4", "-3", "-2", "-1", "0")}
			}
		},
	},
}

// amplifyRecord is one record of the check, the same on both sides.
type amplifyRecord struct {
	*amplifyTable
	key, sysID string
}

// TestDev_NoEchoAmplification drives 1,000 random changes, each on one
// side, over incidents and change requests at once: every app change is
// exactly one ServiceNow write, every person's change reaches the app
// once, nothing loops, and both sides end equal.
func TestDev_NoEchoAmplification(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logs := &lockedBuffer{}
	tables := []string{amplifyTables[0].table, amplifyTables[1].table}
	st, wait, err := startDev(ctx, logs, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: t.TempDir(), debug: true,
		tables: tables, grace: *amplifyGrace})
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
	snWrites := func() int {
		n := 0
		for _, tb := range tables {
			n += st.sim.RequestCount("PATCH", "/api/now/table/"+tb+"/{sys_id}", 200) + st.sim.RequestCount("POST", "/api/now/table/"+tb, 201)
		}
		return n
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

	// 13 records of each table: about as many rounds as one table of 25.
	const perTable = 13
	var recs []amplifyRecord
	for i := range amplifyTables {
		tb := &amplifyTables[i]
		for n := range perTable {
			id := fmt.Sprintf("%s-%04d", tb.prefix, n)
			key := appKey(tb.entity, id)
			app.mu.Lock()
			app.records[key] = maps.Clone(tb.initial)
			app.records[key]["title"] = tb.entity + " " + id
			app.mu.Unlock()
			app.publish(key)
			recs = append(recs, amplifyRecord{amplifyTable: tb, key: key})
		}
	}
	wantWrites := len(recs)
	quiesce("initial creates", wantWrites, 0)
	for i := range recs {
		_, id, _ := strings.Cut(recs[i].key, "/")
		table, sysID, ok, err := st.b.links.SysID(ctx, recs[i].entity, id)
		if !ok || err != nil || table != recs[i].table {
			t.Fatalf("%s not linked to a %s: %q %v", recs[i].key, recs[i].table, table, err)
		}
		recs[i].sysID = sysID
	}

	changes, appChanges, humanChanges := 0, 0, 0
	for round := 0; changes < *amplifyChanges; round++ {
		// Each round touches distinct records, each on one side, then waits:
		// same-record races between the sides are TestWriteback_* territory.
		app.mu.Lock()
		roundLog, roundSeen = nil, len(app.seen)
		app.mu.Unlock()
		k := min(len(recs), *amplifyChanges-changes)
		for _, i := range rng.Perm(len(recs))[:k] {
			r := recs[i]
			if rng.IntN(2) == 0 {
				app.mu.Lock()
				r.appEdit(rng, app.records[r.key])
				roundLog = append(roundLog, fmt.Sprintf("app %s %v", r.key, app.records[r.key]))
				app.mu.Unlock()
				app.publish(r.key)
				appChanges++
			} else {
				rec, _ := st.sim.Get(r.table, r.sysID)
				f := r.personEdit(rng, rec)
				if _, err := st.sim.Update(r.table, r.sysID, f, "beth.anglin"); err != nil {
					t.Fatal(err)
				}
				roundLog = append(roundLog, fmt.Sprintf("human %s %v", r.key, f))
				humanChanges++
			}
			changes++
		}
		quiesce(fmt.Sprintf("round %d", round), len(recs)+appChanges, humanChanges)
	}
	// Quiet means quiet: nothing more may happen.
	time.Sleep(300 * time.Millisecond)
	quiesce("after quiescence", len(recs)+appChanges, humanChanges)

	app.mu.Lock()
	defer app.mu.Unlock()
	for _, r := range recs {
		tbl, ok := st.b.mapping.ForEntity(r.entity)
		if !ok {
			t.Fatalf("no mapping of %s", r.entity)
		}
		rec, _ := st.sim.Get(r.table, r.sysID)
		sn, _, _ := tbl.ToSaaS(rec)
		for _, f := range r.compare {
			if sn[f] != app.records[r.key][f] {
				t.Errorf("%s.%s: ServiceNow %q, app %q", r.key, f, sn[f], app.records[r.key][f])
			}
		}
	}
	if unclaimed := int(gather(t, st, "bridge_writeback_unclaimed_total")); *amplifyGrace < 100*time.Millisecond && unclaimed*10 > appChanges {
		t.Errorf("%d of %d app writes not claimed as the app's own: the echo claim hardly worked", unclaimed, appChanges)
	}
	t.Logf("%d changes over %v (%d app, %d human): %d ServiceNow writes, %d apply messages (%v of them for writes not claimed), %d app messages (echoes included)",
		changes, tables, appChanges, humanChanges, snWrites()-len(recs), app.applied, gather(t, st, "bridge_writeback_unclaimed_total"), app.published)
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
	ctx, cancel := context.WithCancel(t.Context())
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
		app.records[appKey("ticket", id)] = map[string]string{"title": "start", "description": "", "status": "new", "urgency": "3", "impact": "3", "priority": "5"}
		app.mu.Unlock()
		app.publish(appKey("ticket", id))
	}
	settle("creates")
	sysIDs := map[string]string{}
	for _, id := range ids {
		_, sysIDs[id], _, _ = st.b.links.SysID(ctx, "ticket", id)
	}
	// TCK-A: five app edits within a second. TCK-B: app and ServiceNow edits interleaved.
	for i := range 5 {
		app.mu.Lock()
		app.records[appKey("ticket", "TCK-A")]["title"] = fmt.Sprintf("app edit %d", i)
		app.records[appKey("ticket", "TCK-B")]["title"] = fmt.Sprintf("app edit %d", i)
		app.records[appKey("ticket", "TCK-B")]["status"] = []string{"in_progress", "on_hold"}[i%2]
		app.mu.Unlock()
		app.publish(appKey("ticket", "TCK-A"))
		app.publish(appKey("ticket", "TCK-B"))
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
			if sn[f] != app.records[appKey("ticket", id)][f] {
				t.Errorf("%s.%s: ServiceNow %q, app %q (diverged)", id, f, sn[f], app.records[appKey("ticket", id)][f])
			}
		}
	}
	if t.Failed() {
		t.Logf("apply messages: %v\nwrites not claimed, conflicts, warnings:\n%s", app.seen, notable(logs))
	}
	if got := app.records[appKey("ticket", "TCK-A")]["title"]; got != "app edit 4" {
		t.Errorf("TCK-A title = %q, want the last of five app edits", got)
	}
	t.Logf("TCK-B ended as %q; %d writes to ServiceNow in all", app.records[appKey("ticket", "TCK-B")]["title"], writes())
}
