package snsim

import (
	"errors"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseQuery_Structure(t *testing.T) {
	c := func(f, op, v string) Cond { return Cond{Field: f, Op: op, Value: v} }
	tests := []struct {
		name  string
		query string
		want  *Query
	}{
		{"empty", "", &Query{Parts: []Part{}}},
		{"and", "active=true^priority<=2", &Query{Parts: []Part{{Groups: [][]Cond{{c("active", "=", "true")}, {c("priority", "<=", "2")}}}}}},
		{"or binds to the previous clause: a^ORb^c is (a OR b) AND c", "state=1^ORstate=2^priority=1",
			&Query{Parts: []Part{{Groups: [][]Cond{{c("state", "=", "1"), c("state", "=", "2")}, {c("priority", "=", "1")}}}}}},
		{"NQ starts a new query", "sys_updated_on>2026-01-01 00:00:00^NQsys_updated_on=2026-01-01 00:00:00^sys_id>abc",
			&Query{Parts: []Part{
				{Groups: [][]Cond{{c("sys_updated_on", ">", "2026-01-01 00:00:00")}}},
				{Groups: [][]Cond{{c("sys_updated_on", "=", "2026-01-01 00:00:00")}, {c("sys_id", ">", "abc")}}},
			}}},
		{"orderby several, in order, first wins", "active=true^ORDERBYsys_updated_on^ORDERBYDESCsys_id^ORDERBYsys_updated_on",
			&Query{Parts: []Part{{Groups: [][]Cond{{c("active", "=", "true")}}}}, Order: []OrderBy{{"sys_updated_on", false}, {"sys_id", true}}}},
		{"^^ is a literal caret", "short_description=a^^b^^^active=true",
			&Query{Parts: []Part{{Groups: [][]Cond{{c("short_description", "=", "a^b^")}, {c("active", "=", "true")}}}}}},
		{"escaped caret before OR is text", "short_description=x^^ORy",
			&Query{Parts: []Part{{Groups: [][]Cond{{c("short_description", "=", "x^ORy")}}}}}},
		{"keyword operators", "short_descriptionSTARTSWITHEmail^descriptionNOT LIKEvpn^close_codeISEMPTY^numberISNOTEMPTY^categoryANYTHING",
			&Query{Parts: []Part{{Groups: [][]Cond{
				{c("short_description", "STARTSWITH", "Email")}, {c("description", "NOT LIKE", "vpn")},
				{c("close_code", "ISEMPTY", "")}, {c("number", "ISNOTEMPTY", "")}, {c("category", "ANYTHING", "")},
			}}}}},
		{"IN list", "stateIN1,2,3", &Query{Parts: []Part{{Groups: [][]Cond{{{Field: "state", Op: "IN", Value: "1,2,3", Values: []string{"1", "2", "3"}}}}}}}},
		{"BETWEEN with dateGenerate", "sys_updated_onBETWEENjavascript:gs.dateGenerate('2026-03-01','00:00:00')@javascript:gs.dateGenerate('2026-03-02','end')",
			&Query{Parts: []Part{{Groups: [][]Cond{{{Field: "sys_updated_on", Op: "BETWEEN",
				Value:  "javascript:gs.dateGenerate('2026-03-01','00:00:00')@javascript:gs.dateGenerate('2026-03-02','end')",
				Values: []string{"2026-03-01 00:00:00", "2026-03-02 23:59:59"}}}}}}}},
		{"EQ ends the query", "active=true^EQ", &Query{Parts: []Part{{Groups: [][]Cond{{c("active", "=", "true")}}}}}},
		{"leading OR acts as AND", "ORstate=1", &Query{Parts: []Part{{Groups: [][]Cond{{c("state", "=", "1")}}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseQuery(tt.query)
			if err != nil {
				t.Fatalf("ParseQuery(%q): %v", tt.query, err)
			}
			if len(got.Parts) == 0 {
				got.Parts = []Part{}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseQuery(%q)\n got  %+v\n want %+v", tt.query, got, tt.want)
			}
		})
	}
}

func TestParseQuery_UnsupportedSyntaxFailsLoudly(t *testing.T) {
	for _, q := range []string{
		"caller_id.name=Beth",          // dot-walk
		"sys_class_nameINSTANCEOFtask", // not IN "STANCEOF"
		"opened_atONToday@javascript:gs.beginningOfToday()@javascript:gs.endOfToday()",
		"sys_created_on>javascript:gs.daysAgoStart(3)", // other javascript
		"stateSAMEASimpact",
		"GROUPBYstate",
		"123TEXTQUERY321=email",
		"state~1",
		"=1",
		"ORDERBY",
		"stateVALCHANGES",
	} {
		_, err := ParseQuery(q)
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("ParseQuery(%q) = %v, want a *SyntaxError", q, err)
		}
	}
}

// evalCase seeds a few incidents and runs queries through the HTTP API.
func TestQuery_Evaluation(t *testing.T) {
	h := newHarness(t, Config{Now: newClock().Now})
	recs := []map[string]string{
		{"sys_id": strings.Repeat("1", 32), "short_description": "Email down", "state": "1", "impact": "1", "urgency": "1", "category": "software"},
		{"sys_id": strings.Repeat("2", 32), "short_description": "VPN ^ broken", "state": "2", "impact": "2", "urgency": "2", "category": "network"},
		{"sys_id": strings.Repeat("3", 32), "short_description": "Printer jam", "state": "10", "impact": "3", "urgency": "3", "correlation_id": "TCK-1"},
		{"sys_id": strings.Repeat("4", 32), "short_description": "email slow", "state": "3", "impact": "2", "urgency": "3", "category": "software"},
	}
	for _, r := range recs {
		if _, err := h.sim.InsertNoWorkflow("incident", r, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(qs string, noRows bool) []string {
		t.Helper()
		h.sim.SetInvalidQueryReturnsNoRows(noRows)
		r := h.get("/api/now/v2/table/incident", url.Values{"sysparm_query": {qs}, "sysparm_fields": {"sys_id"}})
		if r.status != 200 {
			t.Fatalf("query %q: status %d: %s", qs, r.status, r.body)
		}
		var out []string
		for _, rec := range r.results(t) {
			out = append(out, rec["sys_id"].(string)[:1])
		}
		return out
	}
	tests := []struct {
		query  string
		noRows bool
		want   string
	}{
		{"", false, "1234"},
		{"state=1^ORstate=2^impact=2", false, "2"},         // (1 OR 2) AND impact 2
		{"impact=2^state=1^ORstate=2", false, "2"},         // impact 2 AND (1 OR 2)
		{"state=1^NQimpact=2", false, "124"},               // 1 OR impact 2
		{"state>2", false, "34"},                           // numeric: 10 > 2
		{"state<10", false, "124"},                         //
		{"stateIN1,3", false, "14"},                        //
		{"stateNOT IN1,3", false, "23"},                    //
		{"short_descriptionLIKEemail", false, "14"},        // case-insensitive
		{"short_descriptionNOT LIKEemail", false, "23"},    //
		{"short_descriptionSTARTSWITHEMAIL", false, "14"},  //
		{"short_descriptionENDSWITHjam", false, "3"},       //
		{"short_description=email down", false, "1"},       // = is case-insensitive too
		{"short_description=VPN ^^ broken", false, "2"},    // escaped caret
		{"categoryISEMPTY", false, "3"},                    //
		{"correlation_idISNOTEMPTY", false, "3"},           //
		{"impactBETWEEN2@3", false, "234"},                 //
		{"categoryANYTHING", false, "1234"},                //
		{"category!=software", false, "23"},                // != keeps empty values
		{"no_such_field=1^state=1", false, "1"},            // unknown clause dropped
		{"no_such_field=1", false, "1234"},                 // ... even when it was the whole query
		{"no_such_field=1^state=1", true, ""},              // returns_no_rows mode
		{"state=1^ORno_such_field=1", false, "1"},          // dropped from an OR group
		{"ORDERBYDESCshort_description", false, "2341"},    // text order desc, case-insensitive
		{"ORDERBYimpact^ORDERBYDESCsys_id", false, "1423"}, // several orders
		{"ORDERBYstate", false, "1243"},                    // numeric order
	}
	for _, tt := range tests {
		got := strings.Join(ids(tt.query, tt.noRows), "")
		if !strings.Contains(tt.query, "ORDERBY") {
			b := []byte(got)
			slices.Sort(b)
			got = string(b)
		}
		if got != tt.want {
			t.Errorf("query %q (no-rows mode %v): got records %q, want %q", tt.query, tt.noRows, got, tt.want)
		}
	}
	probs := h.sim.QueryProblems()
	if len(probs) == 0 || probs[0].Kind != "dropped" || !strings.Contains(probs[0].Detail, "no_such_field=1") {
		t.Errorf("QueryProblems = %+v, want the dropped no_such_field clause recorded", probs)
	}
}

func TestQuery_UnsupportedAnswers400AndIsRecorded(t *testing.T) {
	h := newHarness(t, Config{})
	r := h.get("/api/now/table/incident", url.Values{"sysparm_query": {"caller_id.name=Beth Anglin"}})
	if r.status != 400 || !strings.Contains(string(r.body), "unsupported encoded query syntax") {
		t.Fatalf("dot-walked query: status %d body %s, want 400 naming unsupported syntax", r.status, r.body)
	}
	p := h.sim.QueryProblems()
	if len(p) != 1 || p[0].Kind != "unsupported" {
		t.Fatalf("QueryProblems = %+v, want one unsupported entry", p)
	}
}

func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"", "active=true", "state=1^ORstate=2^priority=1", "a>1^NQb<2^ORDERBYa^ORDERBYDESCb",
		"short_description=a^^b", "stateIN1,2,3", "sys_updated_onBETWEEN2026-01-01 00:00:00@2026-01-02 00:00:00",
		"sys_updated_on>=javascript:gs.dateGenerate('2026-03-01','00:00:00')", "descriptionNOT LIKEx^EQ",
		"^^^^^", "^OR^NQ^", "ORDERBY", "a.b=c", "xINSTANCEOFy", "\x00=\xff",
	} {
		f.Add(s)
	}
	sc := incidentTable().schema()
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQuery(s)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("ParseQuery(%q) returned %T, want *SyntaxError", s, err)
			}
			return
		}
		p := bind(q, sc, false)
		vals := make([]string, len(sc.fields))
		_ = p.match(vals)
		for _, part := range q.Parts {
			for _, g := range part.Groups {
				if len(g) == 0 {
					t.Fatalf("ParseQuery(%q) produced an empty OR group", s)
				}
			}
		}
	})
}
