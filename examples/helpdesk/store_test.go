package helpdesk

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/sdk/wire"
)

func openTestStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(context.Background(), filepath.Join(t.TempDir(), "helpdesk.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustTicket(t *testing.T, s *Store, id string) (Ticket, []Change, []Comment) {
	t.Helper()
	tk, ch, cm, err := s.Ticket(context.Background(), id)
	if err != nil {
		t.Fatalf("ticket %s: %v", id, err)
	}
	return tk, ch, cm
}

func TestSyncOf(t *testing.T) {
	tests := []struct {
		name       string
		latest     Change
		have       bool
		wantState  string
		wantReason string // a substring; "" means none
	}{
		{"came from ServiceNow only", Change{}, false, SyncSynced, ""},
		{"in the outbox", Change{Version: 1}, true, SyncPending, "waiting to be sent"},
		{"sent, no answer", Change{Version: 1, Published: true}, true, SyncPending, "waiting for ServiceNow"},
		{"retrying on 429", Change{Version: 2, Published: true, Outcome: wire.OutcomeRetrying, RetryReason: "rate_limited"}, true, SyncPending, "rate limit"},
		{"created", Change{Version: 1, Outcome: wire.OutcomeCreated}, true, SyncSynced, ""},
		{"updated", Change{Version: 3, Outcome: wire.OutcomeUpdated}, true, SyncSynced, ""},
		{"unchanged", Change{Version: 3, Outcome: wire.OutcomeUnchanged}, true, SyncSynced, ""},
		{"stale", Change{Version: 3, Outcome: wire.OutcomeStale}, true, SyncSynced, ""},
		{"conflict says who won", Change{Version: 3, Outcome: wire.OutcomeConflict,
			Conflicts: []wire.ResultConflict{{Field: "title", Policy: "servicenow_wins", Winner: "servicenow"}}}, true, SyncSynced, "title changed on both sides, ServiceNow's value kept"},
		{"rejected with ServiceNow's message and detail", Change{Version: 4, Outcome: wire.OutcomeRejected, Message: "Operation Failed",
			Detail: "Data Policy Exception: close_code", Hint: "set a close code"}, true, SyncRejected, "Operation Failed: Data Policy Exception"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := syncOf(Ticket{}, tt.latest, tt.have)
			if got.State != tt.wantState {
				t.Fatalf("state = %q, want %q (%+v)", got.State, tt.wantState, got)
			}
			if tt.wantReason == "" && got.Reason != "" {
				t.Fatalf("reason = %q, want none", got.Reason)
			}
			if !strings.Contains(got.Reason, tt.wantReason) {
				t.Fatalf("reason = %q, want it to contain %q", got.Reason, tt.wantReason)
			}
			if tt.latest.Outcome == wire.OutcomeRejected && got.Hint != tt.latest.Hint {
				t.Fatalf("hint = %q, want %q", got.Hint, tt.latest.Hint)
			}
		})
	}
}

func TestStore_CreateGoesToOutboxInOrder(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	a, err := s.Create(ctx, NewTicket{Title: "  Email down  ", Description: "since 9:00", Urgency: "1", Impact: "2"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Title != "Email down" || a.Status != StatusNew || a.Version != 1 || !strings.HasPrefix(a.ExternalID, "HD-") {
		t.Fatalf("created ticket = %+v, want a trimmed title, status new, version 1, an HD- id", a)
	}
	if a.Sync.State != SyncPending {
		t.Fatalf("a new ticket's sync = %+v, want pending", a.Sync)
	}
	if _, err := s.Update(ctx, a.ExternalID, Patch{Comment: "looking"}, KindComment); err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx, NewTicket{Title: "VPN"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Outbox(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range out {
		got = append(got, o.ExternalID+"@"+strconv.FormatInt(o.Version, 10))
	}
	want := []string{a.ExternalID + "@1", a.ExternalID + "@2", b.ExternalID + "@1"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("outbox = %v, want %v (oldest first)", got, want)
	}
	first := out[0]
	if first.Fields["title"] != "Email down" || first.Fields["urgency"] != "1" || first.Fields["impact"] != "2" || first.Fields["status"] != StatusNew {
		t.Fatalf("create sends %v, want the whole ticket", first.Fields)
	}
	if _, ok := first.Fields["priority"]; ok {
		t.Fatalf("create sends priority %q: ServiceNow computes it and overwrites what is sent", first.Fields["priority"])
	}
	if out[1].Fields["comment"] != "looking" || out[1].Fields["title"] != "Email down" {
		t.Fatalf("comment change sends %v, want the ticket plus the comment", out[1].Fields)
	}
	if err := s.MarkPublished(ctx, first.Seq); err != nil {
		t.Fatal(err)
	}
	out, _ = s.Outbox(ctx, 10)
	if len(out) != 2 || out[0].Version != 2 {
		t.Fatalf("after publishing version 1 the outbox holds %d changes starting at %+v, want 2 from version 2", len(out), out)
	}
}

func TestStore_ValidationNamesTheField(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	_, err := s.Create(ctx, NewTicket{Title: "  ", Urgency: "7"})
	var v ValidationError
	if !errors.As(err, &v) || v["title"] == "" || v["urgency"] == "" {
		t.Fatalf("Create with an empty title and urgency 7: err = %v, want a ValidationError naming title and urgency", err)
	}
	tk, _ := s.Create(ctx, NewTicket{Title: "ok"})
	if _, err := s.Update(ctx, tk.ExternalID, Patch{Fields: map[string]string{"status": "done"}}, KindEdit); !errors.As(err, &v) || v["status"] == "" {
		t.Fatalf("Update to status done: err = %v, want a ValidationError naming status", err)
	}
	if _, err := s.Update(ctx, "HD-nope", Patch{Comment: "x"}, KindComment); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update of an unknown ticket: err = %v, want ErrNotFound", err)
	}
	if changed, err := s.Update(ctx, tk.ExternalID, Patch{Fields: map[string]string{"title": "ok"}}, KindEdit); err != nil || changed {
		t.Fatalf("an edit that changes nothing: changed=%v err=%v, want no new version", changed, err)
	}
}

func TestStore_ResultsShowNumberLinkAndRejection(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	tk, _ := s.Create(ctx, NewTicket{Title: "Printer"})
	mc := int64(0)
	created := wire.Result{ExternalID: tk.ExternalID, Version: 1, Entity: "ticket", Action: wire.AppUpsert, Outcome: wire.OutcomeCreated,
		Table: "incident", SysID: "0123456789abcdef0123456789abcdef", Number: "INC0010006", SysModCount: &mc,
		URL: "https://dev1.service-now.com/nav_to.do?uri=incident.do?sys_id=0123456789abcdef0123456789abcdef"}
	if known, err := s.RecordResult(ctx, created); err != nil || !known {
		t.Fatalf("RecordResult: known=%v err=%v", known, err)
	}
	got, _, _ := mustTicket(t, s, tk.ExternalID)
	if got.Number != "INC0010006" || got.URL != created.URL || got.SysID != created.SysID || got.Table != "incident" || got.Sync.State != SyncSynced {
		t.Fatalf("after created: %+v, want number, link, sys_id and synced", got)
	}
	// The results' sys_mod_count must not move the version guard: the
	// write's own version may still come as news (a computed priority).
	if got.SNVersion != -1 {
		t.Fatalf("sn_version = %d after a result, want -1 (only bridge.apply moves it)", got.SNVersion)
	}

	if _, err := s.Update(ctx, tk.ExternalID, Patch{Fields: map[string]string{"status": StatusResolved}}, KindResolve); err != nil {
		t.Fatal(err)
	}
	retry := wire.Result{ExternalID: tk.ExternalID, Version: 2, Outcome: wire.OutcomeRetrying, Error: &wire.ResultError{Status: 429, Message: "Too many requests", Reason: "rate_limited"}}
	if _, err := s.RecordResult(ctx, retry); err != nil {
		t.Fatal(err)
	}
	got, _, _ = mustTicket(t, s, tk.ExternalID)
	if got.Sync.State != SyncPending || !strings.Contains(got.Sync.Reason, "rate limit") {
		t.Fatalf("after retrying: sync %+v, want pending on the rate limit", got.Sync)
	}
	rejected := wire.Result{ExternalID: tk.ExternalID, Version: 2, Outcome: wire.OutcomeRejected, Number: "INC0010006",
		Error: &wire.ResultError{Status: 403, Message: "Operation Failed", Detail: "Data Policy Exception: The following fields are mandatory: Resolution code",
			Hint: "Activate a close code choice", DeadLettered: true}}
	if _, err := s.RecordResult(ctx, rejected); err != nil {
		t.Fatal(err)
	}
	// A late retrying result (redelivered) never replaces the final one.
	if _, err := s.RecordResult(ctx, retry); err != nil {
		t.Fatal(err)
	}
	got, changes, _ := mustTicket(t, s, tk.ExternalID)
	if got.Sync.State != SyncRejected || !strings.Contains(got.Sync.Reason, "Data Policy Exception") || got.Sync.Hint != "Activate a close code choice" {
		t.Fatalf("after rejected: sync %+v, want rejected with ServiceNow's message and the hint", got.Sync)
	}
	if changes[0].Version != 2 || changes[0].Outcome != wire.OutcomeRejected || !changes[0].DeadLettered {
		t.Fatalf("history[0] = %+v, want version 2 rejected and dead-lettered", changes[0])
	}
	if known, err := s.RecordResult(ctx, wire.Result{ExternalID: "OTHER-1", Version: 1, Outcome: wire.OutcomeCreated}); err != nil || known {
		t.Fatalf("a result of another app's ticket: known=%v err=%v, want ignored", known, err)
	}
}

func TestStore_ApplyVersionGuardAndPendingFields(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	tk, _ := s.Create(ctx, NewTicket{Title: "Laptop", Description: "slow"})
	mc := int64(0)
	_, _ = s.RecordResult(ctx, wire.Result{ExternalID: tk.ExternalID, Version: 1, Outcome: wire.OutcomeCreated, Table: "incident", SysID: "aaaa0000aaaa0000aaaa0000aaaa0000", Number: "INC0010007", SysModCount: &mc})

	apply := func(version int64, fields map[string]string) ApplyOutcome {
		t.Helper()
		out, err := s.ApplyFromServiceNow(ctx, wire.ActionUpdate, wire.AppChange{ExternalID: tk.ExternalID, SysID: "aaaa0000aaaa0000aaaa0000aaaa0000",
			Table: "incident", Number: "INC0010007", Version: version, Fields: fields})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if out := apply(2, map[string]string{"title": "Laptop", "description": "very slow", "status": StatusInProgress, "priority": "4"}); out != Applied {
		t.Fatalf("version 2: %s, want applied", out)
	}
	got, _, _ := mustTicket(t, s, tk.ExternalID)
	if got.Description != "very slow" || got.Status != StatusInProgress || got.Priority != "4" || got.SNVersion != 2 {
		t.Fatalf("after version 2: %+v, want ServiceNow's description, status, priority and sn_version 2", got)
	}
	if out := apply(1, map[string]string{"description": "older"}); out != Stale {
		t.Fatalf("version 1 after 2: %s, want stale", out)
	}
	if out := apply(2, map[string]string{"description": "again"}); out != Stale {
		t.Fatalf("version 2 again: %s, want stale", out)
	}
	// The user changes the title; ServiceNow's next version must not undo
	// it while the change is on its way, but its other fields apply.
	if _, err := s.Update(ctx, tk.ExternalID, Patch{Fields: map[string]string{"title": "Laptop broken"}}, KindEdit); err != nil {
		t.Fatal(err)
	}
	if out := apply(3, map[string]string{"title": "Laptop", "description": "replaced disk"}); out != Applied {
		t.Fatalf("version 3: %s, want applied", out)
	}
	got, _, _ = mustTicket(t, s, tk.ExternalID)
	if got.Title != "Laptop broken" || got.Description != "replaced disk" {
		t.Fatalf("after version 3 with the title pending: title %q description %q, want the user's title kept and ServiceNow's description", got.Title, got.Description)
	}
	// The bridge reports a conflict ServiceNow won: the app takes its value.
	_, _ = s.RecordResult(ctx, wire.Result{ExternalID: tk.ExternalID, Version: 2, Outcome: wire.OutcomeConflict,
		Conflicts: []wire.ResultConflict{{Field: "title", Policy: "servicenow_wins", Winner: "servicenow", ServiceNow: "Laptop (SN)", SaaS: "Laptop broken"}}})
	got, _, _ = mustTicket(t, s, tk.ExternalID)
	if got.Title != "Laptop (SN)" || got.Sync.State != SyncSynced || !strings.Contains(got.Sync.Reason, "ServiceNow's value kept") {
		t.Fatalf("after a conflict ServiceNow won: title %q sync %+v, want ServiceNow's title and a synced state naming the conflict", got.Title, got.Sync)
	}
	// The SDK's guard reads the same version from the ticket.
	h, ok, err := s.Versions().Get(ctx, "incident/aaaa0000aaaa0000aaaa0000aaaa0000")
	if err != nil || !ok || h.Version != 3 || h.Deleted {
		t.Fatalf("Versions.Get = %+v %v %v, want version 3", h, ok, err)
	}
	// A delete carries the version of the record's last update (ServiceNow
	// does not count a delete): it still applies, once.
	del := wire.AppChange{ExternalID: tk.ExternalID, SysID: "aaaa0000aaaa0000aaaa0000aaaa0000", Table: "incident", Version: 3}
	if out, err := s.ApplyFromServiceNow(ctx, wire.ActionDelete, del); err != nil || out != Applied {
		t.Fatalf("delete at the last update's version: %s %v, want applied", out, err)
	}
	if out, err := s.ApplyFromServiceNow(ctx, wire.ActionDelete, del); err != nil || out != Stale {
		t.Fatalf("the same delete again: %s %v, want stale", out, err)
	}
	got, _, _ = mustTicket(t, s, tk.ExternalID)
	if !got.SNDeleted {
		t.Fatalf("after ServiceNow's delete: %+v, want SNDeleted", got)
	}
	if h, _, _ := s.Versions().Get(ctx, "incident/aaaa0000aaaa0000aaaa0000aaaa0000"); !h.Deleted || h.Supersedes(3, wire.ActionDelete) {
		t.Fatalf("Versions.Get after the delete = %+v, want deleted at 3", h)
	}
}

func TestStore_ImportsRecordCreatedInServiceNow(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t)
	ch := wire.AppChange{SysID: "bbbb0000bbbb0000bbbb0000bbbb0000", Table: "incident", Number: "INC0010009", Version: 0,
		Fields: wire.Fields{"title": "Created by phone", "status": StatusNew, "urgency": "2", "impact": "2", "priority": "3"}}
	if out, err := s.ApplyFromServiceNow(ctx, wire.ActionInsert, ch); err != nil || out != Imported {
		t.Fatalf("insert of an unknown record: %s %v, want imported", out, err)
	}
	list, _ := s.Tickets(ctx)
	if len(list) != 1 || list[0].Number != "INC0010009" || list[0].Title != "Created by phone" || list[0].Priority != "3" {
		t.Fatalf("tickets = %+v, want the imported incident", list)
	}
	out, _ := s.Outbox(ctx, 10)
	if len(out) != 1 || out[0].SysID != ch.SysID || out[0].ExternalID != list[0].ExternalID || len(out[0].Fields) != 0 {
		t.Fatalf("outbox = %+v, want one link change: the new external id with the record's sys_id and no fields", out)
	}
	// Its next version, still without an external id, finds the ticket by sys_id.
	ch.Version, ch.Fields = 1, wire.Fields{"title": "Created by phone", "status": StatusInProgress}
	if out, err := s.ApplyFromServiceNow(ctx, wire.ActionUpdate, ch); err != nil || out != Applied {
		t.Fatalf("update before the link: %s %v, want applied to the imported ticket", out, err)
	}
	list, _ = s.Tickets(ctx)
	if len(list) != 1 || list[0].Status != StatusInProgress {
		t.Fatalf("tickets = %+v, want one, in progress", list)
	}
}

func TestStore_NewDatabaseNeverReusesExternalIDs(t *testing.T) {
	ctx := context.Background()
	a, b := openTestStore(t), openTestStore(t)
	ta, _ := a.Create(ctx, NewTicket{Title: "x"})
	tb, _ := b.Create(ctx, NewTicket{Title: "x"})
	if ta.ExternalID == tb.ExternalID {
		t.Fatalf("two new databases both made %s: a fresh database would write over the incident linked to the old one's ticket", ta.ExternalID)
	}
}
