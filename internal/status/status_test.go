package status

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/reconcile"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCollect_ShowsStreamsReconcileAndLiveProcesses(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "sn.incident.update", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, events.DLQSubject("writeback"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, events.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	fin := time.Now().UTC().Add(-time.Minute)
	if err := (reconcile.Store{KV: kv}).SavePass(ctx, reconcile.Summary{Table: "incident", Finished: fin, Gaps: 7, Scanned: 100}); err != nil {
		t.Fatal(err)
	}
	expiry := time.Now().Add(29 * time.Minute)
	rp := &Reporter{JS: js, ID: "bridge-1", Interval: 300 * time.Millisecond, Snapshot: func() Process {
		return Process{TokenExpiry: expiry, Breaker: "closed"}
	}}
	if err := rp.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := Collect(ctx, js, []string{"incident", "problem"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Streams[0].Name != events.StreamSN || rep.Streams[0].Msgs != 1 || rep.DLQTotal != 1 || rep.DLQ["writeback"] != 1 {
		t.Fatalf("streams/dlq = %+v %v", rep.Streams, rep.DLQ)
	}
	if len(rep.Reconcile) != 2 || rep.Reconcile[0].Gaps != 7 || !rep.Reconcile[1].Finished.IsZero() {
		t.Fatalf("reconcile = %+v", rep.Reconcile)
	}
	if len(rep.Processes) != 1 || rep.Processes[0].Breaker != "closed" {
		t.Fatalf("processes = %+v", rep.Processes)
	}
	var out bytes.Buffer
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SN_EVENTS", "DEAD LETTERS  1", "writeback=1", "incident", "never", "bridge-1", "closed", "in 2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status screen lacks %q:\n%s", want, out.String())
		}
	}
	// A process that stops reporting drops off after its TTL.
	deadline := time.Now().Add(10 * time.Second)
	for {
		rep, err := Collect(ctx, js, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Processes) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a silent process is still listed after its TTL")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestWriteText_SaysHowDeletesWereCheckedAndNeverOKForAHiddenTable(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	presence := &reconcile.PresenceScan{Table: "incident", Known: 500, Scanned: 495, Total: 497, Candidates: 5, Deleted: 3, Hidden: 2, Requests: 4, Result: reconcile.PresenceComplete}
	rep := Report{Time: now, Reconcile: []reconcile.Summary{
		// A full pass: the presence scan ran, sys_audit_delete is hidden.
		{Table: "incident", Finished: now.Add(-time.Minute), Deletes: 3, DeleteScan: "presence", Audit: reconcile.AuditHidden,
			Presence: presence, PresenceLast: now.Add(-2 * time.Minute), PresenceNext: now.Add(22 * time.Hour), Hidden: []string{"sys_audit_delete"}},
		// A regular pass in between: nothing could check deletes.
		{Table: "problem", Finished: now.Add(-time.Minute), DeleteScan: "hidden: sys_audit_delete is hidden from the integration user; deletes wait for the presence scan",
			Audit: reconcile.AuditHidden, PresenceLast: now.Add(-3 * time.Hour), PresenceNext: now.Add(21 * time.Hour), Hidden: []string{"sys_audit_delete"}},
		// The integration user cannot read the table at all.
		{Table: "change_request", Finished: now.Add(-time.Minute), DeleteScan: "hidden: change_request is hidden from the integration user (80 rows counted, none returned); no delete concluded",
			Audit: reconcile.AuditHidden, Hidden: []string{"change_request", "sys_audit_delete"},
			Presence: &reconcile.PresenceScan{Table: "change_request", Total: 80, Result: "hidden: change_request is hidden from the integration user (80 rows counted, none returned); no delete concluded"}},
	}}
	var out bytes.Buffer
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	lines := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 {
			lines[f[0]] = l
		}
	}
	for table, want := range map[string]string{
		"incident":       "ok",
		"problem":        "records ok; hidden: sys_audit_delete is hidden",
		"change_request": "hidden: ServiceNow counts change_request rows but returns none",
	} {
		if !strings.Contains(lines[table], want) {
			t.Errorf("%s row %q lacks %q", table, lines[table], want)
		}
		if strings.Contains(lines[table], "hidden") && strings.HasSuffix(strings.TrimSpace(lines[table]), " ok") {
			t.Errorf("%s row says ok for something hidden: %q", table, lines[table])
		}
	}
	for _, want := range []string{
		"deletes in incident: last presence scan 2m0s ago; presence scan: 3 of 500 records the bridge knows are gone from ServiceNow (3 delete events)",
		"2 hidden by a row ACL (not deleted)",
		"sys_audit_delete hidden (grant the integration user read on it to find deletes on every pass)",
		"next presence scan due 2026-11-29 10:00:00 UTC",
		"deletes in problem: last presence scan 3h0m0s ago; sys_audit_delete hidden",
		"deletes in change_request: hidden: change_request is hidden from the integration user (80 rows counted, none returned)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status screen lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "deletes not checked") {
		t.Errorf("status still prints the old sys_audit_delete wording:\n%s", text)
	}
}
