package mapping

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// shippedWant is what each shipped mapping must say, checked against
// ServiceNow's documentation (the sources are cited in each file).
var shippedWant = map[string]struct {
	entity      string
	states      map[string]string // saas -> servicenow, the whole map
	closeStates []string          // nil: no close rule
	codeField   string
	notes       []string            // the notes fields whatever the code
	notesByCode map[string][]string // those of codes with their own
	delete      Delete
}{
	"incident": {
		entity:      "ticket",
		states:      map[string]string{"new": "1", "in_progress": "2", "on_hold": "3", "resolved": "6", "closed": "7", "canceled": "8"},
		closeStates: []string{"6", "7"}, codeField: "close_code", notes: []string{"close_notes"},
		delete: Delete{Mode: DeleteResolve, State: "6"},
	},
	"change_request": {
		entity: "change",
		states: map[string]string{"new": "-5", "assess": "-4", "authorize": "-3", "scheduled": "-2", "implement": "-1",
			"review": "0", "closed": "3", "canceled": "4"},
		closeStates: []string{"3"}, codeField: "close_code", notes: []string{"close_notes"},
		delete: Delete{Mode: DeleteResolve, State: "4"},
	},
	"problem": {
		entity: "problem",
		states: map[string]string{"new": "101", "assess": "102", "root_cause_analysis": "103", "fix_in_progress": "104",
			"resolved": "106", "closed": "107"},
		closeStates: []string{"106", "107"}, codeField: "resolution_code", notes: []string{"close_notes"},
		notesByCode: map[string][]string{"fix_applied": {"cause_notes", "fix_notes"}, "risk_accepted": {"cause_notes", "close_notes"}, "canceled": {"close_notes"}},
		delete:      Delete{Mode: DeleteResolve, State: "107", CloseCode: "canceled"},
	},
	"sc_req_item": {
		entity: "request_item",
		states: map[string]string{"pending": "-5", "open": "1", "work_in_progress": "2", "closed_complete": "3", "closed_incomplete": "4", "closed_skipped": "7"},
		delete: Delete{Mode: DeleteResolve, State: "4"},
	},
	"sn_hr_core_case": {
		entity: "hr_case",
		states: map[string]string{"draft": "1", "ready": "10", "awaiting_approval": "16", "work_in_progress": "18", "awaiting_acceptance": "20",
			"suspended": "24", "closed_complete": "3", "closed_incomplete": "4", "cancelled": "7"},
		delete: Delete{Mode: DeleteResolve, State: "7"},
	},
}

func TestShipped_EachParsesAndRoundTripsItsStates(t *testing.T) {
	if got, want := Shipped(), slices.Sorted(maps.Keys(shippedWant)); !slices.Equal(got, want) {
		t.Fatalf("shipped %v, the test knows %v: add the new table's expectations", got, want)
	}
	for table, want := range shippedWant {
		t.Run(table, func(t *testing.T) {
			data, _ := ShippedFile(table)
			if !bytes.Contains(data, []byte("https://raw.githubusercontent.com/ServiceNow/ServiceNowDocs/")) {
				t.Error("the file does not cite the ServiceNow documentation it was checked against")
			}
			tbl, ok, err := parseShipped(table)
			if !ok || err != nil {
				t.Fatalf("parse: %v", err)
			}
			if tbl.Name != table || tbl.Entity != want.entity {
				t.Fatalf("table %s entity %s, want %s %s", tbl.Name, tbl.Entity, table, want.entity)
			}
			if !slices.Equal(tbl.Parents, []string{"task"}) {
				t.Errorf("parents = %v, want [task] (every shipped table extends task)", tbl.Parents)
			}
			for _, f := range []string{"comments", "work_notes"} {
				if !tbl.Kind(f).Journal() {
					t.Errorf("%s is not a journal field", f)
				}
			}
			if tbl.LinkField != "correlation_id" || tbl.LinkDisplayField != "correlation_display" {
				t.Errorf("link = %s/%s, want correlation_id/correlation_display", tbl.LinkField, tbl.LinkDisplayField)
			}
			if !tbl.Kind("active").Derived() || !tbl.Kind("number").FilledOnInsert() || !tbl.Kind("state").FilledOnInsert() {
				t.Error("active must be derived and number, state filled on insert")
			}
			f, ok := tbl.FieldByServiceNow(StateField)
			if !ok || !maps.Equal(f.Values, want.states) {
				t.Fatalf("state values = %v, want %v", f.Values, want.states)
			}
			// Both ways: every app value to ServiceNow and back, every
			// ServiceNow value to the app and back.
			for saas, sn := range want.states {
				got, ok := f.ValueToServiceNow(saas)
				back, ok2 := f.ValueToSaaS(got)
				if !ok || !ok2 || got != sn || back != saas {
					t.Errorf("%s -> %s (%v) -> %s (%v), want %s -> %s -> %s", saas, got, ok, back, ok2, saas, sn, saas)
				}
				toApp, ok := f.ValueToSaaS(sn)
				again, ok2 := f.ValueToServiceNow(toApp)
				if !ok || !ok2 || again != sn {
					t.Errorf("ServiceNow %s -> %s -> %s, want it back", sn, toApp, again)
				}
			}
			switch {
			case want.closeStates == nil && tbl.Close != nil:
				t.Errorf("close rule %+v, want none", tbl.Close)
			case want.closeStates != nil:
				c := tbl.Close
				if c == nil || !slices.Equal(c.States, want.closeStates) || c.CodeField != want.codeField || !slices.Equal(c.NotesFields, want.notes) || c.NotesField != want.notes[0] {
					t.Fatalf("close rule %+v, want states %v code %s notes %v", c, want.closeStates, want.codeField, want.notes)
				}
				if len(c.NotesByCode) != len(want.notesByCode) {
					t.Errorf("notes by code %v, want %v", c.NotesByCode, want.notesByCode)
				}
				for code, fs := range want.notesByCode {
					if !slices.Equal(c.NotesFor(code), fs) {
						t.Errorf("NotesFor(%s) = %v, want %v", code, c.NotesFor(code), fs)
					}
				}
				if got := c.NotesFor("some_other_code"); !slices.Equal(got, want.notes) {
					t.Errorf("NotesFor(another code) = %v, want %v", got, want.notes)
				}
			}
			got := tbl.Delete
			got.Line = 0
			if got != want.delete {
				t.Errorf("delete = %+v, want %+v", got, want.delete)
			}
			// The close and delete states are values the state map knows.
			for _, s := range append(slices.Clone(want.closeStates), want.delete.State) {
				if _, ok := f.ValueToSaaS(s); !slices.Contains(tbl.StateValues(), s) || !ok {
					t.Errorf("state %s is not in the value map", s)
				}
			}
		})
	}
}

func TestParse_TableKnowledgeKeys(t *testing.T) {
	const doc = `table: u_case
entity: case
parents: [u_base, task]
link:
  field: correlation_id
journal: [comments]
derived:
  - priority
  - active
insert_fills: [number, priority]
close:
  states: ["9"]
  code_field: u_code
  notes_fields: [u_notes, u_more]
  notes_by_code: {done: [u_done]}
delete:
  mode: resolve
  state: "9"
  close_code: done
fields:
  - saas: status
    servicenow: state
    values: {open: "1", done: "9"}
  - saas: comment
    servicenow: comments
    direction: to_servicenow
`
	tbl, err := Parse("u_case.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tbl.Parents, []string{"u_base", "task"}) {
		t.Errorf("parents = %v", tbl.Parents)
	}
	kinds := []struct {
		field                    string
		journal, derived, insert bool
	}{
		{"comments", true, false, false},
		{"priority", false, true, true},
		{"active", false, true, false},
		{"number", false, false, true},
		{"short_description", false, false, false},
		{"sys_mod_count", false, true, true}, // system fields, on every table
		{"sys_updated_on", false, true, true},
		{"sys_created_by", false, false, true},
	}
	for _, k := range kinds {
		got := tbl.Kind(k.field)
		if got.Journal() != k.journal || got.Derived() != k.derived || got.FilledOnInsert() != k.insert {
			t.Errorf("Kind(%s) = journal %v derived %v insert %v, want %v %v %v", k.field, got.Journal(), got.Derived(), got.FilledOnInsert(), k.journal, k.derived, k.insert)
		}
	}
	if d := tbl.Delete; d.Mode != DeleteResolve || d.State != "9" || d.CloseCode != "done" || d.Line != 16 {
		t.Errorf("delete = %+v", d)
	}
	if c := tbl.Close; c.NotesField != "u_notes" || !slices.Equal(c.NotesFields, []string{"u_notes", "u_more"}) ||
		!slices.Equal(c.NotesFor("done"), []string{"u_done"}) || !slices.Equal(c.NotesFor("other"), c.NotesFields) {
		t.Errorf("close notes = %s %v, by code %v", c.NotesField, c.NotesFields, c.NotesByCode)
	}
	if got := strings.Join(tbl.ServiceNowFields(), ","); got != "correlation_id,number,state,u_code,u_done,u_more,u_notes" {
		t.Errorf("read fields = %s: the close rule's code and every notes field are read", got)
	}
	s, _ := NewSet(nil, tbl)
	if !s.FieldKind("u_case", "comments").Journal() || s.FieldKind("other", "comments") != 0 || !s.FieldKind("other", "sys_mod_count").Derived() {
		t.Error("Set.FieldKind: the table's kinds for a mapped table, only system fields for another")
	}
	if s.Delete("u_case").State != "9" || s.Delete("other") != (Delete{}) {
		t.Error("Set.Delete: the table's rule, the zero rule for another")
	}
	if p := s.Parents(); !slices.Equal(p["u_case"], []string{"u_base", "task"}) {
		t.Errorf("Set.Parents = %v", p)
	}
}

func TestParse_TableKnowledgeErrorsNameTheLine(t *testing.T) {
	const head = "table: u_case\nentity: case\n"                                                               // lines 1-2
	const state = "fields:\n  - saas: status\n    servicenow: state\n    values: {open: \"1\", done: \"9\"}\n" // lines 3-6 after head
	tests := []struct {
		name     string
		yaml     string
		wantLine int
		wantMsg  string
	}{
		{"parents not a list", head + "parents: task\n", 3, "parents must be a non-empty list"},
		{"parent not a table name", head + "parents: [Task]\n", 3, `"Task" must match`},
		{"journal listed twice", head + "journal:\n  - comments\n  - comments\n", 5, "lists comments twice (first at line 4)"},
		{"derived empty item", head + "derived: [\"\"]\n", 3, "empty item"},
		{"insert_fills not names", head + "insert_fills: [Number]\n", 3, "must match"},
		{"journal and derived", head + "journal: [comments]\nderived: [active, comments]\n" + state, 4, "both a journal field (line 3) and derived"},
		{"journal sent to the app", head + "journal: [comments]\nfields:\n  - saas: comment\n    servicenow: comments\n", 5, "direction: to_servicenow"},
		{"link in derived", head + "link:\n  field: correlation_id\nderived: [correlation_id]\nfields:\n  - saas: a\n    servicenow: b\n", 5, "the link field"},
		{"delete without mode", head + "delete:\n  state: \"9\"\n", 4, "delete needs mode"},
		{"delete bad mode", head + "delete:\n  mode: shred\n", 4, `delete.mode "shred"`},
		{"delete unknown key", head + "delete:\n  mode: resolve\n  code: x\n", 5, `unknown key "code" in delete`},
		{"resolve without state", head + "delete:\n  mode: resolve\n" + state, 3, "needs state"},
		{"delete mode with a state", head + "delete:\n  mode: delete\n  state: \"9\"\n" + state, 3, "only apply to mode resolve"},
		{"delete state not a value", head + "delete:\n  mode: resolve\n  state: \"6\"\n" + state, 5, `delete state "6" is not a value of the state map (known: 1, 9)`},
		{"close state not a value", head + "close:\n  states: [\"9\", \"7\"]\n  code_field: u_code\n  notes_field: u_notes\n" + state, 4, `close state "7" is not a value`},
		{"close code without a closing delete", head + "close:\n  states: [\"9\"]\n  code_field: u_code\n  notes_field: u_notes\ndelete:\n  mode: resolve\n  state: \"1\"\n  close_code: done\n" + state, 10, "only sent when delete.state closes"},
		{"notes_field and notes_fields", head + "close:\n  states: [\"9\"]\n  code_field: u_code\n  notes_field: a\n  notes_fields: [b]\n", 4, "not both"},
		{"notes field is the code field", head + "close:\n  states: [\"9\"]\n  code_field: u_code\n  notes_fields: [u_code]\n", 6, "is the close code field"},
		{"notes by code not a mapping", head + "close:\n  states: [\"9\"]\n  code_field: u_code\n  notes_by_code: [a]\n", 6, "notes_by_code must be a non-empty mapping"},
		{"notes by code not names", head + "close:\n  states: [\"9\"]\n  code_field: u_code\n  notes_by_code:\n    done: [Notes]\n", 7, "must match"},
		{"notes by code code twice", head + "close:\n  states: [\"9\"]\n  code_field: u_code\n  notes_by_code:\n    done: [a]\n    done: [b]\n", 8, "lists code \"done\" twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a *ParseError", err)
			}
			if pe.Line != tt.wantLine || !strings.Contains(pe.Msg, tt.wantMsg) {
				t.Fatalf("err = %q (line %d), want line %d and %q", err, pe.Line, tt.wantLine, tt.wantMsg)
			}
		})
	}
}

func TestLoad_PerTable(t *testing.T) {
	own := "table: change_request\nentity: rfc\nfields:\n  - saas: title\n    servicenow: short_description\n"
	stray := "table: u_other\nentity: other\nfields:\n  - saas: title\n    servicenow: short_description\n"
	t.Run("a file replaces the shipped mapping and says what it drops", func(t *testing.T) {
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		s, err := Load(fstest.MapFS{"change_request.yaml": {Data: []byte(own)}, "other.yaml": {Data: []byte(stray)}},
			[]string{"incident", "change_request"}, log)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(s.Tables(), ","); got != "change_request,incident" {
			t.Fatalf("tables = %s: the stray file's table is not synced and must be left out", got)
		}
		if tbl, _ := s.Table("rfc"); tbl != "change_request" {
			t.Fatal("the file's change_request mapping did not replace the shipped one")
		}
		for _, want := range []string{"without some of what that one knows", "missing=\"[parents journal derived insert_fills close delete]\"", "left out"} {
			if !strings.Contains(logs.String(), want) {
				t.Errorf("log does not say %q:\n%s", want, logs.String())
			}
		}
	})
	t.Run("a table with neither file nor shipped mapping", func(t *testing.T) {
		_, err := Load(nil, []string{"incident", "u_widget"}, nil)
		if err == nil || !strings.Contains(err.Error(), "table u_widget (BRIDGE_TABLES) has no mapping") ||
			!strings.Contains(err.Error(), "add u_widget.yaml to BRIDGE_MAPPING_DIR") || !strings.Contains(err.Error(), "change_request, incident, problem") {
			t.Fatalf("err = %v, want one naming the table, the shipped ones and the file to add", err)
		}
	})
	t.Run("two tables, one entity", func(t *testing.T) {
		clash := "table: u_other\nentity: ticket\nfields:\n  - saas: title\n    servicenow: short_description\n"
		_, err := Load(fstest.MapFS{"o.yaml": {Data: []byte(clash)}}, []string{"incident", "u_other"}, nil)
		if err == nil || !strings.Contains(err.Error(), "entity ticket is already mapped") {
			t.Fatalf("err = %v, want the entity clash", err)
		}
	})
	t.Run("no tables is incident", func(t *testing.T) {
		s, err := Load(nil, nil, nil)
		if err != nil || strings.Join(s.Tables(), ",") != "incident" {
			t.Fatalf("tables = %v, %v; want incident", s, err)
		}
	})
	t.Run("every shipped table at once", func(t *testing.T) {
		s, err := Load(nil, Shipped(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for table, want := range shippedWant {
			if e, _ := s.Entity(table); e != want.entity {
				t.Errorf("entity of %s = %q, want %s", table, e, want.entity)
			}
		}
	})
}

func TestClose_Preferring(t *testing.T) {
	c := &Close{States: []string{"107"}, CodeField: "resolution_code", PreferredCodes: []string{"fix_applied", "canceled"}}
	p := c.Preferring("canceled")
	if !slices.Equal(p.PreferredCodes, []string{"canceled", "fix_applied"}) || !slices.Equal(c.PreferredCodes, []string{"fix_applied", "canceled"}) {
		t.Fatalf("Preferring = %v (original %v), want canceled first and the original untouched", p.PreferredCodes, c.PreferredCodes)
	}
	if c.Preferring("") != c {
		t.Fatal("no code: the rule itself")
	}
	code, err := p.Pick("problem", []string{"fix_applied", "canceled"}, "")
	if err != nil || code != "canceled" {
		t.Fatalf("Pick = %q %v, want canceled", code, err)
	}
}

func TestParse_LinkDefaultsToTasksFields(t *testing.T) {
	const fields = "fields:\n  - saas: title\n    servicenow: short_description\n"
	tests := []struct {
		name, doc, field, display string
	}{
		{"no link key", "table: u_case\nentity: case\n" + fields, "correlation_id", "correlation_display"},
		{"a link key sets what it names", "table: u_case\nentity: case\nlink:\n  field: u_external\n" + fields, "u_external", ""},
	}
	for _, tt := range tests {
		tbl, err := Parse("u_case.yaml", []byte(tt.doc))
		if err != nil {
			t.Fatal(err)
		}
		if tbl.LinkField != tt.field || tbl.LinkDisplayField != tt.display {
			t.Errorf("%s: link %q/%q, want %q/%q", tt.name, tbl.LinkField, tbl.LinkDisplayField, tt.field, tt.display)
		}
	}
	if _, err := Parse("u_case.yaml", []byte("table: u_case\nentity: case\nfields:\n  - saas: x\n    servicenow: correlation_id\n")); err == nil || !strings.Contains(err.Error(), "link field") {
		t.Fatalf("err = %v: the default link field cannot be mapped either", err)
	}
}
