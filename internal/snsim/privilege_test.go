package snsim

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// TestLeastPrivilege_HiddenTablesAnswerEmptyWithPreACLCount checks what the
// integration user with snc_platform_rest_api_access + itil sees of each
// table, and what grants and a missing itil change: a table it may not read
// answers 200 with no rows while X-Total-Count counts them and Link pages
// through them, a single read 404, a write 403.
func TestLeastPrivilege_HiddenTablesAnswerEmptyWithPreACLCount(t *testing.T) {
	type want struct {
		rows   bool // the list returns rows
		getOne int  // status of GET /{sys_id} of the first row
	}
	tests := []struct {
		name   string
		grants Grants
		acl    ACL
		tables map[string]want
	}{
		{"least privilege", Grants{}, ACL{}, map[string]want{
			"incident": {true, 200}, "sys_journal_field": {true, 200}, "sys_user": {true, 200}, "sys_user_group": {true, 200},
			"sys_dictionary": {false, 404}, "sys_audit_delete": {false, 404},
		}},
		{"dictionary granted", Grants{Dictionary: true}, ACL{}, map[string]want{
			"sys_dictionary": {true, 200}, "sys_audit_delete": {false, 404},
		}},
		{"audit delete granted", Grants{AuditDelete: true}, ACL{}, map[string]want{
			"sys_dictionary": {false, 404}, "sys_audit_delete": {true, 200},
		}},
		{"both granted", Grants{Dictionary: true, AuditDelete: true}, ACL{}, map[string]want{
			"sys_dictionary": {true, 200}, "sys_audit_delete": {true, 200},
		}},
		{"no itil", Grants{}, ACL{NoRoles: true}, map[string]want{
			"incident": {false, 404}, "sys_journal_field": {false, 404}, "sys_user": {true, 200}, "sys_user_group": {true, 200},
			"sys_dictionary": {false, 404},
		}},
	}
	h := newHarness(t, Config{})
	ids := insertN(t, h.sim, 4)
	for _, f := range []map[string]string{{"comments": "hello"}, {"work_notes": "checked"}} {
		if _, err := h.sim.Update("incident", ids[0], f, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids[2:] {
		if err := h.sim.Delete("incident", id, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.sim.SetGrants(tt.grants)
			h.sim.SetACL(tt.acl)
			defer h.sim.SetGrants(Grants{})
			defer h.sim.SetACL(ACL{})
			for table, w := range tt.tables {
				total := h.sim.Count(table)
				if total < 2 {
					t.Fatalf("%s holds %d rows; the test needs at least 2", table, total)
				}
				for _, base := range []string{"/api/now/table/", "/api/now/v1/table/", "/api/now/v2/table/"} {
					r := h.get(base+table, url.Values{"sysparm_limit": {"1"}})
					rows := r.results(t)
					if r.status != 200 || (len(rows) > 0) != w.rows {
						t.Errorf("%s%s: status %d with %d rows, want 200 with rows=%v", base, table, r.status, len(rows), w.rows)
					}
					if got := r.header.Get("X-Total-Count"); got != strconv.Itoa(total) {
						t.Errorf("%s%s: X-Total-Count %q, want %d (rows counted before the ACL)", base, table, got, total)
					}
					if l := r.header.Get("Link"); !strings.Contains(l, `rel="next"`) {
						t.Errorf("%s%s: Link %q has no rel=\"next\"; more rows follow, hidden or not", base, table, l)
					}
				}
				id := h.sim.IDs(table)[0]
				if r := h.get("/api/now/table/"+table+"/"+id, nil); r.status != w.getOne {
					t.Errorf("GET %s/%s: %d %s, want %d", table, id, r.status, r.body, w.getOne)
				}
			}
			if tt.acl.NoRoles {
				r := h.do("PATCH", "/api/now/table/incident/"+ids[1], `{"short_description":"x"}`)
				if r.status != 403 || !strings.Contains(string(r.body), "ACL Exception Update Failed due to security constraints") {
					t.Errorf("write without itil: %d %s, want 403 ACL Exception", r.status, r.body)
				}
				if r := h.do("POST", "/api/now/table/incident", `{"short_description":"x"}`); r.status != 403 {
					t.Errorf("insert without itil: %d %s, want 403", r.status, r.body)
				}
			}
		})
	}
	// Direct test calls stay unrestricted.
	if _, ok := h.sim.Get("sys_audit_delete", h.sim.IDs("sys_audit_delete")[0]); !ok {
		t.Error("Get of a sys_audit_delete row failed; direct calls must not be restricted")
	}
}

// TestLeastPrivilege_JournalFollowsItsRecord: journal entries of a record
// hidden by a row ACL are hidden too.
func TestLeastPrivilege_JournalFollowsItsRecord(t *testing.T) {
	h := newHarness(t, Config{})
	ids := insertN(t, h.sim, 2)
	for _, id := range ids {
		if _, err := h.sim.Update("incident", id, map[string]string{"work_notes": "note of " + id}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	h.sim.SetACL(ACL{HideRow: func(table string, rec Record) bool { return table == "incident" && rec["sys_id"] == ids[0] }})
	r := h.get("/api/now/table/sys_journal_field", nil)
	rows := r.results(t)
	if len(rows) != 1 || rows[0]["element_id"] != ids[1] || r.header.Get("X-Total-Count") != "2" {
		t.Errorf("journal rows %v (X-Total-Count %q), want only the entry of the visible record and a count of 2", rows, r.header.Get("X-Total-Count"))
	}
	if r := h.do(http.MethodGet, "/api/now/table/incident/"+ids[0], ""); r.status != 404 {
		t.Errorf("hidden record: %d, want 404", r.status)
	}
}
