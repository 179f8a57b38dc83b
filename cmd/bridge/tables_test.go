package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/reconcile"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
	"github.com/nowbridge/nowbridge/internal/replay"
	"github.com/nowbridge/nowbridge/internal/status"
)

// The operator tools work per table with two tables synced: reconcile
// passes each table, replay selects one table (or entity), status shows
// each table's last pass, and dlq lists and retries one table's dead
// letters of both pipelines.
func TestTools_WorkPerTableWithTwoTablesSynced(t *testing.T) {
	// Every webhook is lost: only reconcile brings the changes in.
	env := recoverytest.Start(t, recoverytest.Options{DropRate: 1, Seed: 23})
	ids := map[string][]string{}
	for table, n := range map[string]int{"incident": 3, "change_request": 2} {
		for i := range n {
			rec, err := env.Sim.Insert(table, map[string]string{"short_description": fmt.Sprintf("%s %d", table, i)}, "beth.anglin")
			if err != nil {
				t.Fatal(err)
			}
			ids[table] = append(ids[table], rec["sys_id"])
		}
	}
	vars := map[string]string{
		"BRIDGE_NATS_URL":         env.NC.ConnectedUrl(),
		"BRIDGE_TABLES":           "incident,change_request",
		"BRIDGE_SN_INSTANCE_URL":  env.SimURL,
		"BRIDGE_SN_CLIENT_ID":     "bridge",
		"BRIDGE_SN_CLIENT_SECRET": "s3cret",
		"BRIDGE_APPLIER":          "http",
		"BRIDGE_APPLY_URL":        env.SaaS.URL,
		"BRIDGE_APPLY_SECRET":     env.Secret.Encoded(),
	}

	// reconcile: one pass per table, each finding its own gaps.
	code, out, stderr := runTool(t, vars, "", "reconcile", "--once", "--json")
	var sums []reconcile.Summary
	if err := json.Unmarshal([]byte(out), &sums); code != 0 || err != nil {
		t.Fatalf("reconcile --once --json: exit %d, %s (%v)\n%s", code, out, err, stderr)
	}
	gaps := map[string]int{}
	for _, s := range sums {
		gaps[s.Table] = s.Gaps
	}
	if len(sums) != 2 || gaps["incident"] != 3 || gaps["change_request"] != 2 {
		t.Fatalf("reconcile gaps per table = %v over %d passes; want incident 3, change_request 2", gaps, len(sums))
	}

	// replay --stream sn --table: only that table's versions reach the app.
	replaySN := func(table string, want int) {
		t.Helper()
		code, out, stderr := runTool(t, vars, "", "replay", "--table", table, "--since", "1h", "--json")
		var sum replay.Summary
		if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil || sum.Selected != want || sum.Applied != want {
			t.Fatalf("replay --table %s: exit %d, %s\n%s; want %d selected and applied", table, code, out, stderr, want)
		}
	}
	replaySN("change_request", 2)
	for _, id := range ids["incident"] {
		if _, ok := env.SaaS.Last(id); ok {
			t.Fatalf("replay --table change_request sent incident %s to the app", id)
		}
	}
	for _, id := range ids["change_request"] {
		if got, ok := env.SaaS.Last(id); !ok || got.Action != events.ActionInsert {
			t.Fatalf("change_request %s: the app has %+v (%v), want its insert", id, got, ok)
		}
	}
	replaySN("incident", 3)
	if diff := env.Mismatches(nil); len(diff) > 0 {
		t.Fatalf("after the per-table replays the app differs: %v", diff)
	}

	// replay --stream app --entity: only that entity's app changes.
	for _, m := range []struct{ entity, id string }{{"ticket", "TCK-R"}, {"change", "CR-R"}} {
		body, _ := json.Marshal(events.AppChange{ExternalID: m.id, Version: 1, UpdatedAt: time.Now().UTC(), Fields: map[string]string{"title": "x"}})
		if _, err := env.JS.Publish(t.Context(), events.AppSubject(m.entity, events.AppUpsert), body); err != nil {
			t.Fatal(err)
		}
	}
	code, out, stderr = runTool(t, vars, "", "replay", "--stream", "app", "--entity", "change", "--dry-run", "--json")
	var sum replay.Summary
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil || sum.Selected != 1 || len(sum.Items) != 1 || !strings.HasPrefix(sum.Items[0].Record, "change/CR-R") {
		t.Fatalf("replay --stream app --entity change --dry-run: exit %d, %s\n%s; want CR-R alone", code, out, stderr)
	}

	// status: the last pass of each table.
	code, out, stderr = runTool(t, vars, "", "status", "--json")
	var rep status.Report
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, %s (%v)\n%s", code, out, err, stderr)
	}
	passes := map[string]bool{}
	for _, s := range rep.Reconcile {
		passes[s.Table] = true
	}
	if !passes["incident"] || !passes["change_request"] {
		t.Fatalf("status shows reconcile passes of %v; want incident and change_request", passes)
	}

	// dlq --table: one table's dead letters of both pipelines.
	deadLetter(t, env.JS, "apply", events.SNSubject("incident", events.ActionUpdate), events.StreamSN, fmt.Sprintf(`{"table":"incident","sys_id":%q,"sys_mod_count":1}`, ids["incident"][0]))
	deadLetter(t, env.JS, "apply", events.SNSubject("change_request", events.ActionUpdate), events.StreamSN, fmt.Sprintf(`{"table":"change_request","sys_id":%q,"sys_mod_count":1}`, ids["change_request"][0]))
	deadLetter(t, env.JS, "writeback", events.AppSubject("ticket", events.AppUpsert), events.StreamApp, `{"external_id":"TCK-D","version":2}`)
	deadLetter(t, env.JS, "writeback", events.AppSubject("change", events.AppUpsert), events.StreamApp, `{"external_id":"CR-D","version":2}`)
	code, out, stderr = runTool(t, vars, "", "dlq", "ls", "--table", "change_request", "--json")
	var entries []dlq.Entry
	if err := json.Unmarshal([]byte(out), &entries); code != 0 || err != nil {
		t.Fatalf("dlq ls --table change_request: exit %d, %s\n%s", code, out, stderr)
	}
	var origins []string
	for _, e := range entries {
		origins = append(origins, e.Origin)
	}
	if strings.Join(origins, " ") != "sn.change_request.update app.change.upsert" {
		t.Fatalf("dlq ls --table change_request lists %v; want the apply and the writeback dead letter of change_request", origins)
	}
	code, out, stderr = runTool(t, vars, "", "dlq", "retry", "--all", "--table", "change_request")
	if code != 0 || !strings.Contains(out, "2 dead letters retried") {
		t.Fatalf("dlq retry --all --table change_request: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, _ = runTool(t, vars, "", "dlq", "ls")
	if code != 0 || !strings.Contains(out, "2 dead letters") || strings.Contains(out, "change") {
		t.Fatalf("dlq ls after retrying change_request's: exit %d\n%s\nwant the two incident dead letters left", code, out)
	}
	if code, _, stderr := runTool(t, vars, "", "dlq", "retry", "1", "--table", "incident"); code != 2 || !strings.Contains(stderr, "--all") {
		t.Fatalf("dlq retry SEQ --table: exit %d, %q; want a usage error", code, stderr)
	}
	if code, _, stderr := runTool(t, vars, "", "dlq", "ls", "--table", "u_custom"); code != 2 || !strings.Contains(stderr, "u_custom") {
		t.Fatalf("dlq ls --table u_custom: exit %d, %q; want a usage error naming the table without a mapping", code, stderr)
	}
}

// deadLetter stores a dead letter of pipeline as the consumers leave it.
func deadLetter(t *testing.T, js jetstream.JetStream, pipeline, origin, stream, body string) {
	t.Helper()
	m := nats.NewMsg(events.DLQSubject(pipeline))
	m.Data = []byte(body)
	m.Header.Set(events.HeaderDLQSubject, origin)
	m.Header.Set(events.HeaderDLQStream, stream)
	m.Header.Set(events.HeaderDLQReason, "refused")
	if _, err := js.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
}
