package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// deleteEvents reads every delete event in SN_EVENTS: sys_id → "source
// message-id" of each.
func deleteEvents(t *testing.T, js jetstream.JetStream) map[string][]string {
	t.Helper()
	ctx := t.Context()
	cons, err := js.OrderedConsumer(ctx, events.StreamSN, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SNSubject("*", events.ActionDelete)}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for range info.NumPending {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var ev events.SNEvent
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if msg.Headers().Get(events.HeaderMsgID) != ev.MsgID() {
			t.Errorf("delete event %s stored with Nats-Msg-Id %q; want the webhook's id scheme", ev.MsgID(), msg.Headers().Get(events.HeaderMsgID))
		}
		out[ev.SysID] = append(out[ev.SysID], ev.Source+" "+ev.MsgID())
	}
	return out
}

func newPresenceReconciler(t *testing.T, env *recoverytest.Env, reg prometheus.Registerer, interval time.Duration) *Reconciler {
	t.Helper()
	r, err := New(env.JS, env.Store.KV(), &SNPager{Client: env.SN}, env.Store, Config{
		Tables: []string{recoverytest.Table}, Fields: env.Mapping.Fields, PageSize: 100, Instance: "dev00000",
		// Several sys_id pages even for these small tables.
		IDPageSize:         40,
		DeleteScanInterval: interval, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// syncedIncidents inserts n incidents whose webhooks arrive, and waits
// until the app and bridge_state have them all.
func syncedIncidents(t *testing.T, env *recoverytest.Env, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		rec, err := env.Sim.Insert(recoverytest.Table, map[string]string{"short_description": fmt.Sprintf("Laptop %d will not boot", i)}, human)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	env.Settle()
	if diff := env.Mismatches(nil); len(diff) > 0 {
		t.Fatalf("the app differs before the test starts: %v", diff)
	}
	return ids
}

func TestPresence_LostDeleteWebhooksPublishedOnceWithAuditHidden(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 11})
	env.RunApply()
	ids := syncedIncidents(t, env, 250)

	// 30 deletes whose webhooks are lost, 10 by a script without business
	// rules; 5 other records become hidden by a row ACL, and 5 are
	// deleted while the webhook still works (already applied).
	if err := env.Sim.SetWebhookOptions(snsim.WebhookOptions{DropRate: 1}); err != nil {
		t.Fatal(err)
	}
	var lost []string
	for _, id := range ids[:20] {
		if err := env.Sim.Delete(recoverytest.Table, id, human); err != nil {
			t.Fatal(err)
		}
		lost = append(lost, id)
	}
	for _, id := range ids[20:30] {
		if err := env.Sim.DeleteNoWorkflow(recoverytest.Table, id, human); err != nil {
			t.Fatal(err)
		}
		lost = append(lost, id)
	}
	if err := env.Sim.SetWebhookOptions(snsim.WebhookOptions{}); err != nil {
		t.Fatal(err)
	}
	var applied []string
	for _, id := range ids[30:35] {
		if err := env.Sim.Delete(recoverytest.Table, id, human); err != nil {
			t.Fatal(err)
		}
		applied = append(applied, id)
	}
	hidden := map[string]bool{}
	for _, id := range ids[100:105] {
		hidden[id] = true
	}
	env.Sim.SetACL(snsim.ACL{HideRow: func(_ string, rec snsim.Record) bool { return hidden[rec["sys_id"]] }})
	env.Settle()
	if diff := env.Mismatches(lost); len(diff) != len(lost) {
		t.Fatalf("before reconcile the app should miss exactly the %d lost deletes; it differs in %d places", len(lost), len(diff))
	}
	before := deleteEvents(t, env.JS)

	reg := prometheus.NewRegistry()
	r := newPresenceReconciler(t, env, reg, 0)
	sum, err := r.Pass(t.Context(), recoverytest.Table, PassOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pass 1: %+v presence %+v", sum, sum.Presence)
	ps := sum.Presence
	if sum.DeleteScan != "presence" || sum.Audit != AuditHidden || ps == nil || ps.Result != PresenceComplete {
		t.Fatalf("pass 1: delete scan %q, audit %q, presence %+v; want a complete presence scan with sys_audit_delete hidden", sum.DeleteScan, sum.Audit, ps)
	}
	if sum.Deletes != len(lost) || ps.Deleted != len(lost) || ps.Hidden != len(hidden) || ps.Candidates != len(lost)+len(hidden) {
		t.Fatalf("pass 1: %d deletes published, presence %+v; want %d deletes and the %d ACL-hidden records recognised as hidden", sum.Deletes, ps, len(lost), len(hidden))
	}
	// 6 sys_id pages of 40; the 35 candidates in one batch, split in
	// halves around the 5 hidden ones rather than asked one by one.
	if ps.Requests >= 6+ps.Candidates {
		t.Errorf("presence scan sent %d requests for 6 pages and %d candidates; confirming should cost fewer than one request per candidate", ps.Requests, ps.Candidates)
	}
	if ps.Known != 250 || ps.Scanned != 250-len(lost)-len(applied)-len(hidden) || ps.Total != 250-len(lost)-len(applied) {
		t.Fatalf("presence counts %+v; want 250 known, %d returned of %d counted", ps, 250-len(lost)-len(applied)-len(hidden), 250-len(lost)-len(applied))
	}
	after := deleteEvents(t, env.JS)
	st := env.Store
	for _, id := range lost {
		rec, _, _, err := st.Get(t.Context(), recoverytest.Table, id)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{fmt.Sprintf("reconcile incident:%s:%d:delete", id, rec.Version)}
		if len(before[id]) > 0 || !slices.Equal(after[id], want) {
			t.Errorf("lost delete of %s: events %v, want exactly %v", id, after[id], want)
		}
	}
	for id := range hidden {
		if len(after[id]) > 0 {
			t.Errorf("record %s hidden by a row ACL was published as a delete: %v", id, after[id])
		}
	}
	for _, id := range applied {
		if len(after[id]) != len(before[id]) {
			t.Errorf("record %s whose delete webhook arrived got another delete event: %v", id, after[id])
		}
	}
	if got := testutil.ToFloat64(r.m.hidden.WithLabelValues(recoverytest.Table, AuditDeleteTable)); got != 1 {
		t.Errorf("bridge_reconcile_table_hidden{source=sys_audit_delete} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.m.hidden.WithLabelValues(recoverytest.Table, recoverytest.Table)); got != 0 {
		t.Errorf("bridge_reconcile_table_hidden{source=incident} = %v, want 0 (rows were returned)", got)
	}
	if got := testutil.ToFloat64(r.m.candidates.WithLabelValues(recoverytest.Table, "hidden")); got != float64(len(hidden)) {
		t.Errorf("bridge_reconcile_presence_candidates_total{outcome=hidden} = %v, want %d", got, len(hidden))
	}
	env.Settle()
	if diff := env.Mismatches(lost); len(diff) > 0 {
		t.Fatalf("after the presence scan the app still differs: %v", diff)
	}

	sum, err = r.Pass(t.Context(), recoverytest.Table, PassOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Deletes != 0 || sum.InFlight != 0 || sum.Presence == nil || sum.Presence.Deleted != 0 {
		t.Fatalf("pass 2: %+v presence %+v; want nothing published", sum, sum.Presence)
	}
	if again := deleteEvents(t, env.JS); len(again) != len(after) {
		t.Fatalf("pass 2 added delete events: %d records with deletes, was %d", len(again), len(after))
	}
	last, ok, err := (Store{KV: env.Store.KV()}).LastPresence(t.Context(), recoverytest.Table)
	if err != nil || !ok || !last.Started.Equal(sum.Presence.Started) {
		t.Fatalf("stored presence scan = %+v %v %v; want pass 2's", last, ok, err)
	}
}

func TestPresence_EntirelyHiddenTableIsReportedHiddenAndPublishesNothing(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 12})
	env.RunApply()
	ids := syncedIncidents(t, env, 40)
	if err := env.Sim.DeleteNoWorkflow(recoverytest.Table, ids[0], human); err != nil {
		t.Fatal(err)
	}
	// The integration user loses itil: incident rows are counted, not shown.
	env.Sim.SetACL(snsim.ACL{NoRoles: true})
	before := deleteEvents(t, env.JS)
	reg := prometheus.NewRegistry()
	r := newPresenceReconciler(t, env, reg, 0)
	sum, err := r.Pass(t.Context(), recoverytest.Table, PassOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sum.DeleteScan, "hidden: ") || !strings.Contains(sum.DeleteScan, "incident") || !slices.Contains(sum.Hidden, recoverytest.Table) {
		t.Fatalf("pass over a hidden table: delete scan %q, hidden %v; want it reported hidden", sum.DeleteScan, sum.Hidden)
	}
	if sum.Deletes != 0 || sum.Gaps != 0 || sum.Presence.Candidates != 0 {
		t.Fatalf("pass over a hidden table published %d deletes, %d gaps (presence %+v); want nothing", sum.Deletes, sum.Gaps, sum.Presence)
	}
	if got := deleteEvents(t, env.JS); len(got) != len(before) {
		t.Fatalf("delete events were published for a hidden table: %v", got)
	}
	if got := testutil.ToFloat64(r.m.hidden.WithLabelValues(recoverytest.Table, recoverytest.Table)); got != 1 {
		t.Fatalf("bridge_reconcile_table_hidden{table=incident,source=incident} = %v, want 1", got)
	}
	last, _, _ := (Store{KV: env.Store.KV()}).LastPass(t.Context(), recoverytest.Table)
	if last.DeleteScan != sum.DeleteScan || last.DeleteScan == "ok" {
		t.Fatalf("stored summary says %q", last.DeleteScan)
	}

	// itil back: the next scan finds the delete.
	env.Sim.SetACL(snsim.ACL{})
	sum, err = r.Pass(t.Context(), recoverytest.Table, PassOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.DeleteScan != "presence" || sum.Deletes != 1 || len(sum.Hidden) != 1 || sum.Hidden[0] != AuditDeleteTable {
		t.Fatalf("pass with itil restored: %+v; want the one delete found, only sys_audit_delete hidden", sum)
	}
	if got := testutil.ToFloat64(r.m.hidden.WithLabelValues(recoverytest.Table, recoverytest.Table)); got != 0 {
		t.Fatalf("bridge_reconcile_table_hidden{source=incident} = %v after rows came back, want 0", got)
	}
}

func TestPresence_AuditGrantedFindsDeletesOnEveryPass(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 13})
	env.RunApply()
	ids := syncedIncidents(t, env, 30)
	env.Sim.SetGrants(snsim.Grants{AuditDelete: true})
	if err := env.Sim.SetWebhookOptions(snsim.WebhookOptions{DropRate: 1}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[:4] {
		if err := env.Sim.Delete(recoverytest.Table, id, human); err != nil {
			t.Fatal(err)
		}
	}
	// No presence scan on schedule: only the fast path can find them.
	r := newPresenceReconciler(t, env, nil, 0)
	sum, err := r.Pass(t.Context(), recoverytest.Table, PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Audit != AuditReadable || sum.DeleteScan != "audit" || sum.Presence != nil || sum.Deletes != 4 || len(sum.Hidden) != 0 {
		t.Fatalf("regular pass with sys_audit_delete granted: %+v; want 4 deletes from the audit, no presence scan", sum)
	}
	// A full pass runs both; what the audit published is not published
	// again by the presence scan, and applied deletes are left alone.
	env.Settle()
	if err := env.Sim.Delete(recoverytest.Table, ids[4], human); err != nil {
		t.Fatal(err)
	}
	sum, err = r.Pass(t.Context(), recoverytest.Table, PassOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.DeleteScan != "presence" || sum.Audit != AuditReadable || sum.Deletes != 1 || sum.InFlight != 0 || sum.Presence.Candidates != 0 {
		t.Fatalf("full pass: %+v presence %+v; want the new delete once (from the audit) and no presence candidates left", sum, sum.Presence)
	}
	got := deleteEvents(t, env.JS)
	for _, id := range ids[:5] {
		if len(got[id]) != 1 {
			t.Errorf("record %s: delete events %v, want exactly one", id, got[id])
		}
	}
}

// hookPager runs hook before the first page of each ByID scan.
type hookPager struct {
	Pager
	hook func()
}

func (h *hookPager) Scan(ctx context.Context, q Query, fn func([]events.Fields, int) error) error {
	first := true
	return h.Pager.Scan(ctx, q, func(rows []events.Fields, total int) error {
		if first && q.ByID && len(q.IDs) == 0 && h.hook != nil {
			h.hook()
		}
		first = false
		return fn(rows, total)
	})
}

func TestPresence_ScheduleSharedThroughBridgeState(t *testing.T) {
	js, kv := setup(t)
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	sn := &memTable{}
	vers := &memVersions{}
	for i := range 20 {
		sn.put("incident", events.Fields{"sys_id": sysID(i), "sys_mod_count": "3", "sys_updated_on": now.Add(-time.Hour).Format(events.SNTimeLayout)})
		vers.set("incident", sysID(i), 3)
	}
	// A record created while the scan runs (its sys_id behind the cursor)
	// is known to bridge_state by the time the scan ends: it is not in the
	// snapshot, so it cannot look deleted.
	late := sysID(1000)
	hp := &hookPager{Pager: sn, hook: func() {
		sn.put("incident", events.Fields{"sys_id": late, "sys_mod_count": "0", "sys_updated_on": now.Format(events.SNTimeLayout)})
		vers.set("incident", late, 0)
	}}
	newRec := func(holder string) *Reconciler {
		r, err := New(js, kv, hp, vers, Config{Tables: []string{"incident"}, PageSize: 7, Now: clock, Holder: holder, DeleteScanInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := newRec("replica-a"), newRec("replica-b")
	sum, err := a.Pass(t.Context(), "incident", PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Presence == nil || sum.Presence.Known != 20 || sum.Deletes != 0 || !sum.PresenceNext.Equal(now.Add(time.Hour)) {
		t.Fatalf("first pass: %+v presence %+v; want a presence scan of 20 known ids, nothing deleted, the next due in 1h", sum, sum.Presence)
	}
	hp.hook = nil

	// Another replica 10 minutes later: not due.
	now = now.Add(10 * time.Minute)
	sn.remove("incident", sysID(3))
	sum, err = b.Pass(t.Context(), "incident", PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Presence != nil || sum.Deletes != 0 || sum.DeleteScan != "audit" || !sum.PresenceLast.Equal(now.Add(-10*time.Minute)) {
		t.Fatalf("pass 10 minutes later: %+v; want no presence scan (the delete waits for it) and the first scan's time shared", sum)
	}
	// An hour after the first scan, whichever replica passes runs it.
	now = now.Add(50 * time.Minute)
	sum, err = b.Pass(t.Context(), "incident", PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Presence == nil || sum.Deletes != 1 || sum.DeleteScan != "presence" || sum.Presence.Known != 21 || sum.Presence.Finished.IsZero() {
		t.Fatalf("pass an hour later: %+v presence %+v; want the scan and the one delete", sum, sum.Presence)
	}
}

func TestDeleteVerdictAndSchedule(t *testing.T) {
	done := &PresenceScan{Result: PresenceComplete}
	hidden := &PresenceScan{Result: "hidden: incident is hidden from the integration user (5 rows counted, none returned); no delete concluded"}
	for _, tc := range []struct {
		audit string
		ps    *PresenceScan
		want  string
	}{
		{AuditHidden, done, "presence"},
		{AuditReadable, done, "presence"},
		{AuditReadable, nil, "audit"},
		{AuditEmpty, nil, "audit"},
		{AuditHidden, hidden, hidden.Result},
		{AuditReadable, hidden, hidden.Result},
		{AuditHidden, nil, "hidden: sys_audit_delete is hidden"},
		{"unreadable: 403 Forbidden", nil, "hidden: sys_audit_delete unreadable (unreadable: 403 Forbidden)"},
	} {
		if got := deleteVerdict(tc.audit, tc.ps); !strings.HasPrefix(got, tc.want) || got == "ok" {
			t.Errorf("deleteVerdict(%q, %+v) = %q, want %q…", tc.audit, tc.ps, got, tc.want)
		}
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		interval time.Duration
		have     bool
		now      time.Time
		want     bool
	}{
		{24 * time.Hour, false, t0, true},
		{24 * time.Hour, true, t0.Add(23 * time.Hour), false},
		{24 * time.Hour, true, t0.Add(24 * time.Hour), true},
		{0, false, t0, false},
		{0, true, t0.Add(1000 * time.Hour), false},
	} {
		if got := presenceDue(tc.interval, t0, tc.have, tc.now); got != tc.want {
			t.Errorf("presenceDue(%v, last %v, have %v, now %v) = %v, want %v", tc.interval, t0, tc.have, tc.now, got, tc.want)
		}
	}
}
