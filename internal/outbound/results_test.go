package outbound_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// stored is one result as the app reads it from BRIDGE_RESULTS.
type stored struct {
	events.Result
	Subject string
	MsgID   string
	Stored  time.Time
}

func (s stored) String() string {
	b, _ := json.Marshal(s.Result)
	return s.Subject + " " + string(b)
}

// results reads every result BRIDGE_RESULTS holds for externalID ("" for
// all), in stream order.
func (h *harness) results(externalID string) []stored {
	h.t.Helper()
	st, err := h.js.Stream(h.ctx, events.StreamResults)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []stored
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(h.ctx, seq)
		if err != nil {
			continue
		}
		var r events.Result
		if err := json.Unmarshal(m.Data, &r); err != nil {
			h.t.Fatalf("result %d on %s is not a Result: %v: %s", seq, m.Subject, err, m.Data)
		}
		if externalID == "" || r.ExternalID == externalID {
			out = append(out, stored{Result: r, Subject: m.Subject, MsgID: m.Header.Get(events.HeaderMsgID), Stored: m.Time})
		}
	}
	return out
}

// waitResult waits for the result of externalID's version with outcome
// ("" for any final one).
func (h *harness) waitResult(externalID string, version int64, outcome string) stored {
	h.t.Helper()
	var got stored
	h.eventually(fmt.Sprintf("a %q result of %s v%d", outcome, externalID, version), 20*time.Second, func() (bool, string) {
		all := h.results(externalID)
		for _, r := range all {
			if r.Version == version && (r.Outcome == outcome || outcome == "" && r.Final()) {
				got = r
				return true, ""
			}
		}
		return false, fmt.Sprint(all)
	})
	return got
}

func TestResults_AppCreateGetsCreatedWithNumberAndURLThenUpdatedAndUnchanged(t *testing.T) {
	h := newHarness(t, opts{})
	sent := time.Now()
	v := h.publish(events.AppUpsert, "TCK-R1", map[string]string{"title": "Printer on fire", "status": "new", "impact": "1", "urgency": "1"}, time.Time{})
	r := h.waitResult("TCK-R1", v, "")
	took := r.Stored.Sub(sent)
	if r.Outcome != events.OutcomeCreated || r.Subject != "bridge.result.ticket.created" || r.MsgID != "result:ticket:TCK-R1:1:created" {
		t.Fatalf("result %v (id %s), want created on bridge.result.ticket.created under result:ticket:TCK-R1:1:created", r, r.MsgID)
	}
	rec := h.record(r.SysID)
	if r.Number == "" || r.Number != rec["number"] || !strings.HasPrefix(r.Number, "INC") {
		t.Errorf("number %q, want the created incident's %q", r.Number, rec["number"])
	}
	if want := h.simURL + "/nav_to.do?uri=incident.do?sys_id=" + rec["sys_id"]; r.URL != want {
		t.Errorf("url %q, want %q", r.URL, want)
	}
	if r.Table != "incident" || r.Entity != "ticket" || r.Action != events.AppUpsert || r.SysModCount == nil || *r.SysModCount != 0 || r.Error != nil || r.At.IsZero() {
		t.Errorf("result %v: want table incident, entity ticket, action upsert, sys_mod_count 0, no error, a time", r)
	}
	t.Logf("created result of %s stored %v after the app published it (first change: token, schema)", r.Number, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the created result took %v; the app should see its number within a second", took)
	}

	sent = time.Now()
	v = h.publish(events.AppUpsert, "TCK-R1", map[string]string{"title": "Printer on fire", "status": "in_progress", "impact": "1", "urgency": "1"}, time.Time{})
	r = h.waitResult("TCK-R1", v, "")
	rec = h.record(r.SysID)
	if r.Outcome != events.OutcomeUpdated || r.Number != rec["number"] || r.SysModCount == nil || fmt.Sprint(*r.SysModCount) != rec["sys_mod_count"] {
		t.Errorf("result %v, want updated with the number and the version the PATCH answered (%s)", r, rec["sys_mod_count"])
	}
	t.Logf("updated result stored %v after the app published it", r.Stored.Sub(sent).Round(time.Millisecond))

	// The app republishing what ServiceNow holds writes nothing.
	v = h.publish(events.AppUpsert, "TCK-R1", map[string]string{"title": "Printer on fire", "status": "in_progress"}, time.Time{})
	r = h.waitResult("TCK-R1", v, "")
	if r.Outcome != events.OutcomeUnchanged || r.Number != rec["number"] || r.URL == "" || r.SysModCount == nil || fmt.Sprint(*r.SysModCount) != rec["sys_mod_count"] {
		t.Errorf("result %v, want unchanged with the number, link and the version ServiceNow holds", r)
	}

	// An app delete resolves the incident: updated.
	v = h.publish(events.AppDelete, "TCK-R1", nil, time.Time{})
	r = h.waitResult("TCK-R1", v, "")
	if r.Outcome != events.OutcomeUpdated || r.Action != events.AppDelete || h.record(r.SysID)["state"] != "6" {
		t.Errorf("result %v of the delete, want updated (resolved)", r)
	}
	if all := h.results("TCK-R1"); len(all) != 4 {
		t.Errorf("%d results for 4 changes, want one each: %v", len(all), all)
	}
}

// A retired close code: the bridge read the instance's choices at start,
// then an admin retired the one it picked. ServiceNow drops a value that is
// not an active choice without a word, and the data policy refuses the
// resolve. The app hears why, with the hint; once the admin brings the code
// back and the operator retries the dead letter, it hears the late result.
func TestResults_DataPolicyRefusalIsRejectedWithServiceNowsMessageThenTheDLQRetrysResult(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-DP", nil)
	if codes, err := h.w.CheckCloseCodes(h.ctx, []string{"incident"}); err != nil || codes["incident"] != "Solution provided" {
		t.Fatalf("close codes %v, %v; want Solution provided", codes, err)
	}
	if err := h.sim.SetChoiceInactive("incident", "close_code", "Solution provided", true); err != nil {
		t.Fatal(err)
	}
	v := h.publish(events.AppUpsert, "TCK-DP", map[string]string{"status": "resolved"}, time.Time{})
	r := h.waitResult("TCK-DP", v, "")
	if r.Outcome != events.OutcomeRejected || r.Subject != "bridge.result.ticket.rejected" || r.Error == nil {
		t.Fatalf("result %v, want rejected with an error", r)
	}
	e := r.Error
	if e.Status != 403 || e.Message != "Operation Failed" || !strings.Contains(e.Detail, "Data Policy Exception") || !strings.Contains(e.Detail, "Resolution code") {
		t.Errorf("error %+v, want ServiceNow's 403 Operation Failed with the data policy's detail naming Resolution code", e)
	}
	if e.Hint != snclient.HintDataPolicy || !e.DeadLettered || e.Reason != "" {
		t.Errorf("error %+v, want snclient's data policy hint and dead_lettered", e)
	}
	if r.SysID != rec["sys_id"] || r.Number != rec["number"] || r.URL == "" || r.Table != "incident" {
		t.Errorf("result %v, want the linked record's sys_id, number and link", r)
	}
	dead := h.dlq()
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dead))
	}

	if err := h.sim.SetChoiceInactive("incident", "close_code", "Solution provided", false); err != nil {
		t.Fatal(err)
	}
	retried, err := dlq.Retry(h.ctx, h.js, dead[0].Sequence)
	if err != nil {
		t.Fatal(err)
	}
	late := h.waitResult("TCK-DP", v, events.OutcomeUpdated)
	if want := fmt.Sprintf(":retry-of:%s:%d", events.StreamDLQ, retried.Seq); !strings.HasSuffix(late.MsgID, want) {
		t.Errorf("late result id %q, want it to name the dead letter it came from (%s)", late.MsgID, want)
	}
	if got := h.record(rec["sys_id"]); got["state"] != "6" || got["close_code"] != "Solution provided" || late.Number != rec["number"] {
		t.Errorf("after the retry: state %q, close_code %q, result %v; want resolved with Solution provided", got["state"], got["close_code"], late)
	}
	if all := h.results("TCK-DP"); len(all) != 2 {
		t.Errorf("results %v, want the rejection and the late update", all)
	}
}

// A 429 storm: the app hears once that its change is pending, however
// often it is retried, then the final result.
func TestResults_RateLimitStormIsOneRetryingThenUpdated(t *testing.T) {
	h := newHarness(t, opts{snCfg: func(c *snclient.Config) { c.RetryMaxElapsed = 200 * time.Millisecond }})
	rec := h.linkedIncident("TCK-429", nil)
	if err := h.sim.SetFaults(snsim.Faults{SemaphoreRate: 1}); err != nil {
		t.Fatal(err)
	}
	v := h.publish(events.AppUpsert, "TCK-429", map[string]string{"status": "in_progress"}, time.Time{})
	r := h.waitResult("TCK-429", v, events.OutcomeRetrying)
	if r.Error == nil || r.Error.Reason != "rate_limited" || r.Error.Status != 429 || r.Error.DeadLettered || r.Error.Message == "" {
		t.Errorf("retrying result %v, want reason rate_limited, status 429 and ServiceNow's message", r)
	}
	if r.SysID != rec["sys_id"] || r.Number != rec["number"] || r.URL == "" || r.Final() {
		t.Errorf("retrying result %v, want the record's sys_id, number and link", r)
	}
	h.eventually("three retries", 20*time.Second, func() (bool, string) {
		n := metric(t, h, "bridge_writeback_retries_total", "reason", "rate_limited")
		return n >= 3, fmt.Sprint("retries=", n)
	})
	if err := h.sim.SetFaults(snsim.Faults{}); err != nil {
		t.Fatal(err)
	}
	final := h.waitResult("TCK-429", v, "")
	if final.Outcome != events.OutcomeUpdated || h.record(rec["sys_id"])["state"] != "2" {
		t.Errorf("final result %v, want updated", final)
	}
	all := h.results("TCK-429")
	if len(all) != 2 || all[0].Outcome != events.OutcomeRetrying || all[1].Outcome != events.OutcomeUpdated {
		t.Errorf("results %v, want retrying once, then updated", all)
	}
}

func TestResults_ConflictNamesTheAppsFieldsAndThePolicy(t *testing.T) {
	h := newHarness(t, opts{cfg: outbound.Config{DefaultPolicy: outbound.ServiceNowWins}})
	rec := h.linkedIncident("TCK-CF", map[string]string{"short_description": "base", "state": "1"})
	if _, err := h.sim.Update("incident", rec["sys_id"], map[string]string{"short_description": "sn-edit", "state": "2"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	v := h.publish(events.AppUpsert, "TCK-CF", map[string]string{"title": "app-edit", "status": "on_hold"}, time.Time{})
	r := h.waitResult("TCK-CF", v, "")
	if r.Outcome != events.OutcomeConflict || r.Subject != "bridge.result.ticket.conflict" || len(r.Conflicts) != 2 {
		t.Fatalf("result %v, want conflict on two fields", r)
	}
	got := map[string]events.ResultConflict{}
	for _, c := range r.Conflicts {
		got[c.Field] = c
	}
	want := map[string]events.ResultConflict{
		"title":  {Field: "title", Policy: "servicenow_wins", Winner: "servicenow", ServiceNow: "sn-edit", SaaS: "app-edit"},
		"status": {Field: "status", Policy: "servicenow_wins", Winner: "servicenow", ServiceNow: "in_progress", SaaS: "on_hold"},
	}
	for f, w := range want {
		if got[f] != w {
			t.Errorf("conflict on %s = %+v, want %+v (the app's names and values)", f, got[f], w)
		}
	}
	if r.Number != rec["number"] || r.SysModCount == nil || *r.SysModCount != 1 {
		t.Errorf("result %v, want the number and the version ServiceNow holds (1: nothing written)", r)
	}
}

func TestResults_OlderVersionIsStale(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-ST", nil)
	pub := func(v int64, title string) {
		body := fmt.Sprintf(`{"external_id":"TCK-ST","version":%d,"fields":{"title":%q}}`, v, title)
		if _, err := h.js.Publish(h.ctx, "app.ticket.upsert", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	pub(2, "version two")
	h.waitResult("TCK-ST", 2, events.OutcomeUpdated)
	pub(1, "version one, late")
	r := h.waitResult("TCK-ST", 1, "")
	if r.Outcome != events.OutcomeStale || r.SysID != rec["sys_id"] || r.Number != rec["number"] || r.SysModCount != nil {
		t.Errorf("result %v, want stale with the record, and no version (nothing was written for it)", r)
	}
}

// Redelivering every APP_EVENTS message -- the durable consumer deleted and
// made again, which is what a replay of the whole stream through it does --
// publishes no second result, whatever each change's outcome was.
func TestResults_RedeliveredChangesPublishNoSecondResult(t *testing.T) {
	h := newHarness(t, opts{})
	h.linkedIncident("TCK-RD2", nil)
	var last []struct {
		id string
		v  int64
	}
	add := func(id string, v int64) {
		last = append(last, struct {
			id string
			v  int64
		}{id, v})
	}
	add("TCK-RD1", h.publish(events.AppUpsert, "TCK-RD1", map[string]string{"title": "new one", "status": "new"}, time.Time{}))
	add("TCK-RD1", h.publish(events.AppUpsert, "TCK-RD1", map[string]string{"title": "new one", "status": "in_progress"}, time.Time{}))
	add("TCK-RD2", h.publish(events.AppUpsert, "TCK-RD2", map[string]string{"status": "exploded"}, time.Time{}))
	add("TCK-RD2", h.publish(events.AppUpsert, "TCK-RD2", map[string]string{"status": "on_hold"}, time.Time{}))
	add("TCK-RD2", h.publish(events.AppDelete, "TCK-RD2", nil, time.Time{}))
	for _, c := range last {
		h.waitResult(c.id, c.v, "")
	}
	before := h.results("")
	outcomes := map[string]bool{}
	for _, r := range before {
		outcomes[r.Outcome] = true
	}
	for _, o := range []string{events.OutcomeCreated, events.OutcomeUpdated, events.OutcomeRejected} {
		if !outcomes[o] {
			t.Fatalf("results %v lack %s", before, o)
		}
	}

	h.stop()
	if err := h.js.DeleteConsumer(h.ctx, events.StreamApp, "writeback"); err != nil {
		t.Fatal(err)
	}
	h.startConsumer()
	h.eventually("every APP_EVENTS message delivered again and acked", 20*time.Second, func() (bool, string) {
		c, err := h.js.Consumer(h.ctx, events.StreamApp, "writeback")
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(h.ctx)
		if err != nil {
			return false, err.Error()
		}
		st, _ := h.js.Stream(h.ctx, events.StreamApp)
		lastSeq := st.CachedInfo().State.LastSeq
		return info.AckFloor.Stream >= lastSeq && info.NumAckPending == 0, fmt.Sprintf("ack floor %d of %d", info.AckFloor.Stream, lastSeq)
	})
	after := h.results("")
	if len(after) != len(before) {
		t.Errorf("redelivery published %d more results:\nbefore %v\nafter  %v", len(after)-len(before), before, after)
	}
	// The last change of each id publishes its result again (it may have
	// been lost), which the stream drops; earlier ones publish nothing.
	if n := metric(t, h, "bridge_writeback_result_duplicates_total", "", ""); n != 2 {
		t.Errorf("duplicates dropped %v, want 2 (the last change of each id)", n)
	}
	if d := h.dlq(); len(d) != 1 {
		t.Errorf("%d dead letters after the redelivery, want still 1", len(d))
	}
}

// A result BRIDGE_RESULTS does not store leaves the change unacked: it is
// delivered again and its result stored once, without a second write.
func TestResults_LostResultIsStoredOnTheRedeliveryWithoutASecondWrite(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-LOST", nil)
	if err := h.js.DeleteStream(h.ctx, events.StreamResults); err != nil {
		t.Fatal(err)
	}
	h.sim.ResetStats()
	v := h.publish(events.AppUpsert, "TCK-LOST", map[string]string{"status": "in_progress"}, time.Time{})
	h.waitWritten("TCK-LOST", v)
	h.eventually("a failed result publish", 10*time.Second, func() (bool, string) {
		n := metric(t, h, "bridge_writeback_result_failures_total", "", "")
		return n >= 1, fmt.Sprint("failures=", n)
	})
	if err := broker.EnsureAll(h.ctx, h.js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	r := h.waitResult("TCK-LOST", v, "")
	if r.Outcome != events.OutcomeUpdated || r.SysModCount == nil || *r.SysModCount != 1 || r.Number != rec["number"] {
		t.Errorf("result %v, want the update's own result (version 1), not a stale one", r)
	}
	if n := h.count("PATCH", pathOne, 0); n != 1 {
		t.Errorf("%d PATCHes, want 1: the redelivery must not write again", n)
	}
	if all := h.results("TCK-LOST"); len(all) != 1 {
		t.Errorf("results %v, want exactly one", all)
	}
}

// A change the writeback cannot even decode past its id is still answered.
func TestResults_UnknownActionIsRejectedByTheBridge(t *testing.T) {
	h := newHarness(t, opts{})
	if _, err := h.js.Publish(h.ctx, "app.ticket.archive", []byte(`{"external_id":"TCK-ARC","version":3}`), jetstream.WithMsgID("arc")); err != nil {
		t.Fatal(err)
	}
	r := h.waitResult("TCK-ARC", 3, "")
	if r.Outcome != events.OutcomeRejected || r.Action != "archive" || r.Error == nil || r.Error.Status != 0 || !strings.Contains(r.Error.Message, `"archive"`) || !r.Error.DeadLettered {
		t.Errorf("result %v, want rejected by the bridge (status 0) naming the action", r)
	}
}
