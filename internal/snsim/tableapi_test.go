package snsim

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func insertN(t *testing.T, s *Server, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		r, err := s.InsertNoWorkflow("incident", map[string]string{"short_description": fmt.Sprintf("rec %d", i)}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r["sys_id"])
	}
	return ids
}

func TestList_LinkAndTotalCountLikeRecordedResponses(t *testing.T) {
	h := newHarness(t, Config{Now: newClock().Now})
	insertN(t, h.sim, 5)
	base := h.srv.URL + "/api/now/table/incident?sysparm_limit=2&sysparm_offset="
	tail := "&sysparm_query=ORDERBYsys_id"
	tests := []struct {
		offset string
		rows   int
		link   string
	}{
		{"0", 2, `<` + base + `0` + tail + `>;rel="first",<` + base + `-2` + tail + `>;rel="prev",<` + base + `2` + tail + `>;rel="next",<` + base + `3` + tail + `>;rel="last"`},
		{"2", 2, `<` + base + `0` + tail + `>;rel="first",<` + base + `0` + tail + `>;rel="prev",<` + base + `4` + tail + `>;rel="next",<` + base + `3` + tail + `>;rel="last"`},
		{"4", 1, `<` + base + `0` + tail + `>;rel="first",<` + base + `2` + tail + `>;rel="prev",<` + base + `3` + tail + `>;rel="last"`},
	}
	for _, tt := range tests {
		r := h.get("/api/now/table/incident", url.Values{"sysparm_limit": {"2"}, "sysparm_offset": {tt.offset}, "sysparm_query": {"ORDERBYsys_id"}})
		if r.status != 200 {
			t.Fatalf("offset %s: status %d", tt.offset, r.status)
		}
		if got := r.header.Get("X-Total-Count"); got != "5" {
			t.Errorf("offset %s: X-Total-Count %q, want 5", tt.offset, got)
		}
		if got := r.header.Get("Link"); got != tt.link {
			t.Errorf("offset %s: Link\n got  %s\n want %s", tt.offset, got, tt.link)
		}
		if n := len(r.results(t)); n != tt.rows {
			t.Errorf("offset %s: %d rows, want %d", tt.offset, n, tt.rows)
		}
	}
	r := h.get("/api/now/table/incident", url.Values{"sysparm_limit": {"2"}, "sysparm_no_count": {"true"}, "sysparm_suppress_pagination_header": {"true"}})
	if r.header.Get("X-Total-Count") != "" || r.header.Get("Link") != "" {
		t.Errorf("no_count + suppress_pagination_header: got X-Total-Count %q, Link %q; want neither", r.header.Get("X-Total-Count"), r.header.Get("Link"))
	}
	r = h.get("/api/now/table/incident", url.Values{"sysparm_limit": {"2"}, "sysparm_no_count": {"true"}})
	if l := r.header.Get("Link"); !strings.Contains(l, `rel="next"`) || strings.Contains(l, `rel="last"`) {
		t.Errorf("no_count: Link %q, want next (more rows follow) and no last (no count)", l)
	}
}

func TestList_V1NoMatchIs404_V2AndUnversionedAreEmpty(t *testing.T) {
	h := newHarness(t, Config{})
	q := url.Values{"sysparm_query": {"number=INC9999999"}}
	r := h.get("/api/now/v1/table/incident", q)
	if r.status != 404 || r.json(t)["status"] != "failure" {
		t.Errorf("v1 without matches: %d %s, want 404 failure envelope", r.status, r.body)
	}
	for _, path := range []string{"/api/now/v2/table/incident", "/api/now/table/incident"} {
		r = h.get(path, q)
		if r.status != 200 || string(r.body) != `{"result":[]}` {
			t.Errorf("%s without matches: %d %s, want 200 {\"result\":[]} (unversioned is the latest version)", path, r.status, r.body)
		}
	}
}

// TestList_ReferenceLinksCarryTheRequestsVersion: a reference link and the
// Location of a created record use the version the request used.
func TestList_ReferenceLinksCarryTheRequestsVersion(t *testing.T) {
	h := newHarness(t, Config{})
	beth := stableID("sys_user", "beth.anglin")
	rec, err := h.sim.Insert("incident", map[string]string{"short_description": "x", "caller_id": beth}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	for _, base := range []string{"/api/now/table", "/api/now/v1/table", "/api/now/v2/table"} {
		want := h.srv.URL + base + "/sys_user/" + beth
		got := h.get(base+"/incident/"+rec["sys_id"], url.Values{"sysparm_fields": {"caller_id"}}).result(t)
		if link := got["caller_id"].(map[string]any)["link"]; link != want {
			t.Errorf("GET %s: caller_id link %v, want %s", base, link, want)
		}
		rows := h.get(base+"/incident", url.Values{"sysparm_query": {"sys_id=" + rec["sys_id"]}, "sysparm_fields": {"caller_id"}, "sysparm_display_value": {"all"}}).results(t)
		if link := rows[0]["caller_id"].(map[string]any)["link"]; link != want {
			t.Errorf("list %s: caller_id link %v, want %s", base, link, want)
		}
		r := h.do("POST", base+"/incident", `{"short_description":"y"}`)
		if loc := r.header.Get("Location"); !strings.HasPrefix(loc, h.srv.URL+base+"/incident/") {
			t.Errorf("POST %s: Location %q, want it under %s", base, loc, h.srv.URL+base)
		}
	}
}

func TestTable_Errors(t *testing.T) {
	h := newHarness(t, Config{})
	ids := insertN(t, h.sim, 1)
	tests := []struct {
		name, method, path, body string
		status                   int
		message                  string
		detail                   any // a string, or nil for JSON null
	}{
		{"unknown table", "GET", "/api/now/table/incidentx", "", 400, "Invalid table incidentx", nil},
		{"not a resource", "GET", "/api/now/tables/incident", "", 400, "Requested URI does not represent any resource", nil},
		{"invalid JSON", "POST", "/api/now/table/incident", `{"short_description":`, 400, "Exception while reading request", "The payload is not valid JSON."},
		{"missing record", "GET", "/api/now/table/incident/" + strings.Repeat("0", 32), "", 404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"},
		{"patch missing record", "PATCH", "/api/now/table/incident/" + strings.Repeat("0", 32), `{}`, 404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"},
		{"resolve without close fields", "PATCH", "/api/now/table/incident/" + ids[0], `{"state":"6"}`, 403, "Operation Failed", "Data Policy Exception: \n\tThe following fields are mandatory: Resolution code, Resolution notes"},
		{"write a system table", "POST", "/api/now/table/sys_journal_field", `{}`, 403, "Operation Failed", "ACL Exception Update Failed due to security constraints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do(tt.method, tt.path, tt.body)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			e := r.json(t)
			em, _ := e["error"].(map[string]any)
			if e["status"] != "failure" || em["message"] != tt.message || em["detail"] != tt.detail {
				t.Errorf("body %s, want message %q detail %#v status failure", r.body, tt.message, tt.detail)
			}
		})
	}
}

func TestWrite_SystemFieldsIgnoredAndModCount(t *testing.T) {
	clk := newClock()
	h := newHarness(t, Config{Now: clk.Now})
	r := h.do("POST", "/api/now/table/incident", `{"short_description":"Email down","sys_id":"`+strings.Repeat("a", 32)+`","sys_mod_count":"7","sys_updated_by":"mallory","impact":1,"urgency":1,"priority":"5"}`)
	if r.status != 201 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	rec := r.result(t)
	id := rec["sys_id"].(string)
	if id == strings.Repeat("a", 32) || rec["sys_mod_count"] != "0" || rec["sys_updated_by"] != DefaultAppUser {
		t.Errorf("system fields were taken from the request: sys_id %v sys_mod_count %v sys_updated_by %v", id, rec["sys_mod_count"], rec["sys_updated_by"])
	}
	if loc := r.header.Get("Location"); loc != h.srv.URL+"/api/now/table/incident/"+id {
		t.Errorf("Location %q", loc)
	}
	if rec["priority"] != "1" || rec["number"] != "INC0010001" || rec["sys_updated_on"] != "2026-11-28 10:00:00" || rec["active"] != "true" {
		t.Errorf("insert: priority %v number %v sys_updated_on %v active %v; want 1 (computed) INC0010001 2026-11-28 10:00:00 true",
			rec["priority"], rec["number"], rec["sys_updated_on"], rec["active"])
	}
	clk.Add(1500 * time.Millisecond)
	r = h.do("PATCH", "/api/now/table/incident/"+id, `{"urgency":"3"}`)
	rec = r.result(t)
	if r.status != 200 || rec["sys_mod_count"] != "1" || rec["priority"] != "3" || rec["short_description"] != "Email down" || rec["sys_updated_on"] != "2026-11-28 10:00:01" {
		t.Errorf("PATCH urgency: %d mod %v priority %v short_description %v updated %v", r.status, rec["sys_mod_count"], rec["priority"], rec["short_description"], rec["sys_updated_on"])
	}
	r = h.do("PUT", "/api/now/table/incident/"+id, `{"urgency":"3"}`)
	if rec = r.result(t); rec["sys_mod_count"] != "1" {
		t.Errorf("an update that changes nothing bumped sys_mod_count to %v", rec["sys_mod_count"])
	}
	for _, c := range []struct{ impact, urgency, want string }{{"1", "1", "1"}, {"1", "2", "2"}, {"2", "1", "2"}, {"1", "3", "3"}, {"2", "2", "3"}, {"3", "1", "3"}, {"2", "3", "4"}, {"3", "2", "4"}, {"3", "3", "5"}} {
		rec := h.do("PATCH", "/api/now/table/incident/"+id, `{"impact":"`+c.impact+`","urgency":"`+c.urgency+`","priority":"1"}`).result(t)
		if rec["priority"] != c.want {
			t.Errorf("impact %s urgency %s: priority %v, want %s", c.impact, c.urgency, rec["priority"], c.want)
		}
	}
	rec = h.do("PATCH", "/api/now/table/incident/"+id, `{"state":"6","close_code":"Solution provided","close_notes":"done"}`).result(t)
	if rec["state"] != "6" || rec["active"] != "true" || rec["resolved_at"] == "" {
		t.Errorf("resolve: state %v active %v resolved_at %v", rec["state"], rec["active"], rec["resolved_at"])
	}
	rec = h.do("PATCH", "/api/now/table/incident/"+id, `{"state":"7"}`).result(t)
	if rec["active"] != "false" {
		t.Errorf("closed incident has active %v, want \"false\"", rec["active"])
	}
	if r := h.do("DELETE", "/api/now/table/incident/"+id, ""); r.status != 204 || len(r.body) != 0 {
		t.Errorf("DELETE: %d %q, want 204 with an empty body", r.status, r.body)
	}
	h.sim.SetGrants(Grants{AuditDelete: true})
	audit := h.get("/api/now/table/sys_audit_delete", url.Values{"sysparm_query": {"tablename=incident^documentkey=" + id}}).results(t)
	if len(audit) != 1 || !strings.Contains(audit[0]["payload"].(string), "<number>INC0010001</number>") {
		t.Errorf("sys_audit_delete rows for the deleted incident: %v", audit)
	}
}

func TestJournal_AppendsEntriesReadableThreeWays(t *testing.T) {
	clk := newClock()
	h := newHarness(t, Config{Now: clk.Now})
	rec, err := h.sim.Insert("incident", map[string]string{"short_description": "x", "comments": "first"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	id := rec["sys_id"]
	clk.Add(time.Second)
	h.do("PATCH", "/api/now/table/incident/"+id, `{"comments":"second","work_notes":"internal"}`)
	raw := h.get("/api/now/table/incident/"+id, nil).result(t)
	if raw["comments"] != "" || raw["work_notes"] != "" || raw["sys_mod_count"] != "1" {
		t.Errorf("raw read: comments %q work_notes %q mod %v; want empty journal fields and mod 1", raw["comments"], raw["work_notes"], raw["sys_mod_count"])
	}
	disp := h.get("/api/now/table/incident/"+id, url.Values{"sysparm_display_value": {"true"}, "sysparm_fields": {"comments,work_notes"}}).result(t)
	wantC := "2026-11-28 10:00:01 - Nowbridge Integration (Additional comments)\nsecond\n\n2026-11-28 10:00:00 - Beth Anglin (Additional comments)\nfirst\n\n"
	if disp["comments"] != wantC {
		t.Errorf("display comments\n got  %q\n want %q", disp["comments"], wantC)
	}
	if disp["work_notes"] != "2026-11-28 10:00:01 - Nowbridge Integration (Work notes)\ninternal\n\n" {
		t.Errorf("display work_notes %q", disp["work_notes"])
	}
	rows := h.get("/api/now/table/sys_journal_field", url.Values{"sysparm_query": {"element_id=" + id + "^element=comments^ORDERBYsys_created_on"}}).results(t)
	if len(rows) != 2 || rows[0]["value"] != "first" || rows[1]["value"] != "second" || rows[1]["sys_created_by"] != DefaultAppUser {
		t.Errorf("sys_journal_field rows: %v", rows)
	}
	if got := h.sim.Journal(id, ""); len(got) != 3 {
		t.Errorf("Journal: %d entries, want 3", len(got))
	}
}

func TestList_ACLHidesRowsAfterTheLimit(t *testing.T) {
	h := newHarness(t, Config{Now: newClock().Now})
	ids := insertN(t, h.sim, 6)
	hidden := map[string]bool{}
	// Hide the first page entirely and one row of the second.
	q := url.Values{"sysparm_query": {"ORDERBYsys_id"}, "sysparm_limit": {"2"}}
	first := h.get("/api/now/table/incident", q).results(t)
	for _, r := range first {
		hidden[r["sys_id"].(string)] = true
	}
	q.Set("sysparm_offset", "2")
	hidden[h.get("/api/now/table/incident", q).results(t)[0]["sys_id"].(string)] = true
	h.sim.SetACL(ACL{HideRow: func(_ string, rec Record) bool { return hidden[rec["sys_id"]] }})

	seen := 0
	for off := 0; off < 6; off += 2 {
		q.Set("sysparm_offset", strconv.Itoa(off))
		r := h.get("/api/now/table/incident", q)
		rows := r.results(t)
		if r.status != 200 || r.header.Get("X-Total-Count") != "6" {
			t.Errorf("offset %d: status %d X-Total-Count %q, want 200 and 6 (hidden rows counted)", off, r.status, r.header.Get("X-Total-Count"))
		}
		if off < 4 && !strings.Contains(r.header.Get("Link"), `rel="next"`) {
			t.Errorf("offset %d: short page without rel=next; more rows follow", off)
		}
		want := map[int]int{0: 0, 2: 1, 4: 2}[off]
		if len(rows) != want {
			t.Errorf("offset %d: %d rows, want %d (ACL applies after the limit)", off, len(rows), want)
		}
		seen += len(rows)
	}
	if seen != len(ids)-3 {
		t.Errorf("saw %d rows in total, want %d", seen, len(ids)-3)
	}
}

func TestACL_Modes(t *testing.T) {
	h := newHarness(t, Config{})
	id := insertN(t, h.sim, 1)[0]
	h.sim.SetACL(ACL{NoRoles: true})
	if r := h.get("/api/now/table/incident", nil); r.status != 200 || string(r.body) != `{"result":[]}` || r.header.Get("X-Total-Count") != "1" {
		t.Errorf("no roles list: %d X-Total-Count %q %s, want 200 [] with the hidden row counted", r.status, r.header.Get("X-Total-Count"), r.body)
	}
	if r := h.do("PATCH", "/api/now/table/incident/"+id, `{"state":"2"}`); r.status != 403 || !strings.Contains(string(r.body), "ACL Exception Update Failed due to security constraints") {
		t.Errorf("no roles write: %d %s", r.status, r.body)
	}
	h.sim.SetACL(ACL{DenyWrites: true})
	if r := h.do("POST", "/api/now/table/incident", `{}`); r.status != 403 {
		t.Errorf("deny writes POST: %d", r.status)
	}
	h.sim.SetACL(ACL{HiddenFields: map[string][]string{"incident": {"description", "caller_id"}}})
	rec := h.get("/api/now/table/incident/"+id, url.Values{"sysparm_fields": {"number,description"}}).result(t)
	if _, ok := rec["description"]; ok || rec["number"] == nil {
		t.Errorf("hidden field returned: %v", rec)
	}
	if r := h.get("/api/now/table/incident", url.Values{"sysparm_query": {"descriptionLIKEx"}}); r.status != 403 || !strings.Contains(string(r.body), "Insufficient rights to query records") {
		t.Errorf("query on a hidden field: %d %s, want 403 Insufficient rights to query records", r.status, r.body)
	}
}

func TestDictionary_ListsFieldsOfIncidentAndTask(t *testing.T) {
	h := newHarness(t, Config{Grants: Grants{Dictionary: true}})
	rows := h.get("/api/now/table/sys_dictionary", url.Values{"sysparm_query": {"name=incident^ORname=task"}, "sysparm_fields": {"element"}}).results(t)
	got := map[string]bool{}
	for _, r := range rows {
		got[r["element"].(string)] = true
	}
	for _, f := range []string{"", "number", "state", "caller_id", "close_code", "correlation_id", "comments", "sys_updated_on", "sys_id"} {
		if !got[f] {
			t.Errorf("sys_dictionary has no element %q for incident/task", f)
		}
	}
	if got["user_name"] {
		t.Error("sys_dictionary lists sys_user's user_name for incident")
	}
}

// TestScan_OffsetWalksSkippedRows proves deep offsets cost proportionally
// more while keyset pages do not.
func TestScan_OffsetWalksSkippedRows(t *testing.T) {
	s := New(Config{Seed: 1})
	defer s.Close()
	if err := s.Seed(20000); err != nil {
		t.Fatal(err)
	}
	tb := s.tables["incident"]
	run := func(qs string, offset int) scanResult {
		q, err := ParseQuery(qs)
		if err != nil {
			t.Fatal(err)
		}
		p := bind(q, tb.s, false)
		return tb.scan(p, offset, 100, true)
	}
	shallow := run("ORDERBYsys_updated_on^ORDERBYsys_id", 0)
	deep := run("ORDERBYsys_updated_on^ORDERBYsys_id", 15000)
	if deep.visited < 15000 || shallow.visited > 200 {
		t.Errorf("rows walked: offset 0 %d, offset 15000 %d; want the deep offset to walk the skipped rows", shallow.visited, deep.visited)
	}
	if shallow.total != 20000 || deep.total != 20000 {
		t.Errorf("totals %d %d, want 20000", shallow.total, deep.total)
	}
	last := deep.rows[0]
	ks := run("sys_updated_on="+last.updated(tb)+"^sys_id>"+last.id(tb)+"^ORDERBYsys_id", 0)
	if ks.visited > 100 {
		t.Errorf("keyset page walked %d rows, want at most the page", ks.visited)
	}
}

// TestKeyset_EveryRecordExactlyOnce walks 20k records, 50 per second, with
// both keyset forms of the facts file.
func TestKeyset_EveryRecordExactlyOnce(t *testing.T) {
	h := newHarness(t, Config{})
	if err := h.sim.Seed(20000); err != nil {
		t.Fatal(err)
	}
	page := func(q string) []map[string]any {
		r := h.get("/api/now/v2/table/incident", url.Values{"sysparm_query": {q}, "sysparm_limit": {"777"}, "sysparm_fields": {"sys_id,sys_updated_on"}})
		if r.status != 200 {
			t.Fatalf("%q: %d %s", q, r.status, r.body)
		}
		return r.results(t)
	}
	const order = "^ORDERBYsys_updated_on^ORDERBYsys_id"
	for _, form := range []string{"nq", "two-step"} {
		seen := map[string]int{}
		var lastT, lastID string
		for range 1000 {
			var rows []map[string]any
			switch {
			case lastT == "":
				rows = page(order[1:])
			case form == "nq":
				rows = page("sys_updated_on>" + lastT + order + "^NQsys_updated_on=" + lastT + "^sys_id>" + lastID + order)
			default:
				rows = page("sys_updated_on=" + lastT + "^sys_id>" + lastID + "^ORDERBYsys_id")
				if len(rows) == 0 {
					rows = page("sys_updated_on>" + lastT + order)
				}
			}
			if len(rows) == 0 {
				break
			}
			for _, r := range rows {
				seen[r["sys_id"].(string)]++
			}
			lastT, lastID = rows[len(rows)-1]["sys_updated_on"].(string), rows[len(rows)-1]["sys_id"].(string)
		}
		if len(seen) != 20000 {
			t.Errorf("%s: saw %d distinct records, want 20000", form, len(seen))
		}
		for id, n := range seen {
			if n != 1 {
				t.Errorf("%s: record %s seen %d times", form, id, n)
				break
			}
		}
	}
	_ = http.MethodGet
}

// TestScan_IndexedCountsMatchBruteForce checks the index shortcuts (ranges,
// counts of ^NQ unions, index order) against evaluating every row.
func TestScan_IndexedCountsMatchBruteForce(t *testing.T) {
	s := New(Config{Seed: 3})
	defer s.Close()
	if err := s.SeedWith(3000, SeedOptions{PerSecond: 40}); err != nil {
		t.Fatal(err)
	}
	tb := s.tables["incident"]
	for i, pivot := range []int{0, 1, 39, 40, 1500, 2999} {
		r := tb.index[pivot]
		T, ID := r.updated(tb), r.id(tb)
		for _, qs := range []string{
			"sys_updated_on>" + T + "^NQsys_updated_on=" + T + "^sys_id>" + ID + "^ORDERBYsys_updated_on^ORDERBYsys_id",
			"sys_updated_on=" + T + "^sys_id>=" + ID + "^ORDERBYsys_id",
			"sys_updated_on<=" + T + "^ORDERBYDESCsys_updated_on^ORDERBYDESCsys_id",
			"sys_updated_onBETWEEN" + T + "@" + T + "^sys_id<" + ID,
			"sys_updated_on>=" + T + "^state=2^ORstate=3",
			"sys_updated_on>" + T + "^NQstate=1^ORDERBYnumber",
			// sys_id order (presence scans): the sys_id index.
			"sys_id>" + ID + "^ORDERBYsys_id",
			"ORDERBYsys_id",
			"sys_id>=" + ID + "^state=2^ORDERBYsys_id",
			"sys_id<=" + ID + "^sys_id>" + tb.index[(pivot+7)%3000].id(tb) + "^ORDERBYsys_id",
			"sys_idIN" + ID + "," + tb.index[(pivot+11)%3000].id(tb) + ",ffffffffffffffffffffffffffffffff^ORDERBYsys_id",
			"sys_id=" + ID + "^ORDERBYsys_id",
			"sys_id>" + strings.ToUpper(ID) + "^ORDERBYsys_id",
		} {
			q, err := ParseQuery(qs)
			if err != nil {
				t.Fatal(err)
			}
			p := bind(q, tb.s, false)
			var want []*row
			for _, r := range tb.index {
				if p.match(r.vals) {
					want = append(want, r)
				}
			}
			if len(p.order) > 0 {
				slices.SortStableFunc(want, func(a, b *row) int { return p.compareRows(a.vals, b.vals) })
			}
			for _, off := range []int{0, 7} {
				got := tb.scan(p, off, 25, true)
				if got.total != len(want) {
					t.Errorf("pivot %d %q: total %d, want %d", i, qs, got.total, len(want))
				}
				exp := want[min(off, len(want)):min(off+25, len(want))]
				if len(got.rows) != len(exp) {
					t.Fatalf("pivot %d %q offset %d: %d rows, want %d", i, qs, off, len(got.rows), len(exp))
				}
				for k := range exp {
					if got.rows[k] != exp[k] {
						t.Errorf("pivot %d %q offset %d: row %d differs", i, qs, off, k)
						break
					}
				}
			}
		}
	}
}
