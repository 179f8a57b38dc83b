package mapping

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"strings"
	"testing"
	"testing/fstest"
)

func TestDefault_ShippedFileIsTheEmbeddedOne(t *testing.T) {
	shipped, err := os.ReadFile("../../deploy/mapping/incident.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(shipped, DefaultIncident) {
		t.Fatal("deploy/mapping/incident.yaml differs from internal/mapping/incident.yaml: copy one over the other")
	}
}

func TestShipped_DeployDirectoryHoldsTheEmbeddedFiles(t *testing.T) {
	entries, err := os.ReadDir("../../deploy/mapping")
	if err != nil {
		t.Fatal(err)
	}
	var deployed []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		table := strings.TrimSuffix(e.Name(), ".yaml")
		deployed = append(deployed, table)
		data, err := os.ReadFile("../../deploy/mapping/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		embedded, ok := ShippedFile(table)
		if !ok || !bytes.Equal(data, embedded) {
			t.Errorf("deploy/mapping/%s differs from internal/mapping/%s (or is not embedded): copy one over the other", e.Name(), e.Name())
		}
	}
	if got, want := strings.Join(Shipped(), ","), strings.Join(deployed, ","); got != want {
		t.Fatalf("embedded mappings %s, deploy/mapping holds %s", got, want)
	}
	if want := "change_request,incident,problem,sc_req_item,sn_hr_core_case"; strings.Join(Shipped(), ",") != want {
		t.Fatalf("shipped = %v, want %s", Shipped(), want)
	}
}

func TestDefault_IncidentToSaaS(t *testing.T) {
	s := Default(nil)
	entity, got, err := s.ToSaaS("incident", map[string]string{
		"number": "INC0010001", "short_description": "Email down", "description": "all of it",
		"state": "2", "priority": "1", "urgency": "1", "impact": "2",
		"comments": "journal", "work_notes": "internal", "correlation_id": "TCK-1", "sys_id": "x", "u_unknown": "v",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"title": "Email down", "description": "all of it", "status": "in_progress", "priority": "1", "urgency": "1", "impact": "2"}
	if entity != "ticket" || !maps.Equal(got, want) {
		t.Fatalf("ToSaaS = %s %v, want ticket %v", entity, got, want)
	}
}

func TestDefault_TicketToServiceNow(t *testing.T) {
	s := Default(nil)
	tests := []struct {
		name    string
		in      map[string]string
		want    map[string]string
		wantErr string
	}{
		{"plain and mapped values", map[string]string{"title": "A", "status": "resolved", "priority": "3"},
			map[string]string{"short_description": "A", "state": "6", "priority": "3"}, ""},
		{"journal fields go one way", map[string]string{"comment": "hi", "work_note": "note"},
			map[string]string{"comments": "hi", "work_notes": "note"}, ""},
		{"unknown fields ignored", map[string]string{"color": "red", "title": "B"},
			map[string]string{"short_description": "B"}, ""},
		{"value outside the map", map[string]string{"status": "exploded"}, nil, `value "exploded" of field status`},
		{"empty value passes", map[string]string{"status": ""}, map[string]string{"state": ""}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ToServiceNow("ticket", tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !maps.Equal(got, tt.want) {
				t.Fatalf("ToServiceNow = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	if tbl, ok := s.Table("ticket"); !ok || tbl != "incident" {
		t.Fatalf("Table(ticket) = %q %v", tbl, ok)
	}
	if e, ok := s.Entity("incident"); !ok || e != "ticket" {
		t.Fatalf("Entity(incident) = %q %v", e, ok)
	}
	if _, err := s.ToServiceNow("widget", nil); err == nil {
		t.Fatal("unmapped entity: want an error")
	}
	want := "close_code,close_notes,correlation_display,correlation_id,description,impact,number,priority,short_description,state,urgency"
	if got := strings.Join(s.Fields("incident"), ","); got != want {
		t.Fatalf("Fields(incident) = %s, want %s", got, want)
	}
}

const customMapping = `table: incident
entity: case
link:
  field: correlation_id
fields:
  - saas: title
    servicenow: short_description
  - saas: severity
    servicenow: u_severity
    values:
      low: "c"
      high: "a"
  - saas: region
    servicenow: u_region
    direction: to_saas
`

func TestLoad_CustomFieldsAndValueMaps(t *testing.T) {
	s, err := Load(fstest.MapFS{"incident.yaml": {Data: []byte(customMapping)}, "README.md": {Data: []byte("x")}}, []string{"incident"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Table("ticket"); ok {
		t.Fatal("a file mapping incident must replace the built-in ticket mapping")
	}
	entity, got, _ := s.ToSaaS("incident", map[string]string{"short_description": "T", "u_severity": "a", "u_region": "eu"})
	if want := map[string]string{"title": "T", "severity": "high", "region": "eu"}; entity != "case" || !maps.Equal(got, want) {
		t.Fatalf("ToSaaS = %s %v, want case %v", entity, got, want)
	}
	sn, err := s.ToServiceNow("case", map[string]string{"severity": "low", "region": "us"})
	if want := map[string]string{"u_severity": "c"}; err != nil || !maps.Equal(sn, want) {
		t.Fatalf("ToServiceNow = %v %v, want %v (region is to_saas only)", sn, err, want)
	}
	// A value the map does not know passes through towards the app.
	_, got, _ = s.ToSaaS("incident", map[string]string{"u_severity": "b"})
	if got["severity"] != "b" {
		t.Fatalf("unknown ServiceNow value: got %q, want it passed through", got["severity"])
	}
}

func TestLoad_ShippedMappingForEachSyncedTableWithoutAFile(t *testing.T) {
	other := "table: u_change\nentity: u_change\nfields:\n  - saas: title\n    servicenow: short_description\n"
	s, err := Load(fstest.MapFS{"change.yml": {Data: []byte(other)}}, []string{"incident", "u_change", "problem"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Tables(), ","); got != "incident,problem,u_change" {
		t.Fatalf("tables = %s, want incident,problem,u_change", got)
	}
	if tbl, _ := s.Table("problem"); tbl != "problem" {
		t.Fatalf("entity problem maps to %q, want the shipped problem mapping", tbl)
	}
}

func TestParse_ErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		wantLine int
		wantMsg  string
	}{
		{"syntax", "table: incident\nentity: a: b\n", 2, "not valid YAML"},
		{"unknown key", "table: incident\nentity: ticket\ncolour: red\n", 3, `unknown key "colour"`},
		{"bad direction", "table: incident\nentity: ticket\nfields:\n  - saas: a\n    servicenow: b\n    direction: sideways\n", 6, "direction"},
		{"bad servicenow name", "table: incident\nentity: ticket\nfields:\n  - saas: a\n    servicenow: Bad-Name\n", 5, "servicenow field"},
		{"pair without servicenow", "table: incident\nentity: ticket\nfields:\n  - saas: a\n", 4, "needs both"},
		{"duplicate saas", "table: incident\nentity: ticket\nfields:\n  - saas: a\n    servicenow: b\n  - saas: a\n    servicenow: c\n", 6, "already mapped at line 4"},
		{"value map not reversible", "table: incident\nentity: ticket\nfields:\n  - saas: s\n    servicenow: state\n    values:\n      a: \"1\"\n      b: \"1\"\n", 8, "already the value"},
		{"link field mapped", "table: incident\nentity: ticket\nlink:\n  field: correlation_id\nfields:\n  - saas: x\n    servicenow: correlation_id\n", 6, "link field"},
		{"missing entity", "table: incident\nfields:\n  - saas: a\n    servicenow: b\n", 1, "entity is required"},
		{"fields not a list", "table: incident\nentity: ticket\nfields: title\n", 3, "must be a list"},
		{"repeated key", "table: incident\ntable: problem\n", 2, "repeats"},
		{"close without fields", "table: incident\nentity: ticket\nclose:\n  states: [\"6\"]\n", 4, "close needs states"},
		{"close states not a list", "table: incident\nentity: ticket\nclose:\n  states: \"6\"\n", 4, "close.states must be a non-empty list"},
		{"close empty preferred code", "table: incident\nentity: ticket\nclose:\n  preferred_codes: [\"\"]\n", 4, "empty item"},
		{"close unknown key", "table: incident\nentity: ticket\nclose:\n  code: x\n", 4, `unknown key "code"`},
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
			if !strings.Contains(err.Error(), "bad.yaml line") {
				t.Fatalf("message %q does not name file and line", err)
			}
		})
	}
}

func TestLoad_BrokenFileStopsWithItsLine(t *testing.T) {
	_, err := Load(fstest.MapFS{"incident.yaml": {Data: []byte("table: incident\nentity: ticket\nfields:\n  - saas: title\n    servicenow: short_description\n    values: nope\n")}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "incident.yaml line 6") {
		t.Fatalf("err = %v, want one naming incident.yaml line 6", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(DefaultIncident)
	f.Add([]byte(customMapping))
	f.Add([]byte("table: incident\nentity: [ticket\n"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("table: &a incident\nentity: *a\nfields: [{saas: a, servicenow: b, values: {x: 1}}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tbl, err := Parse("fuzz.yaml", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			return
		}
		// A parsed mapping must round-trip its value maps.
		for _, fd := range tbl.Fields {
			for saas, sn := range fd.Values {
				if back, ok := fd.ValueToSaaS(sn); !ok || back != saas {
					t.Fatalf("field %s: %q -> %q -> %q", fd.SaaS, saas, sn, back)
				}
			}
		}
		_ = tbl.ServiceNowFields()
	})
}

func TestDefault_IncidentCloseRule(t *testing.T) {
	s := Default(nil)
	c := s.Close("incident")
	if c == nil {
		t.Fatal("the built-in incident mapping has no close rule: resolves would be refused by the data policy")
	}
	if !c.Closes("6") || !c.Closes("7") || c.Closes("8") || c.Closes("2") {
		t.Fatalf("close states = %v, want 6 and 7 (Resolved, Closed) only", c.States)
	}
	if c.CodeField != "close_code" || c.NotesField != "close_notes" {
		t.Fatalf("close fields = %s, %s; want close_code, close_notes", c.CodeField, c.NotesField)
	}
	if len(c.PreferredCodes) == 0 || c.PreferredCodes[0] != "Solution provided" {
		t.Fatalf("preferred codes = %v, want Solution provided first", c.PreferredCodes)
	}
	if s.Close("problem") != nil {
		t.Fatal("an unmapped table has a close rule")
	}
	var nilRule *Close
	if nilRule.Closes("6") {
		t.Fatal("a table without a close rule closes on state 6")
	}
}
