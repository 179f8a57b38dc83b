package outbound_test

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

func TestWriteback_LinkedUpsertPatchesOnlyDifferingFieldsAndItsWebhookIsAnEcho(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-1", nil)
	id := rec["sys_id"]
	echo0, other0 := h.hooks.counts(id)
	h.sim.ResetStats()

	v := h.publish(events.AppUpsert, "TCK-1", map[string]string{
		"title": "Email down", "description": "Outlook cannot connect", // unchanged
		"status": "in_progress", "urgency": "2", "comment": "Looking into it",
	}, time.Time{})
	h.waitWritten("TCK-1", v)
	h.waitHooks()

	if n := h.count("PATCH", pathOne, 200); n != 1 {
		t.Fatalf("PATCH requests = %d, want exactly 1", n)
	}
	if n := h.count("POST", pathList, 0); n != 0 {
		t.Errorf("POST requests = %d, want 0 for a linked record", n)
	}
	got := h.record(id)
	if got["state"] != "2" || got["sys_mod_count"] != "1" {
		t.Errorf("record after writeback: state %q, sys_mod_count %q; want state 2 at version 1", got["state"], got["sys_mod_count"])
	}
	if j := h.sim.Journal(id, "comments"); len(j) != 1 || j[0].Value != "Looking into it" {
		t.Errorf("comments journal = %+v, want the one appended entry", j)
	}
	echo, other := h.hooks.counts(id)
	if echo-echo0 != 1 || other-other0 != 0 {
		t.Fatalf("webhooks for the write: %d echoes and %d others, want 1 echo and nothing to sync", echo-echo0, other-other0)
	}
	// Only the differing fields were sent: the webhook lists what changed.
	h.hooks.mu.Lock()
	last := h.hooks.echo[len(h.hooks.echo)-1]
	h.hooks.mu.Unlock()
	if strings.Join(last.Changed, ",") != "comments,state" {
		t.Errorf("fields changed by the PATCH = %v, want only comments and state", last.Changed)
	}
	st, _, _, _ := h.store.Get(h.ctx, "incident", id)
	if st.Version != 1 || st.Fields["state"] != "2" {
		t.Errorf("bridge_state after the write = v%d state %q, want v1 state 2 (so reconcile does not resurrect the echo)", st.Version, st.Fields["state"])
	}
	if !h.cache.Wrote("incident", id, 1) {
		t.Error("the written version is not in the echo cache for reconcile")
	}
}

func TestWriteback_AppRepublishingWhatItWasSentWritesNothing(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-2", nil)
	// What the apply pipeline handed the app for this version.
	tbl, _ := h.maps.ForEntity("ticket")
	applied, _, _ := tbl.ToSaaS(rec)
	h.cache.RecordApplied("ticket", "TCK-2", applied)
	h.sim.ResetStats()

	v := h.publish(events.AppUpsert, "TCK-2", applied, time.Time{})
	h.waitWritten("TCK-2", v)
	// A partial republish of the same values: no echo hash match, but no diff.
	v = h.publish(events.AppUpsert, "TCK-2", map[string]string{"title": applied["title"], "status": applied["status"]}, time.Time{})
	h.waitWritten("TCK-2", v)

	if n := h.count("PATCH", "", 0) + h.count("POST", pathList, 0); n != 0 {
		t.Fatalf("%d writes to ServiceNow for an app echo, want none", n)
	}
	if n := metric(t, h, "bridge_writeback_messages_total", "outcome", "echo"); n != 1 {
		t.Errorf("echo outcomes = %v, want 1", n)
	}
}

func TestWriteback_UnlinkedTicketCreatesOneRecordWithCorrelationID(t *testing.T) {
	h := newHarness(t, opts{})
	v := h.publish(events.AppUpsert, "TCK-NEW", map[string]string{"title": "Printer on fire", "status": "new", "impact": "1", "urgency": "1", "comment": "Smoke seen"}, time.Time{})
	h.waitWritten("TCK-NEW", v)
	h.waitHooks()
	if n := h.count("POST", pathList, 201); n != 1 {
		t.Fatalf("POST requests = %d, want exactly 1", n)
	}
	table, id, ok, err := h.links.SysID(h.ctx, "ticket", "TCK-NEW")
	if err != nil || !ok || table != "incident" {
		t.Fatalf("link not stored: %v %v %v", table, ok, err)
	}
	rec := h.record(id)
	if rec["correlation_id"] != "TCK-NEW" || rec["short_description"] != "Printer on fire" || rec["priority"] != "1" {
		t.Errorf("created record = %v", rec)
	}
	if echo, other := h.hooks.counts(id); echo != 1 || other != 0 {
		t.Errorf("insert webhook: %d echoes, %d others; want it suppressed as an echo", echo, other)
	}
	// A later change is a PATCH; with the link bucket lost, the
	// correlation_id lookup still finds the record: no duplicate.
	if err := h.links.Unlink(h.ctx, "ticket", "TCK-NEW"); err != nil {
		t.Fatal(err)
	}
	v = h.publish(events.AppUpsert, "TCK-NEW", map[string]string{"title": "Printer on fire", "status": "in_progress"}, time.Time{})
	h.waitWritten("TCK-NEW", v)
	if n := h.count("POST", pathList, 0); n != 1 {
		t.Errorf("POST requests = %d after the link was lost, want still 1 (no duplicate)", n)
	}
	if got := h.record(id)["state"]; got != "2" {
		t.Errorf("state = %q, want 2", got)
	}
	if h.sim.Count("incident") != 1 {
		t.Errorf("incidents = %d, want 1", h.sim.Count("incident"))
	}
}

func TestWriteback_WebhookBeforeResponseIsStillAnEcho(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-3", nil)
	if err := h.sim.SetWebhookOptions(snsim.WebhookOptions{BeforeResponse: true}); err != nil {
		t.Fatal(err)
	}
	v := h.publish(events.AppUpsert, "TCK-3", map[string]string{"status": "on_hold", "comment": "waiting"}, time.Time{})
	h.waitWritten("TCK-3", v)
	v = h.publish(events.AppUpsert, "TCK-RACE", map[string]string{"title": "New one", "urgency": "1"}, time.Time{})
	h.waitWritten("TCK-RACE", v)
	h.waitHooks()
	if echo, other := h.hooks.counts(rec["sys_id"]); echo != 1 || other != 1 { // the other is the human insert
		t.Errorf("update webhook before the response: %d echoes, %d others; want the write's webhook to be an echo", echo, other-1)
	}
	_, newID, _, _ := h.links.SysID(h.ctx, "ticket", "TCK-RACE")
	if echo, other := h.hooks.counts(newID); echo != 1 || other != 0 {
		t.Errorf("insert webhook before the response: %d echoes, %d others; want an echo", echo, other)
	}
}

func TestWriteback_DeleteResolvesWithCloseFieldsByDefault(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-DEL", nil)
	v := h.publish(events.AppDelete, "TCK-DEL", nil, time.Time{})
	h.waitWritten("TCK-DEL", v)
	got := h.record(rec["sys_id"])
	if got["state"] != "6" || got["close_code"] != "Solution provided" || got["close_notes"] == "" {
		t.Fatalf("after an app delete: state %q close_code %q close_notes %q; want resolved with the instance's Solution provided and notes", got["state"], got["close_code"], got["close_notes"])
	}
	if len(h.dlq()) != 0 {
		t.Error("resolving went to the DLQ")
	}
}

// The least-privilege simulator runs the current release's close codes and
// data policy: a resolve without a valid code and notes is refused with 403.
func TestWriteback_AppResolveAndCloseCarryAnActiveCloseCode(t *testing.T) {
	h := newHarness(t, opts{})
	resolved := h.linkedIncident("TCK-RES", nil)
	closed := h.linkedIncident("TCK-CLO", nil)
	v1 := h.publish(events.AppUpsert, "TCK-RES", map[string]string{"status": "resolved"}, time.Time{})
	v2 := h.publish(events.AppUpsert, "TCK-CLO", map[string]string{"status": "closed"}, time.Time{})
	h.waitWritten("TCK-RES", v1)
	h.waitWritten("TCK-CLO", v2)
	for id, want := range map[string]string{resolved["sys_id"]: "6", closed["sys_id"]: "7"} {
		got := h.record(id)
		if got["state"] != want || got["close_code"] != "Solution provided" || !strings.Contains(got["close_notes"], "synced by nowbridge") {
			t.Errorf("%s: state %q close_code %q close_notes %q; want state %s with Solution provided and generated notes",
				got["number"], got["state"], got["close_code"], got["close_notes"], want)
		}
	}
	if n := len(h.dlq()); n != 0 {
		t.Errorf("%d dead letters; resolving and closing must be accepted by the data policy", n)
	}
}

func TestWriteback_ResolveKeepsTheRecordsActiveCloseCode(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-KEEP", map[string]string{"close_code": "Duplicate"})
	v := h.publish(events.AppUpsert, "TCK-KEEP", map[string]string{"status": "resolved"}, time.Time{})
	h.waitWritten("TCK-KEEP", v)
	if got := h.record(rec["sys_id"]); got["state"] != "6" || got["close_code"] != "Duplicate" {
		t.Fatalf("state %q close_code %q; a code a person chose must stay", got["state"], got["close_code"])
	}
}

func TestWriteback_OlderReleaseClosesWithItsOwnFirstCode(t *testing.T) {
	h := newHarness(t, opts{})
	if err := h.sim.SetChoices("incident", "close_code", snsim.LegacyCloseCodes()); err != nil {
		t.Fatal(err)
	}
	rec := h.linkedIncident("TCK-OLD", nil)
	v := h.publish(events.AppDelete, "TCK-OLD", nil, time.Time{})
	h.waitWritten("TCK-OLD", v)
	if got := h.record(rec["sys_id"]); got["state"] != "6" || got["close_code"] != snsim.LegacyCloseCodes()[0].Value {
		t.Fatalf("state %q close_code %q; want resolved with the release's first active code %q", got["state"], got["close_code"], snsim.LegacyCloseCodes()[0].Value)
	}
}

func TestWriteback_RetiredCloseCodeIsDeadLetteredOnceWithTheValidOnes(t *testing.T) {
	h := newHarness(t, opts{cfg: outbound.Config{CloseCode: "Solved (Permanently)"}})
	rec := h.linkedIncident("TCK-RET", nil)
	h.publish(events.AppUpsert, "TCK-RET", map[string]string{"status": "resolved"}, time.Time{})
	var reason string
	h.eventually("one dead letter", 20*time.Second, func() (bool, string) {
		msgs := h.dlq()
		if len(msgs) == 1 {
			reason = msgs[0].Header.Get(events.HeaderDLQReason)
		}
		return len(msgs) == 1, fmt.Sprintf("%d dead letters", len(msgs))
	})
	if !strings.Contains(reason, `BRIDGE_CLOSE_CODE "Solved (Permanently)"`) || !strings.Contains(reason, `"Solution provided"`) {
		t.Errorf("dead letter reason %q does not name the setting and the valid choices", reason)
	}
	if got := h.record(rec["sys_id"]); got["state"] != "1" {
		t.Errorf("state %q: nothing may be written with a code ServiceNow would drop", got["state"])
	}
	if n := h.sim.RequestCount("PATCH", "", 0); n != 0 {
		t.Errorf("%d PATCH requests; a change that cannot succeed must not be sent", n)
	}
}

func TestWriteback_DeleteModeDeletes(t *testing.T) {
	h := newHarness(t, opts{cfg: outbound.Config{DeleteMode: outbound.DeleteRecord}})
	rec := h.linkedIncident("TCK-DEL2", nil)
	v := h.publish(events.AppDelete, "TCK-DEL2", nil, time.Time{})
	h.waitWritten("TCK-DEL2", v)
	if _, ok := h.sim.Get("incident", rec["sys_id"]); ok {
		t.Fatal("record still exists after an app delete in delete mode")
	}
	if _, _, ok, _ := h.links.SysID(h.ctx, "ticket", "TCK-DEL2"); ok {
		t.Error("link kept after the record was deleted")
	}
}

func TestWriteback_RejectedChangesGoToTheDLQWithTheirReason(t *testing.T) {
	asset, err := mapping.Parse("asset.yaml", []byte("table: u_asset\nentity: asset\nfields:\n  - saas: name\n    servicenow: u_name\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, opts{extraMap: []*mapping.Table{asset}, snCfg: func(c *snclient.Config) {
		c.KnownFields = map[string][]string{"u_asset": {"u_name", "correlation_id", "correlation_display", "sys_id"}}
	}})
	// 400: ServiceNow has no such table.
	body := `{"external_id":"A-1","version":1,"fields":{"name":"laptop"}}`
	if _, err := h.js.Publish(h.ctx, "app.asset.upsert", []byte(body)); err != nil {
		t.Fatal(err)
	}
	// A value outside the mapping's value map.
	h.publish(events.AppUpsert, "TCK-BAD", map[string]string{"title": "x", "status": "exploded"}, time.Time{})
	// 403: the integration user may not write.
	rec := h.linkedIncident("TCK-ACL", nil)
	h.sim.SetACL(snsim.ACL{DenyWrites: true})
	h.publish(events.AppUpsert, "TCK-ACL", map[string]string{"status": "in_progress"}, time.Time{})

	var dl []string
	h.eventually("three dead letters", 20*time.Second, func() (bool, string) {
		msgs := h.dlq()
		dl = dl[:0]
		for _, m := range msgs {
			dl = append(dl, m.Header.Get(events.HeaderDLQStatus)+" "+m.Header.Get(events.HeaderDLQReason)+" | "+m.Header.Get(events.HeaderDLQHint))
		}
		return len(msgs) == 3, strings.Join(dl, "\n")
	})
	joined := strings.Join(dl, "\n")
	for _, want := range []string{"400 ", "Invalid table u_asset", "exploded", "403 ", "snc_platform_rest_api_access"} {
		if !strings.Contains(joined, want) {
			t.Errorf("dead letters do not mention %q:\n%s", want, joined)
		}
	}
	for _, m := range h.dlq() {
		if m.Subject != "bridge.dlq.writeback" || m.Header.Get(events.HeaderDLQStream) != events.StreamApp || m.Header.Get(events.HeaderDLQSeq) == "" || !strings.HasPrefix(m.Header.Get(events.HeaderDLQSubject), "app.") {
			t.Errorf("dead letter on %s lacks its origin: %v", m.Subject, m.Header)
		}
	}
	if h.record(rec["sys_id"])["state"] != "1" {
		t.Error("a denied write changed the record")
	}
}

// metric sums a metric's samples whose label matches (label "" sums all).
func metric(t *testing.T, h *harness, name, label, value string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					ok = true
				}
			}
			if !ok {
				continue
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}

func TestWriteback_ComputedSideEffectsFlowBackToTheApp(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-PRI", nil) // impact 2, urgency 2: priority 3
	id := rec["sys_id"]
	echo0, other0 := h.hooks.counts(id)
	v := h.publish(events.AppUpsert, "TCK-PRI", map[string]string{"urgency": "1"}, time.Time{})
	h.waitWritten("TCK-PRI", v)
	h.waitHooks()
	if got := h.record(id)["priority"]; got != "2" {
		t.Fatalf("priority = %q, want ServiceNow to compute 2 from impact 2 and urgency 1", got)
	}
	echo, other := h.hooks.counts(id)
	if echo != echo0 || other != other0+1 {
		t.Errorf("webhook of a write that changed priority on its own: %d echoes, %d to sync; want it synced so the app learns the priority", echo-echo0, other-other0)
	}
	// The apply pipeline delivers that version; then a write without side
	// effects is an echo again.
	h.syncState(h.record(id))
	v = h.publish(events.AppUpsert, "TCK-PRI", map[string]string{"title": "Email down again"}, time.Time{})
	h.waitWritten("TCK-PRI", v)
	h.waitHooks()
	if e, _ := h.hooks.counts(id); e != echo0+1 {
		t.Errorf("echoes = %d, want the plain title write to be one", e-echo0)
	}
}

func TestWriteback_OlderVersionIsAckedAsStale(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-OLD", nil)
	pub := func(v int64, title string) {
		body := fmt.Sprintf(`{"external_id":"TCK-OLD","version":%d,"updated_at":"2026-11-28T10:00:0%dZ","fields":{"title":%q}}`, v, v, title)
		if _, err := h.js.Publish(h.ctx, "app.ticket.upsert", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	pub(2, "version two")
	h.waitWritten("TCK-OLD", 2)
	pub(1, "version one, late")
	h.eventually("the late version counted as stale", 10*time.Second, func() (bool, string) {
		n := metric(t, h, "bridge_writeback_messages_total", "outcome", "stale")
		return n == 1, fmt.Sprint("stale=", n)
	})
	if got := h.record(rec["sys_id"])["short_description"]; got != "version two" {
		t.Errorf("short_description = %q: an older app version overwrote a newer one", got)
	}
	if n := h.count("PATCH", pathOne, 0); n != 1 {
		t.Errorf("PATCH requests = %d, want 1 (the stale version writes nothing)", n)
	}
}

// A write built on a version the bridge has handed the app but not yet
// stored in bridge_state (the apply pipeline records what it told the app
// before it advances the state) is not the next version after the one the
// bridge knows, so it is not claimed and its webhook must reach the app. A
// business rule fast enough to post that webhook before the PATCH response
// used to be matched as the write's echo anyway and dropped: the app never
// heard of the version, and the two sides stayed apart.
func TestWriteback_UnclaimedWriteWebhookBeforeResponseStillSyncs(t *testing.T) {
	// No grace: the change follows the hand-over, and only the version rule
	// keeps the write unclaimed.
	h := newHarness(t, opts{cfg: outbound.Config{HandOverGrace: time.Nanosecond}})
	rec := h.linkedIncident("TCK-LAG", map[string]string{"state": "2"})
	id := rec["sys_id"]
	// A person changes the record; the app is handed that version, but
	// bridge_state still holds the previous one.
	_, told := h.personEdits(id, "TCK-LAG", map[string]string{"short_description": "Email down for all"})
	if err := h.sim.SetWebhookOptions(snsim.WebhookOptions{BeforeResponse: true}); err != nil {
		t.Fatal(err)
	}
	echo0, other0 := h.hooks.counts(id)
	v := h.publish(events.AppUpsert, "TCK-LAG", map[string]string{"title": told["title"], "status": "on_hold"}, time.Time{})
	h.waitWritten("TCK-LAG", v)
	h.waitHooks()
	if got := h.record(id)["state"]; got != "3" {
		t.Fatalf("state = %q, want the app's on_hold (3) written", got)
	}
	if echo, other := h.hooks.counts(id); echo != echo0 || other != other0+1 {
		t.Errorf("webhook of a write not claimed (it follows a version bridge_state lacks): %d echoes, %d to sync; want it synced, not dropped as an echo", echo-echo0, other-other0)
	}
}

// The app sends a change while the apply pipeline hands it a newer
// ServiceNow version (someone edited the record). The write then follows
// that version directly (bridge_state has it), yet whether it is the app's
// own depends on the order on the app's side:
//   - handed over after the change was stored: the app applies the version
//     over its change, so the write is not claimed (its version reaches the
//     app), and the change's stale urgency does not undo the person's;
//   - stored just after the hand-over (within HandOverGrace): the app may not
//     have taken it yet, so the write is not claimed either;
//   - stored well after: the app built on it; the write is its own, claimed.
func TestWriteback_ChangesCrossingAHandOverAreNotClaimed(t *testing.T) {
	const grace = 200 * time.Millisecond
	for _, tc := range []struct {
		name   string
		when   string // when the app's change was stored: "before", "just after", "after" the hand-over
		claim  bool
		reason string
	}{
		{"sent before the hand-over", "before", false, "handed_over_after"},
		{"sent just after the hand-over", "just after", false, "handed_over_just_before"},
		{"sent well after the hand-over", "after", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, opts{cfg: outbound.Config{HandOverGrace: grace}})
			rec := h.linkedIncident("TCK-HAND", map[string]string{"state": "2"})
			id := rec["sys_id"]
			_, first, err := h.maps.ToSaaS("incident", rec)
			if err != nil {
				t.Fatal(err)
			}
			h.cache.RecordApplied("ticket", "TCK-HAND", first)
			stored := time.Now()
			// The apply pipeline: the app is handed the version, then the state moves.
			human, told := h.personEdits(id, "TCK-HAND", map[string]string{"urgency": "1"})
			h.syncState(human)
			// The app's fields are what it held when it sent the change:
			// without the person's urgency when it sent first.
			fields := maps.Clone(first)
			switch tc.when {
			case "just after":
				stored, fields = time.Now(), maps.Clone(told)
			case "after":
				time.Sleep(grace + 50*time.Millisecond)
				stored, fields = time.Now(), maps.Clone(told)
			}
			fields["status"] = "on_hold"
			echo0, other0 := h.hooks.counts(id)
			ch := outbound.Change{Entity: "ticket", Action: events.AppUpsert, Stored: stored,
				AppChange: events.AppChange{ExternalID: "TCK-HAND", Version: 1, UpdatedAt: time.Now().UTC(), Fields: fields}}
			res, err := h.w.Apply(h.ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			h.waitHooks()
			if res.Outcome != outbound.OutcomeUpdated || res.Sent["state"] != "3" || len(res.Sent) != 1 {
				t.Fatalf("outcome %s, sent %v; want one PATCH of state=3", res.Outcome, res.Sent)
			}
			if got := h.record(id)["urgency"]; got != "1" {
				t.Errorf("urgency = %q, want the person's 1 kept", got)
			}
			echo, other := h.hooks.counts(id)
			st, _, _, err := h.store.Get(h.ctx, "incident", id)
			if err != nil {
				t.Fatal(err)
			}
			applied, _ := h.cache.Applied("ticket", "TCK-HAND")
			if !tc.claim {
				if echo != echo0 || other != other0+1 {
					t.Errorf("webhooks: %d echoes, %d to sync; want the write's webhook synced to the app", echo-echo0, other-other0)
				}
				if st.Version == res.ModCount {
					t.Errorf("bridge_state moved to the unclaimed version %d", st.Version)
				}
				if applied["status"] != told["status"] {
					t.Errorf("the app is known to hold status %q; it holds %q, what it was handed last", applied["status"], told["status"])
				}
				if n := metric(t, h, "bridge_writeback_unclaimed_total", "reason", tc.reason); n != 1 {
					t.Errorf("bridge_writeback_unclaimed_total{reason=%q} = %v, want 1", tc.reason, n)
				}
				return
			}
			if echo != echo0+1 || other != other0 {
				t.Errorf("webhooks: %d echoes, %d to sync; want the write's webhook answered as an echo", echo-echo0, other-other0)
			}
			if st.Version != res.ModCount {
				t.Errorf("bridge_state at %d, want the claimed version %d", st.Version, res.ModCount)
			}
			if applied["status"] != "on_hold" {
				t.Errorf("the app is known to hold status %q, want its own on_hold", applied["status"])
			}
		})
	}
}

// personEdits changes a record as a ServiceNow user and hands the new
// version to the app as the apply pipeline would (bridge_state untouched),
// returning the record and what the app was handed.
func (h *harness) personEdits(sysID, externalID string, fields map[string]string) (snsim.Record, map[string]string) {
	h.t.Helper()
	rec, err := h.sim.Update("incident", sysID, fields, "beth.anglin")
	if err != nil {
		h.t.Fatal(err)
	}
	h.waitHooks()
	_, told, err := h.maps.ToSaaS("incident", rec)
	if err != nil {
		h.t.Fatal(err)
	}
	h.cache.RecordApplied("ticket", externalID, told)
	return rec, told
}
