package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/reconcile"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
	"github.com/nowbridge/nowbridge/internal/replay"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

func TestReconcileOnceAndReplay_FromTheCommandLine(t *testing.T) {
	// Every webhook is lost: only reconcile brings the changes in.
	env := recoverytest.Start(t, recoverytest.Options{DropRate: 1, Seed: 21})
	for i := range 12 {
		if _, err := env.Sim.Insert("incident", map[string]string{"short_description": fmt.Sprintf("Monitor %d flickers", i)}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	vars := map[string]string{
		"BRIDGE_NATS_URL":         env.NC.ConnectedUrl(),
		"BRIDGE_SN_INSTANCE_URL":  env.SimURL,
		"BRIDGE_SN_CLIENT_ID":     "bridge",
		"BRIDGE_SN_CLIENT_SECRET": "s3cret",
		"BRIDGE_APPLIER":          "http",
		"BRIDGE_APPLY_URL":        env.SaaS.URL,
		"BRIDGE_APPLY_SECRET":     env.Secret.Encoded(),
	}
	code, out, stderr := runTool(t, vars, "", "reconcile", "--once", "--json")
	if code != 0 {
		t.Fatalf("reconcile --once: exit %d\n%s\n%s", code, out, stderr)
	}
	var sums []reconcile.Summary
	if err := json.Unmarshal([]byte(out), &sums); err != nil || len(sums) != 1 || sums[0].Gaps != 12 || sums[0].DeleteScan != "presence" {
		t.Fatalf("reconcile --once --json = %s (%v); want 12 gaps in incident and the first presence scan (due at once)", out, err)
	}
	code, out, _ = runTool(t, vars, "", "reconcile", "--once")
	if code != 0 || !strings.Contains(out, "incident") || !strings.Contains(out, "GAPS") {
		t.Fatalf("reconcile --once (text): %d\n%s", code, out)
	}
	if code, _, stderr := runTool(t, vars, "", "reconcile", "--once", "--full", "--since", "2h"); code != 2 || !strings.Contains(stderr, "exclude") {
		t.Fatalf("--full with --since: exit %d, %q; want a usage error", code, stderr)
	}

	// Nothing applied them yet: a dry run says all 12 would be applied,
	// then the replay applies them through the HTTP applier.
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h", "--dry-run", "--json")
	var sum replay.Summary
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil || sum.Selected != 12 || sum.Apply != 12 {
		t.Fatalf("replay --dry-run: %d %s", code, out)
	}
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h")
	if code != 0 || !strings.Contains(out, "12 applied, 0 skipped") {
		t.Fatalf("replay: %d\n%s", code, out)
	}
	if diff := env.Mismatches(nil); len(diff) > 0 {
		t.Fatalf("after reconcile and replay the app differs: %v", diff)
	}
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h")
	if code != 0 || !strings.Contains(out, "0 applied, 12 skipped") {
		t.Fatalf("second replay: %d\n%s", code, out)
	}
	code, _, stderr = runTool(t, vars, "", "replay", "--since", "1h", "--force")
	if code != 2 || !strings.Contains(stderr, "--yes") {
		t.Fatalf("replay --force without an answer: %d %q", code, stderr)
	}
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h", "--force", "--yes", "--json")
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil || sum.Applied != 12 {
		t.Fatalf("replay --force --yes: %d %s", code, out)
	}
}

// snDeletes lists the delete events in SN_EVENTS as "source msg-id" per sys_id.
func snDeletes(t *testing.T, js jetstream.JetStream) map[string][]string {
	t.Helper()
	ctx := context.Background()
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
		out[ev.SysID] = append(out[ev.SysID], ev.Source+" "+msg.Headers().Get(events.HeaderMsgID))
	}
	return out
}

// The done-criterion of issue 10's delete item: with sys_audit_delete
// hidden (the simulator's least-privilege default), `bridge reconcile
// --once --full` publishes exactly one delete event for each record deleted
// in ServiceNow whose webhook was lost, and a second full pass publishes none.
func TestReconcileFull_OneDeleteEventPerLostDeleteWithAuditHidden(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 22})
	env.RunApply()
	var ids []string
	for i := range 40 {
		rec, err := env.Sim.Insert("incident", map[string]string{"short_description": fmt.Sprintf("Badge reader %d offline", i)}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	env.Settle()
	// Deletes whose webhooks are lost: the business rule's call fails for
	// 6, a script without business rules removes 3 more. Two records the
	// bridge knows become hidden by a row ACL: not deletes.
	if err := env.Sim.SetWebhookOptions(snsim.WebhookOptions{DropRate: 1}); err != nil {
		t.Fatal(err)
	}
	lost := map[string]bool{}
	for i, id := range ids[:9] {
		del := env.Sim.Delete
		if i >= 6 {
			del = env.Sim.DeleteNoWorkflow
		}
		if err := del("incident", id, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
		lost[id] = true
	}
	hidden := map[string]bool{ids[20]: true, ids[21]: true}
	env.Sim.SetACL(snsim.ACL{HideRow: func(_ string, rec snsim.Record) bool { return hidden[rec["sys_id"]] }})
	env.Settle()
	if got := snDeletes(t, env.JS); len(got) != 0 {
		t.Fatalf("delete events before reconcile: %v; the test needs every delete webhook lost", got)
	}

	vars := map[string]string{
		"BRIDGE_NATS_URL":         env.NC.ConnectedUrl(),
		"BRIDGE_SN_INSTANCE_URL":  env.SimURL,
		"BRIDGE_SN_CLIENT_ID":     "bridge",
		"BRIDGE_SN_CLIENT_SECRET": "s3cret",
	}
	code, out, stderr := runTool(t, vars, "", "reconcile", "--once", "--full", "--json")
	if code != 0 {
		t.Fatalf("reconcile --once --full: exit %d\n%s\n%s", code, out, stderr)
	}
	var sums []reconcile.Summary
	if err := json.Unmarshal([]byte(out), &sums); err != nil || len(sums) != 1 {
		t.Fatalf("reconcile --once --full --json = %s (%v)", out, err)
	}
	s := sums[0]
	if s.Deletes != len(lost) || s.DeleteScan != "presence" || s.Audit != reconcile.AuditHidden || s.Presence == nil || s.Presence.Hidden != len(hidden) {
		t.Fatalf("summary %+v presence %+v; want %d deletes by presence, sys_audit_delete hidden, %d records recognised as hidden", s, s.Presence, len(lost), len(hidden))
	}
	published := snDeletes(t, env.JS)
	for id := range lost {
		ver, _, _, err := env.Store.LastVersion(context.Background(), "incident", id)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("reconcile incident:%s:%d:delete", id, ver)
		if len(published[id]) != 1 || published[id][0] != want {
			t.Errorf("record %s deleted with its webhook lost: delete events %v, want exactly [%s]", id, published[id], want)
		}
	}
	if len(published) != len(lost) {
		t.Errorf("delete events for %d records, want %d (only the deleted ones): %v", len(published), len(lost), published)
	}

	// The text summary says what the presence scan found.
	env.Settle()
	code, out, _ = runTool(t, vars, "", "reconcile", "--once", "--full")
	if code != 0 || !strings.Contains(out, "deletes in incident: presence scan: 0 of 40 records") || !strings.Contains(out, "2 hidden by a row ACL") || !strings.Contains(out, "sys_audit_delete hidden") {
		t.Fatalf("second reconcile --once --full (text): exit %d\n%s", code, out)
	}
	if again := snDeletes(t, env.JS); len(again) != len(published) {
		t.Fatalf("the second full pass published delete events: %d records with deletes, was %d", len(again), len(published))
	}
	for id := range lost {
		if got, _ := env.SaaS.Last(id); got.Action != events.ActionDelete {
			t.Errorf("the app still has %s (last %s of version %d)", id, got.Action, got.Version)
		}
	}
}
