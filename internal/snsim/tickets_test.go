package snsim

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
)

// hrWriter is a harness whose integration user may read and write HR cases.
func hrWriter(t *testing.T, cfg Config) *harness {
	t.Helper()
	cfg.Grants.HRRole = RoleHRCaseWriter
	return newHarness(t, cfg)
}

// TestTickets_StatesAndChoicesServedFromSysChoice: each ticket table's
// states and close choices are sys_choice rows filed under the table, in
// sequence order with their labels, and the Table API's display values use
// the same labels.
func TestTickets_StatesAndChoicesServedFromSysChoice(t *testing.T) {
	h := hrWriter(t, Config{})
	tests := []struct {
		table, element string
		want           []string // value=label in sequence order
	}{
		{"change_request", "state", []string{"-5=New", "-4=Assess", "-3=Authorize", "-2=Scheduled", "-1=Implement", "0=Review", "3=Closed", "4=Canceled"}},
		{"change_request", "close_code", []string{"successful=Successful", "successful_issues=Successful with issues", "unsuccessful=Unsuccessful"}},
		{"change_request", "priority", []string{"1=1 - Critical", "2=2 - High", "3=3 - Moderate", "4=4 - Low"}},
		{"problem", "state", []string{"101=New", "102=Assess", "103=Root Cause Analysis", "104=Fix in Progress", "106=Resolved", "107=Closed"}},
		{"problem", "resolution_code", []string{"fix_applied=Fix Applied", "risk_accepted=Risk Accepted", "duplicate=Duplicate", "canceled=Canceled"}},
		{"sc_req_item", "state", []string{"-5=Pending", "1=Open", "2=Work in Progress", "3=Closed Complete", "4=Closed Incomplete", "7=Closed Skipped"}},
		{"sc_req_item", "stage", []string{"waiting_for_approval=Waiting for Approval", "request_approved=Request Approved", "fulfillment=Fulfillment",
			"delivery=Delivery", "complete=Completed", "Request Cancelled=Request Cancelled"}},
		{"sn_hr_core_case", "state", []string{"1=Draft", "10=Ready", "16=Awaiting Approval", "18=Work in Progress", "20=Awaiting Acceptance",
			"24=Suspended", "3=Closed Complete", "4=Closed Incomplete", "7=Cancelled"}},
		{"incident", "state", []string{"1=New", "2=In Progress", "3=On Hold", "6=Resolved", "7=Closed", "8=Canceled"}},
	}
	for _, tt := range tests {
		r := h.get("/api/now/v2/table/sys_choice", url.Values{
			"sysparm_query":  {"name=" + tt.table + "^element=" + tt.element + "^inactive=false^ORDERBYsequence"},
			"sysparm_fields": {"value,label"},
		})
		var got []string
		for _, row := range r.results(t) {
			got = append(got, fmt.Sprint(row["value"], "=", row["label"]))
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("sys_choice %s.%s\n got  %q\n want %q", tt.table, tt.element, got, tt.want)
		}
	}
	// Display values read the same labels.
	for table, state := range map[string]string{"change_request": "Assess", "problem": "Root Cause Analysis", "sc_req_item": "Work in Progress", "sn_hr_core_case": "Awaiting Acceptance"} {
		value := map[string]string{"change_request": "-4", "problem": "103", "sc_req_item": "2", "sn_hr_core_case": "20"}[table]
		rec, err := h.sim.Insert(table, map[string]string{"short_description": "x", "state": value}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		got := h.get("/api/now/table/"+table+"/"+rec["sys_id"], url.Values{"sysparm_display_value": {"true"}, "sysparm_fields": {"state"}}).result(t)
		if got["state"] != state {
			t.Errorf("%s state %s displays %v, want %q", table, value, got["state"], state)
		}
	}
}

// TestTickets_InsertDefaultsAndDerivedFields: an API insert gets the
// table's number prefix, default state and active; priority is computed
// from impact and urgency where the platform does it (incident, problem) and
// kept as sent elsewhere; mirrors follow the state.
func TestTickets_InsertDefaultsAndDerivedFields(t *testing.T) {
	h := hrWriter(t, Config{Now: newClock().Now})
	tests := []struct {
		table, prefix, state string
		priority             string // after sending impact 1, urgency 2 and priority 4
		mirror               string
	}{
		{"incident", "INC", "1", "2", "incident_state"},
		{"change_request", "CHG", "-5", "4", ""},
		{"problem", "PRB", "101", "2", "problem_state"},
		{"sc_req_item", "RITM", "1", "4", ""},
		{"sn_hr_core_case", "HRC", "1", "4", ""},
	}
	for _, tt := range tests {
		r := h.do("POST", "/api/now/table/"+tt.table, `{"short_description":"New one","impact":"1","urgency":"2","priority":"4"}`)
		if r.status != 201 {
			t.Fatalf("POST %s: %d %s", tt.table, r.status, r.body)
		}
		rec := r.result(t)
		if n, _ := rec["number"].(string); n != tt.prefix+"0010001" {
			t.Errorf("%s number %q, want %s0010001", tt.table, n, tt.prefix)
		}
		if rec["state"] != tt.state || rec["active"] != "true" || rec["priority"] != tt.priority {
			t.Errorf("%s: state %v active %v priority %v; want state %s, active true, priority %s", tt.table, rec["state"], rec["active"], rec["priority"], tt.state, tt.priority)
		}
		if rec["sys_class_name"] != tt.table || rec["opened_at"] != "2026-11-28 10:00:00" || rec["escalation"] != "0" {
			t.Errorf("%s: sys_class_name %v opened_at %v escalation %v", tt.table, rec["sys_class_name"], rec["opened_at"], rec["escalation"])
		}
		if tt.mirror != "" && rec[tt.mirror] != tt.state {
			t.Errorf("%s.%s = %v, want it to mirror state %s", tt.table, tt.mirror, rec[tt.mirror], tt.state)
		}
	}
	if rec, _ := h.sim.Insert("change_request", map[string]string{"short_description": "x"}, "beth.anglin"); rec["type"] != "normal" || rec["category"] != "other" {
		t.Errorf("change_request defaults: type %q category %q, want normal and other", rec["type"], rec["category"])
	}
}

// TestTickets_CloseDataPolicies: each table refuses a close without what its
// data policy needs, naming only the missing fields (problem: by resolution
// code); a close that has them sets active false and stamps closed_at (and
// resolved_at for a resolve).
func TestTickets_CloseDataPolicies(t *testing.T) {
	const policy = "Data Policy Exception: \n\tThe following fields are mandatory: "
	tests := []struct {
		name, table, patch string
		status             int
		detail             string // for refusals
		active             string // after an accepted write
		closed, resolved   bool   // closed_at / resolved_at stamped
	}{
		{"change closed without code or notes", "change_request", `{"state":"3"}`, 403, policy + "Close code, Close notes", "", false, false},
		{"change closed with an incident's code", "change_request", `{"state":"3","close_code":"Solution provided","close_notes":"done"}`, 403, policy + "Close code", "", false, false},
		{"change closed", "change_request", `{"state":"3","close_code":"successful","close_notes":"done"}`, 200, "", "false", true, false},
		{"change canceled needs nothing", "change_request", `{"state":"4"}`, 200, "", "false", true, false},
		{"change to review", "change_request", `{"state":"0"}`, 200, "", "true", false, false},
		{"problem resolved without code", "problem", `{"state":"106"}`, 403, policy + "Resolution code", "", false, false},
		{"problem fix applied without notes", "problem", `{"state":"106","resolution_code":"fix_applied"}`, 403, policy + "Cause notes, Fix notes", "", false, false},
		{"problem risk accepted", "problem", `{"state":"107","resolution_code":"risk_accepted","cause_notes":"c"}`, 403, policy + "Close notes", "", false, false},
		{"problem canceled without notes", "problem", `{"state":"107","resolution_code":"canceled"}`, 403, policy + "Close notes", "", false, false},
		{"problem duplicate without original", "problem", `{"state":"106","resolution_code":"duplicate"}`, 403, policy + "Duplicate of", "", false, false},
		{"problem resolved", "problem", `{"state":"106","resolution_code":"fix_applied","cause_notes":"c","fix_notes":"f"}`, 200, "", "true", false, true},
		{"problem closed", "problem", `{"state":"107","resolution_code":"canceled","close_notes":"went away"}`, 200, "", "false", true, false},
		{"requested item closed skipped", "sc_req_item", `{"state":"7"}`, 200, "", "false", true, false},
		{"requested item closed complete", "sc_req_item", `{"state":"3"}`, 200, "", "false", true, false},
		{"HR case closed complete", "sn_hr_core_case", `{"state":"3"}`, 200, "", "false", true, false},
		{"HR case suspended", "sn_hr_core_case", `{"state":"24"}`, 200, "", "true", false, false},
	}
	h := hrWriter(t, Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := h.sim.Insert(tt.table, map[string]string{"short_description": tt.name}, "beth.anglin")
			if err != nil {
				t.Fatal(err)
			}
			r := h.do("PATCH", "/api/now/table/"+tt.table+"/"+rec["sys_id"], tt.patch)
			if r.status != tt.status {
				t.Fatalf("PATCH %s: %d %s, want %d", tt.patch, r.status, r.body, tt.status)
			}
			if tt.status != 200 {
				if d := errorDetail(t, r); d != tt.detail {
					t.Errorf("detail %q, want %q", d, tt.detail)
				}
				if got, _ := h.sim.Get(tt.table, rec["sys_id"]); got["sys_mod_count"] != "0" {
					t.Errorf("a refused write changed the record: %v", got)
				}
				return
			}
			got := r.result(t)
			if got["active"] != tt.active || (got["closed_at"] != "") != tt.closed || (got["closed_by"] != "") != tt.closed {
				t.Errorf("active %v closed_at %q closed_by %v; want active %s, closed %v", got["active"], got["closed_at"], got["closed_by"], tt.active, tt.closed)
			}
			if resolved := got["resolved_at"] != nil && got["resolved_at"] != ""; resolved != tt.resolved {
				t.Errorf("resolved_at %v, want stamped %v", got["resolved_at"], tt.resolved)
			}
		})
	}
	// The policy judges the record as the write leaves it: clearing a
	// needed field of a closed change is refused too.
	rec, _ := h.sim.Insert("change_request", map[string]string{"short_description": "x", "state": "3", "close_code": "unsuccessful", "close_notes": "rolled back"}, "beth.anglin")
	if r := h.do("PATCH", "/api/now/table/change_request/"+rec["sys_id"], `{"close_notes":""}`); r.status != 403 || errorDetail(t, r) != policy+"Close notes" {
		t.Errorf("clearing close_notes of a closed change: %d %s", r.status, r.body)
	}
	// A duplicate problem names its original.
	orig, _ := h.sim.Insert("problem", map[string]string{"short_description": "original"}, "beth.anglin")
	dup, _ := h.sim.Insert("problem", map[string]string{"short_description": "dup"}, "beth.anglin")
	if r := h.do("PATCH", "/api/now/table/problem/"+dup["sys_id"], `{"state":"106","resolution_code":"duplicate","duplicate_of":"`+orig["sys_id"]+`"}`); r.status != 200 {
		t.Errorf("resolving a duplicate with duplicate_of: %d %s", r.status, r.body)
	}
	// Direct test writes follow the same policy.
	if _, err := h.sim.Update("change_request", rec["sys_id"], map[string]string{"close_code": ""}, "beth.anglin"); err == nil || !strings.Contains(err.Error(), "Close code") {
		t.Errorf("direct write clearing close_code: %v, want the data policy", err)
	}
}

// TestTickets_HRCasesNeedAnHRRole: the least-privilege integration user
// (itil) sees HR cases as a hidden table (200 with no rows while
// X-Total-Count counts them, single reads 404, writes 403, their journal
// entries hidden); case_reader reads but may not write; case_writer and
// admin read and write; without itil nothing changes for HR.
func TestTickets_HRCasesNeedAnHRRole(t *testing.T) {
	h := newHarness(t, Config{})
	var ids []string
	for i := range 3 {
		rec, err := h.sim.Insert("sn_hr_core_case", map[string]string{"short_description": fmt.Sprint("case ", i), "work_notes": "sensitive"}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	if _, err := h.sim.Insert("incident", map[string]string{"short_description": "visible", "work_notes": "fine"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		role          string
		noRoles       bool
		read, write   bool
		journalOfCase int // sys_journal_field rows of HR cases returned
	}{
		{"", false, false, false, 0},
		{RoleHRCaseReader, false, true, false, 3},
		{RoleHRCaseWriter, false, true, true, 3},
		{RoleHRAdmin, false, true, true, 3},
		{RoleHRCaseWriter, true, false, false, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("role %q noRoles %v", tt.role, tt.noRoles), func(t *testing.T) {
			if err := h.sim.SetGrants(Grants{HRRole: tt.role}); err != nil {
				t.Fatal(err)
			}
			h.sim.SetACL(ACL{NoRoles: tt.noRoles})
			defer h.sim.SetACL(ACL{})
			r := h.get("/api/now/v2/table/sn_hr_core_case", url.Values{"sysparm_limit": {"2"}})
			total := strconv.Itoa(h.sim.Count("sn_hr_core_case"))
			if r.status != 200 || (len(r.results(t)) > 0) != tt.read || r.header.Get("X-Total-Count") != total {
				t.Errorf("list: %d with %d rows, X-Total-Count %q; want 200, rows=%v, count %s (counted before the ACL)", r.status, len(r.results(t)), r.header.Get("X-Total-Count"), tt.read, total)
			}
			if !strings.Contains(r.header.Get("Link"), `rel="next"`) {
				t.Errorf("Link %q has no next page though a row follows, hidden or not", r.header.Get("Link"))
			}
			want := 404
			if tt.read {
				want = 200
			}
			if r := h.get("/api/now/table/sn_hr_core_case/"+ids[0], nil); r.status != want {
				t.Errorf("GET one: %d, want %d", r.status, want)
			}
			wantWrite := 403
			if tt.write {
				wantWrite = 200
			}
			r = h.do("PATCH", "/api/now/table/sn_hr_core_case/"+ids[1], `{"state":"10"}`)
			if r.status != wantWrite {
				t.Errorf("PATCH: %d %s, want %d", r.status, r.body, wantWrite)
			}
			if wantWrite == 403 && !strings.Contains(string(r.body), "ACL Exception Update Failed due to security constraints") {
				t.Errorf("refused PATCH body %s, want the ACL exception", r.body)
			}
			if r := h.do("POST", "/api/now/table/sn_hr_core_case", `{"short_description":"new"}`); (r.status == 201) != tt.write {
				t.Errorf("POST: %d %s, want created=%v", r.status, r.body, tt.write)
			}
			rows := h.get("/api/now/table/sys_journal_field", url.Values{"sysparm_query": {"name=sn_hr_core_case"}}).results(t)
			if len(rows) != tt.journalOfCase {
				t.Errorf("journal entries of HR cases: %d, want %d", len(rows), tt.journalOfCase)
			}
			if inc := h.get("/api/now/table/sys_journal_field", url.Values{"sysparm_query": {"name=incident"}}).results(t); len(inc) != 1 && !tt.noRoles {
				t.Errorf("journal entries of incidents: %d, want 1 whatever the HR role", len(inc))
			}
		})
	}
	if err := h.sim.SetGrants(Grants{HRRole: "hr_admin"}); err == nil {
		t.Error("SetGrants accepted an unknown HR role")
	}
	if err := (Config{Grants: Grants{HRRole: "sn_hr_core.manager"}}).Validate(); err == nil || !strings.Contains(err.Error(), RoleHRCaseWriter) {
		t.Errorf("Config.Validate with an unknown HR role: %v, want an error naming the valid roles", err)
	}
	// Direct test calls are never restricted.
	if _, ok := h.sim.Get("sn_hr_core_case", ids[0]); !ok {
		t.Error("a direct Get of an HR case failed")
	}
}

// TestTickets_WebhooksPerTable: the business rules fire for every shipped
// table with that table's default field list, and a Fields map without a
// table sends nothing for it (nowbridge.tables not listing it).
func TestTickets_WebhooksPerTable(t *testing.T) {
	rc := newReceiver(t)
	h := hrWriter(t, Config{Webhooks: []WebhookTarget{rc.target()}})
	for _, table := range TicketTables() {
		r := h.do("POST", "/api/now/table/"+table, `{"short_description":"via API","comments":"first"}`)
		if r.status != 201 {
			t.Fatalf("POST %s: %d %s", table, r.status, r.body)
		}
	}
	wait(t, h.sim)
	evs, _, _ := rc.events()
	if len(evs) != len(TicketTables()) {
		t.Fatalf("%d webhooks, want one per table", len(evs))
	}
	for _, ev := range evs {
		want := DefaultWebhookFields[ev.Table]
		if len(ev.Record) != len(want) || ev.Action != "insert" || !strings.Contains(ev.Record["comments"], "first") {
			t.Errorf("%s: record %v, want exactly the fields %v with the comment", ev.Table, ev.Record, want)
		}
		for _, f := range want {
			if _, ok := ev.Record[f]; !ok {
				t.Errorf("%s: record lacks %s", ev.Table, f)
			}
		}
	}
	if err := h.sim.SetWebhookOptions(WebhookOptions{Fields: map[string][]string{"change_request": {"number", "state"}}}); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"incident", "change_request"} {
		if _, err := h.sim.Insert(table, map[string]string{"short_description": "second"}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	wait(t, h.sim)
	evs, _, _ = rc.events()
	if last := evs[len(evs)-1]; len(evs) != len(TicketTables())+1 || last.Table != "change_request" || len(last.Record) != 2 {
		t.Errorf("with only change_request configured: %d webhooks, last %+v; want one more, for change_request with its 2 fields", len(evs), last)
	}
}

// TestTickets_DefaultWebhookFieldsExist: every field the shipped business
// rules send by default is a field of its table (the script would warn and
// skip one that is not).
func TestTickets_DefaultWebhookFieldsExist(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	if len(DefaultWebhookFields) != len(TicketTables()) {
		t.Errorf("default field lists for %d tables, simulated ticket tables %v", len(DefaultWebhookFields), TicketTables())
	}
	for table, fields := range DefaultWebhookFields {
		tb := s.tables[table]
		if tb == nil {
			t.Errorf("the business rules ship a field list for %s, which the simulator does not serve", table)
			continue
		}
		for _, f := range fields {
			if _, _, ok := tb.s.field(f); !ok {
				t.Errorf("%s has no field %s (in its default webhook field list)", table, f)
			}
		}
	}
}

// TestTickets_DictionaryRowsOnTheirTables: with the dictionary granted, a
// table's own fields are its rows and inherited ones are task's, once.
func TestTickets_DictionaryRowsOnTheirTables(t *testing.T) {
	h := newHarness(t, Config{Grants: Grants{Dictionary: true}})
	elements := func(q string) map[string]int {
		out := map[string]int{}
		for _, r := range h.get("/api/now/table/sys_dictionary", url.Values{"sysparm_query": {q}, "sysparm_fields": {"element"}}).results(t) {
			out[r["element"].(string)]++
		}
		return out
	}
	own := map[string][]string{
		"change_request": {"", "close_code", "type", "risk"}, "problem": {"", "resolution_code", "cause_notes", "fix_notes", "duplicate_of"},
		"sc_req_item": {"", "stage", "quantity", "requested_for"}, "sn_hr_core_case": {"", "opened_for", "subject_person"},
	}
	for table, fs := range own {
		got := elements("name=" + table)
		for _, f := range fs {
			if got[f] != 1 {
				t.Errorf("sys_dictionary %s.%s: %d rows, want 1", table, f, got[f])
			}
		}
		if got["state"] != 0 || got["number"] != 0 {
			t.Errorf("%s lists task's fields as its own: %v", table, got)
		}
	}
	task := elements("name=task")
	for _, f := range []string{"state", "number", "close_notes", "comments", "correlation_id"} {
		if task[f] != 1 {
			t.Errorf("task.%s: %d dictionary rows, want exactly 1", f, task[f])
		}
	}
}

// TestTickets_SeedEveryTable: seeded records of each table are ones the
// platform would hold: the table's number, states from its choice list,
// active matching the state, the data policy satisfied, priority derived
// where the platform derives it, ~PerSecond per second.
func TestTickets_SeedEveryTable(t *testing.T) {
	s := New(Config{Seed: 7})
	defer s.Close()
	end := fixedNow.Add(-time.Minute)
	for _, table := range TicketTables() {
		if err := s.SeedTable(table, 400, SeedOptions{PerSecond: 40, End: end}); err != nil {
			t.Fatalf("seed %s: %v", table, err)
		}
		tb := s.tables[table]
		tt := tb.s.rules
		if got := s.Count(table); got != 400 {
			t.Fatalf("%s holds %d records, want 400", table, got)
		}
		states := map[string]int{}
		seconds := map[string]bool{}
		for _, r := range tb.index {
			rec := tb.toRecord(r)
			states[rec["state"]]++
			seconds[rec["sys_updated_on"]] = true
			if !strings.HasPrefix(rec["number"], tt.prefix) || !events.ValidSysID(rec["sys_id"]) || rec["sys_class_name"] != table {
				t.Fatalf("%s record %v: number, sys_id or class wrong", table, rec)
			}
			f, _, _ := tb.s.field("state")
			if !f.activeChoice(rec["state"]) {
				t.Fatalf("%s record in state %q, not one of its choices", table, rec["state"])
			}
			if wantActive := strconv.FormatBool(!slices.Contains(tt.inactive, rec["state"])); rec["active"] != wantActive {
				t.Fatalf("%s record in state %s has active %s, want %s", table, rec["state"], rec["active"], wantActive)
			}
			for _, p := range tt.policies {
				if m := p.missing(tb, r); len(m) > 0 {
					t.Fatalf("%s record in state %s breaks its data policy, missing %v: %v", table, rec["state"], m, rec)
				}
			}
			if tt.priorityMatrix && rec["priority"] != priorityMatrix[[2]string{rec["impact"], rec["urgency"]}] {
				t.Fatalf("%s priority %s for impact %s urgency %s", table, rec["priority"], rec["impact"], rec["urgency"])
			}
		}
		if len(states) < 4 || len(seconds) != 10 || tb.index[len(tb.index)-1].updated(tb) != end.UTC().Format(snTimeLayout) {
			t.Errorf("%s: states %v over %d seconds ending %s; want several states over 10 seconds ending %s", table, states, len(seconds),
				tb.index[len(tb.index)-1].updated(tb), end.UTC().Format(snTimeLayout))
		}
	}
	if err := s.SeedTable("sys_user", 1, SeedOptions{}); err == nil || !strings.Contains(err.Error(), "change_request") {
		t.Errorf("seeding sys_user: %v, want an error listing the seedable tables", err)
	}
}

// TestTickets_ShippedMappingsMatchTheTables cross-checks the bridge's
// shipped mapping of every ticket table against the simulated table: each
// field it maps, its link, close and notes fields exist; every ServiceNow
// value of a choice field's value map is one of its choices; the close and
// delete states are states of the table, and the close code field is the
// one the table's close policy names.
func TestTickets_ShippedMappingsMatchTheTables(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	if got := mapping.Shipped(); !slices.Equal(got, slices.Sorted(slices.Values(TicketTables()))) {
		t.Errorf("the bridge ships mappings for %v, the simulator serves %v", got, TicketTables())
	}
	for _, table := range TicketTables() {
		set, err := mapping.Load(nil, []string{table}, nil)
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		m, _ := set.ForTable(table)
		tb := s.tables[table]
		has := func(what, name string) *field {
			f, _, ok := tb.s.field(name)
			if !ok {
				t.Errorf("%s: the mapping's %s %q is not a field of the table", table, what, name)
			}
			return f
		}
		has("link field", m.LinkField)
		has("link display field", m.LinkDisplayField)
		for _, mf := range m.Fields {
			f := has("field", mf.ServiceNow)
			if f == nil || f.choices == nil {
				continue
			}
			for saas, v := range mf.Values {
				if !f.activeChoice(v) {
					t.Errorf("%s.%s: the mapping maps %s to %q, not one of the table's choices", table, mf.ServiceNow, saas, v)
				}
			}
		}
		state, _, _ := tb.s.field("state")
		if c := m.Close; c != nil {
			has("close code field", c.CodeField)
			for _, n := range c.AllNotes() {
				has("notes field", n)
			}
			for _, st := range c.States {
				if !state.activeChoice(st) {
					t.Errorf("%s: close state %q is not a state of the table", table, st)
				}
			}
			var policyStates []string
			for _, p := range tb.s.rules.policies {
				policyStates = append(policyStates, p.states...)
			}
			if !slices.Equal(slices.Sorted(slices.Values(c.States)), slices.Sorted(slices.Values(policyStates))) {
				t.Errorf("%s: the mapping closes in %v, the table's data policy applies in %v", table, c.States, policyStates)
			}
		} else if len(tb.s.rules.policies) > 0 {
			t.Errorf("%s: the table has a close data policy, the mapping no close rule", table)
		}
		if d := m.Delete; d.State != "" && !state.activeChoice(d.State) {
			t.Errorf("%s: the delete state %q is not a state of the table", table, d.State)
		}
	}
}

// TestTickets_ShippedDeleteAndCloseWritesPass: what the writeback sends to
// close a record (the mapping's preferred code and the notes it names for
// that code) and to resolve an app delete (its delete state and code) is
// accepted by the table's data policy.
func TestTickets_ShippedDeleteAndCloseWritesPass(t *testing.T) {
	h := hrWriter(t, Config{})
	for _, table := range TicketTables() {
		set, err := mapping.Load(nil, []string{table}, nil)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := set.ForTable(table)
		writes := map[string]map[string]string{}
		if c := m.Close; c != nil {
			code := c.PreferredCodes[0]
			w := map[string]string{"state": c.States[0], c.CodeField: code}
			for _, n := range c.NotesFor(code) {
				w[n] = "closed by the app"
			}
			writes["close"] = w
		}
		if d := m.Delete; d.Mode == mapping.DeleteResolve {
			w := map[string]string{"state": d.State}
			if c := m.Close; c != nil && c.Closes(d.State) {
				code := d.CloseCode
				if code == "" {
					code = c.PreferredCodes[0]
				}
				w[c.CodeField] = code
				for _, n := range c.NotesFor(code) {
					w[n] = "deleted in the app"
				}
			}
			writes["delete"] = w
		}
		for what, w := range writes {
			rec, err := h.sim.Insert(table, map[string]string{"short_description": what}, "beth.anglin")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.sim.Update(table, rec["sys_id"], w, DefaultAppUser); err != nil {
				t.Errorf("%s: the writeback's %s write %v is refused: %v", table, what, w, err)
			}
		}
	}
}
