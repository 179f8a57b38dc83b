package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// traceRun is `bridge dev`'s stack for the trace tests, with what the
// tests ask of it.
type traceRun struct {
	t   *testing.T
	ctx context.Context
	st  *devStack
	env map[string]string // the tools' environment: NATS only
	sn  map[string]string // and the simulator
}

func startTraceRun(t *testing.T) *traceRun {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	st, wait, err := startDev(ctx, &lockedBuffer{}, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0",
		dataDir: t.TempDir(), tables: []string{"incident"}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("dev stack: %v", err)
		}
	})
	env := map[string]string{"BRIDGE_NATS_URL": st.ns.ClientURL(), "BRIDGE_TABLES": "incident"}
	sn := map[string]string{"BRIDGE_SN_INSTANCE_URL": st.simURL, "BRIDGE_SN_CLIENT_ID": st.clientID, "BRIDGE_SN_CLIENT_SECRET": st.clientSc}
	for k, v := range env {
		sn[k] = v
	}
	return &traceRun{t: t, ctx: ctx, st: st, env: env, sn: sn}
}

// publish sends the app's change of a ticket.
func (r *traceRun) publish(id string, version int64, updatedAt time.Time, fields map[string]string) {
	r.t.Helper()
	body, _ := json.Marshal(events.AppChange{ExternalID: id, Version: version, UpdatedAt: updatedAt.UTC(), Fields: fields})
	if _, err := r.st.js.Publish(r.ctx, events.AppSubject("ticket", events.AppUpsert), body,
		jetstream.WithMsgID(events.AppMsgID("ticket", id, version, events.AppUpsert))); err != nil {
		r.t.Fatal(err)
	}
}

// trace runs `bridge trace key --json`.
func (r *traceRun) trace(key string) (*trace.Timeline, string) {
	r.t.Helper()
	code, out, stderr := runTool(r.t, r.env, "", "trace", key, "--json")
	if code != 0 {
		return nil, stderr
	}
	var tl trace.Timeline
	if err := json.Unmarshal([]byte(out), &tl); err != nil {
		r.t.Fatalf("bridge trace %s --json is not a timeline: %v\n%s", key, err, out)
	}
	return &tl, out
}

// text runs `bridge trace key`.
func (r *traceRun) text(key string) string {
	r.t.Helper()
	code, out, stderr := runTool(r.t, r.env, "", "trace", key)
	if code != 0 {
		r.t.Fatalf("bridge trace %s: exit %d: %s", key, code, stderr)
	}
	return out
}

// waitFor runs `bridge trace key --json` until every check finds its step
// (entries are recorded asynchronously), and returns the timeline.
func (r *traceRun) waitFor(key string, checks ...stepCheck) *trace.Timeline {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		tl, out := r.trace(key)
		missing := ""
		if tl == nil {
			missing = "a timeline (" + strings.TrimSpace(out) + ")"
		} else {
			for _, c := range checks {
				if c.find(tl) < 0 {
					missing = c.what
					break
				}
			}
		}
		if missing == "" {
			return tl
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("bridge trace %s shows no %s after 30s:\n%s", key, missing, r.text(key))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func compact(m json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, m) != nil {
		return string(m)
	}
	return b.String()
}

// stepCheck finds a step by what a person reading the trace looks for.
type stepCheck struct {
	what string
	ok   func(trace.Step) bool
}

func (c stepCheck) find(tl *trace.Timeline) int {
	return slices.IndexFunc(tl.Steps, c.ok)
}

func step(stage, source, decision string, version, appVersion int64, reasonHas ...string) stepCheck {
	what := fmt.Sprintf("%s step from %s: %s v%d app v%d (reason with %q)", stage, source, decision, version, appVersion, reasonHas)
	return stepCheck{what: what, ok: func(s trace.Step) bool {
		if s.Stage != stage || s.Source != source || s.Decision != decision || s.Version != version || s.AppVersion != appVersion {
			return false
		}
		for _, h := range reasonHas {
			if !strings.Contains(s.Reason+" hint: "+s.Hint, h) {
				return false
			}
		}
		return true
	}}
}

// before fails unless a's step comes before b's.
func (r *traceRun) before(tl *trace.Timeline, a, b stepCheck) {
	r.t.Helper()
	if i, j := a.find(tl), b.find(tl); i < 0 || j < 0 || i >= j {
		r.t.Errorf("want the %s (step %d) before the %s (step %d)", a.what, i, b.what, j)
	}
}

// TestTrace_ExplainsARecordsWholeStory drives one incident through every
// kind of step with `bridge dev`'s stack (embedded JetStream, the
// simulator and its business rules, the bridge wired as serve wires it)
// and reads its story back with `bridge trace` after each: a round trip
// with its echo suppressed, a conflict decided by the policy, a version
// only reconcile found, a change ServiceNow refused, a replayed window, and
// a write not claimed as the app's echo.
// The record is found by its number, its sys_id and the app's id.
func TestTrace_ExplainsARecordsWholeStory(t *testing.T) {
	r := startTraceRun(t)
	const id = "TCK-TRACE-1"

	// A round trip: the app creates the ticket (written: POST), the
	// insert's webhook is the bridge's own write (echo suppressed); a
	// person's edit in ServiceNow comes back (stored, applied).
	r.publish(id, 1, time.Now(), map[string]string{"title": "Printer on fire", "status": "new", "urgency": "3", "impact": "3"})
	created := step(trace.StageWriteback, trace.SourceApp, trace.Written, 0, 1, "created (POST")
	echo := step(trace.StageIngest, trace.SourceWebhook, trace.EchoSuppressed, 0, 0, "wrote this version itself")
	tl := r.waitFor(id, created, echo, step(trace.StageIngest, trace.SourceApp, trace.Stored, trace.NoVersion, 1))
	sysID, number := tl.SysID, tl.Number
	if tl.Table != "incident" || !events.ValidSysID(sysID) || !strings.HasPrefix(number, "INC") {
		t.Fatalf("trace of %s names %s/%s %q; want the incident created for it", id, tl.Table, sysID, number)
	}
	if _, err := r.st.sim.Update("incident", sysID, map[string]string{"short_description": "Printer still on fire"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	stored := step(trace.StageIngest, trace.SourceWebhook, trace.Stored, 1, 0)
	applied := step(trace.StageApply, trace.SourceWebhook, trace.Applied, 1, 0)
	tl = r.waitFor(number, stored, applied)
	r.before(tl, created, stored)
	r.before(tl, echo, stored)
	r.before(tl, stored, applied)
	ap := tl.Steps[applied.find(tl)]
	if ap.Stream != events.StreamApply || !strings.Contains(string(ap.Message), "Printer still on fire") {
		t.Errorf("applied step names %s #%d with %s; want the BRIDGE_APPLY message the app received", ap.Stream, ap.Seq, ap.Message)
	}
	if st := tl.Steps[stored.find(tl)]; st.Stream != events.StreamSN || !strings.Contains(compact(st.Message), `"sys_mod_count":"1"`) {
		t.Errorf("stored step names %s #%d with %s; want the SN_EVENTS event", st.Stream, st.Seq, st.Message)
	}
	// The same story whatever the key.
	for _, key := range []string{sysID, id} {
		other, _ := r.trace(key)
		if other == nil || other.SysID != sysID || other.Number != number || len(other.Steps) != len(tl.Steps) {
			t.Errorf("bridge trace %s differs from bridge trace %s: %+v", key, number, other)
		}
	}
	text := r.text(number)
	for _, want := range []string{
		"record        incident/" + sysID + "  " + number,
		"bridge_state  v1  updated ",
		"bridge_links  ticket " + id + " <-> incident/" + sysID,
		"echo_suppressed  the writeback wrote this version itself",
		"applied          [BRIDGE_APPLY #",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("bridge trace %s lacks %q:\n%s", number, want, text)
		}
	}

	// A conflict: ServiceNow's urgency changes without a webhook (no
	// business rule runs), the app's older change sets another; newest
	// wins: ServiceNow's, nothing is written.
	if _, err := r.st.sim.UpdateNoWorkflow("incident", sysID, map[string]string{"urgency": "1"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	r.publish(id, 2, time.Now().Add(-time.Hour), map[string]string{"title": "Printer still on fire", "status": "new", "urgency": "2", "impact": "3"})
	conflict := step(trace.StageWriteback, trace.SourceApp, trace.Conflict, 2, 2,
		`urgency: ServiceNow "1", app "2" (base "3") -> newest_wins, servicenow wins`, "nothing differed from ServiceNow")
	r.waitFor(number, conflict)

	// A gap: that version never reached SN_EVENTS; reconcile finds and
	// stores it, the apply pipeline applies it.
	if code, out, stderr := runTool(t, r.sn, "", "reconcile", "--once"); code != 0 {
		t.Fatalf("bridge reconcile --once: exit %d\n%s\n%s", code, out, stderr)
	}
	gap := step(trace.StageReconcile, trace.SourceReconcile, trace.GapFound, 2, 0, "its webhook never arrived")
	fromReconcile := step(trace.StageApply, trace.SourceReconcile, trace.Applied, 2, 0)
	tl = r.waitFor(number, gap, fromReconcile)
	r.before(tl, gap, fromReconcile)
	g, a := tl.Steps[gap.find(tl)], tl.Steps[fromReconcile.find(tl)]
	if g.Stream != events.StreamSN || g.Seq == 0 || !slices.Contains(a.Refs, trace.Ref{Stream: events.StreamSN, Seq: g.Seq}) {
		t.Errorf("gap step names %s #%d, the apply step %v; want both the SN_EVENTS message reconcile stored", g.Stream, g.Seq, a.Refs)
	}
	if slices.ContainsFunc(tl.Steps, func(s trace.Step) bool { return s.Decision == trace.Stored && s.Stream == g.Stream && s.Seq == g.Seq }) {
		t.Errorf("a stored step repeats reconcile's own gap_found for SN_EVENTS #%d", g.Seq)
	}

	// Refused by ServiceNow: writes are denied (ACL); the app's change is
	// dead-lettered with ServiceNow's message and the hint.
	r.st.sim.SetACL(snsim.ACL{DenyWrites: true})
	r.publish(id, 3, time.Now(), map[string]string{"title": "Printer replaced", "status": "new", "urgency": "1", "impact": "3"})
	refused := step(trace.StageDLQ, trace.SourceApp, trace.Rejected, trace.NoVersion, 3, "writeback: ", "403", "ACL Exception Update Failed", "hint: ")
	tl = r.waitFor(number, refused)
	r.st.sim.SetACL(snsim.ACL{})
	dl := tl.Steps[refused.find(tl)]
	if dl.Stream != events.StreamDLQ || dl.Hint == "" || !strings.Contains(string(dl.Message), "Printer replaced") {
		t.Errorf("dead letter step = %+v; want the BRIDGE_DLQ message (the app's change) and ServiceNow's hint", dl)
	}

	// A replayed window: without --force the version guard skips both
	// events; with it the app side drops them as duplicates.
	if code, out, stderr := runTool(t, r.env, "", "replay", "--stream", "sn", "--sys-id", sysID, "--since", "1h"); code != 0 || !strings.Contains(out, "0 applied, 2 skipped") {
		t.Fatalf("bridge replay: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, out, stderr := runTool(t, r.env, "", "replay", "--stream", "sn", "--sys-id", sysID, "--since", "1h", "--force", "--yes"); code != 0 {
		t.Fatalf("bridge replay --force: exit %d\n%s\n%s", code, out, stderr)
	}
	tl = r.waitFor(number,
		step(trace.StageApply, trace.SourceReplay, trace.Stale, 1, 0, "skipped by the version guard: version 2 already applied"),
		step(trace.StageApply, trace.SourceReplay, trace.Stale, 2, 0, "skipped by the version guard"),
		step(trace.StageApply, trace.SourceReplay, trace.Duplicate, 1, 0, "BRIDGE_APPLY already held", "forced past the version guard"),
		step(trace.StageApply, trace.SourceReplay, trace.Duplicate, 2, 0, "BRIDGE_APPLY already held"),
	)
	// A write not claimed as the app's echo: ServiceNow computes the
	// priority from the urgency the app sent (or the app was handed a
	// version just before): the write's webhook goes on to the app.
	r.publish(id, 4, time.Now(), map[string]string{"title": "Printer replaced", "status": "new", "urgency": "3", "impact": "3"})
	written := step(trace.StageWriteback, trace.SourceApp, trace.Written, 3, 4, "updated (PATCH short_description, urgency)")
	unclaimed := step(trace.StageWriteback, trace.SourceApp, trace.Unclaimed, 3, 4, "its webhook goes to the app")
	delivered := step(trace.StageApply, trace.SourceWebhook, trace.Applied, 3, 0)
	tl = r.waitFor(number, written, unclaimed, delivered)
	if u := tl.Steps[unclaimed.find(tl)]; !strings.HasPrefix(u.Reason, "side_effects: ") && !strings.HasPrefix(u.Reason, "handed_over_just_before: ") {
		t.Errorf("unclaimed step says %q; want side_effects (priority computed) or handed_over_just_before", u.Reason)
	}

	text = r.text(number)
	for _, want := range []string{"conflict", "gap_found", "rejected", "replay", "[BRIDGE_DLQ #", "unclaimed"} {
		if !strings.Contains(text, want) {
			t.Errorf("bridge trace %s lacks %q:\n%s", number, want, text)
		}
	}
	t.Logf("bridge trace %s:\n%s", number, text)
}

func TestTrace_UnknownKeyAndMissingArgument(t *testing.T) {
	r := startTraceRun(t)
	code, _, stderr := runTool(t, r.env, "", "trace", "INC9999999")
	if code != 1 || !strings.Contains(stderr, "INC9999999") || !strings.Contains(stderr, "not found") {
		t.Errorf("trace of an unknown number: exit %d, %q; want 1 naming it", code, stderr)
	}
	if code, _, stderr := runTool(t, r.env, "", "trace"); code != 2 {
		t.Errorf("trace without a key: exit %d, %q; want 2", code, stderr)
	}
}
