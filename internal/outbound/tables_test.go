package outbound_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
)

// tableCase is how a person creates a record of a shipped table in the
// simulator, and which app status closes it.
type tableCase struct {
	insert  map[string]string // fields of a record a person creates
	closing string            // an app status value that closes the record; "" when none does
}

var tableCases = map[string]tableCase{
	"incident":        {insert: map[string]string{"short_description": "Email down", "impact": "2", "urgency": "2"}, closing: "resolved"},
	"change_request":  {insert: map[string]string{"short_description": "Upgrade the core router"}, closing: "closed"},
	"problem":         {insert: map[string]string{"short_description": "Outlook drops its connection", "impact": "2", "urgency": "2"}, closing: "resolved"},
	"sc_req_item":     {insert: map[string]string{"short_description": "New laptop"}},
	"sn_hr_core_case": {insert: map[string]string{"short_description": "Update my address"}},
}

// servedTables are the shipped tables: the per-table tests run for each,
// so the simulator must serve every one and tableCases say how a person
// creates a record of it.
func servedTables(t *testing.T) []string {
	t.Helper()
	probe := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 1})
	defer probe.Close()
	for _, table := range mapping.Shipped() {
		if !slices.Contains(probe.Tables(), table) {
			t.Fatalf("nowbridge ships a mapping of %s but the simulator does not serve it (it serves %v)", table, probe.Tables())
		}
		if _, ok := tableCases[table]; !ok {
			t.Fatalf("no tableCase for %s: say how a person creates one", table)
		}
	}
	return mapping.Shipped()
}

// perTableOpts syncs tables, with the HR role the setup guide grants the
// integration user for HR cases (itil gives nothing in the HR scope).
func perTableOpts(tables []string) opts {
	return opts{tables: tables, simCfg: func(c *snsim.Config) { c.Grants.HRRole = snsim.RoleHRCaseWriter }}
}

// linkedAs creates a record of table as a person would and makes the
// bridge know it as the apply pipeline would have: linked to externalID,
// bridge_state holding its mapped fields.
func (h *harness) linkedAs(table, entity, externalID string, fields map[string]string) snsim.Record {
	h.t.Helper()
	f := map[string]string{"description": "created by a person", "correlation_id": externalID}
	for k, v := range fields {
		f[k] = v
	}
	rec, err := h.sim.Insert(table, f, "beth.anglin")
	if err != nil {
		h.t.Fatal(err)
	}
	h.waitHooks()
	var mc int64
	fmt.Sscan(rec["sys_mod_count"], &mc)
	st := map[string]string{}
	for _, name := range h.maps.Fields(table) {
		st[name] = rec[name]
	}
	if _, err := h.store.Advance(h.ctx, table, rec["sys_id"], state.Record{Version: mc, UpdatedOn: rec["sys_updated_on"], Fields: st}); err != nil {
		h.t.Fatal(err)
	}
	if err := h.links.Link(h.ctx, entity, externalID, table, rec["sys_id"]); err != nil {
		h.t.Fatal(err)
	}
	return rec
}

// publishAs sends an app change of entity with the next version of its id.
func (h *harness) publishAs(entity, action, externalID string, fields map[string]string) int64 {
	h.t.Helper()
	h.appVer[entity+":"+externalID]++
	v := h.appVer[entity+":"+externalID]
	body, _ := json.Marshal(events.AppChange{ExternalID: externalID, Version: v, UpdatedAt: time.Now().UTC(), Fields: fields})
	if _, err := h.js.Publish(h.ctx, events.AppSubject(entity, action), body,
		jetstream.WithMsgID(events.AppMsgID(entity, externalID, v, action))); err != nil {
		h.t.Fatal(err)
	}
	return v
}

// waitWrittenAs waits for the writeback's bookmark of entity's id.
func (h *harness) waitWrittenAs(entity, externalID string, version int64) {
	h.t.Helper()
	h.eventually(fmt.Sprintf("writeback of %s %s v%d", entity, externalID, version), 20*time.Second, func() (bool, string) {
		e, err := h.store.KV().Get(h.ctx, "writeback."+entity+"."+externalID)
		if err != nil {
			return false, err.Error()
		}
		var p struct {
			Version int64 `json:"version"`
		}
		_ = json.Unmarshal(e.Value(), &p)
		return p.Version >= version, fmt.Sprintf("bookmark v%d", p.Version)
	})
}

// on returns the harness reporting to t (a subtest's).
func (h *harness) on(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

func (h *harness) recordOf(table, sysID string) snsim.Record {
	h.t.Helper()
	rec, ok := h.sim.Get(table, sysID)
	if !ok {
		h.t.Fatalf("%s %s not in the simulator", table, sysID)
	}
	return rec
}

// checkClosed checks that rec carries what its table's close rule needs
// when its state closes it: a code that is an active choice (prefer, when
// active) and every notes field.
func (h *harness) checkClosed(table string, rec snsim.Record, prefer string) {
	h.t.Helper()
	rule := h.maps.Close(table)
	if !rule.Closes(rec[mapping.StateField]) {
		return
	}
	var active []string
	for _, c := range h.sim.Choices(table, rule.CodeField) {
		active = append(active, c.Value)
	}
	code := rec[rule.CodeField]
	if !slices.Contains(active, code) {
		h.t.Errorf("%s %s: %s %q is not an active choice (%v)", table, rec["number"], rule.CodeField, code, active)
	}
	if prefer != "" && slices.Contains(active, prefer) && code != prefer {
		h.t.Errorf("%s %s: %s %q, want the preferred %q", table, rec["number"], rule.CodeField, code, prefer)
	}
	for _, f := range rule.NotesFor(code) {
		if rec[f] == "" {
			h.t.Errorf("%s %s: %s is empty; a close needs it", table, rec["number"], f)
		}
	}
}

// An app delete does what the table's mapping says: the shipped mappings
// resolve, each to its own state, with the close rule's fields when that
// state closes the record.
func TestWriteback_AppDeleteFollowsTheTablesMapping(t *testing.T) {
	tables := servedTables(t)
	h := newHarness(t, perTableOpts(tables))
	for _, table := range tables {
		t.Run(table, func(t *testing.T) {
			h := h.on(t)
			entity, _ := h.maps.Entity(table)
			rule := h.maps.Delete(table)
			id := "DEL-" + table
			rec := h.linkedAs(table, entity, id, tableCases[table].insert)
			v := h.publishAs(entity, events.AppDelete, id, nil)
			h.waitWrittenAs(entity, id, v)
			got := h.recordOf(table, rec["sys_id"])
			if got[mapping.StateField] != rule.State {
				t.Fatalf("state %q after an app delete, want the mapping's delete state %q", got[mapping.StateField], rule.State)
			}
			h.checkClosed(table, got, rule.CloseCode)
			// The resolve's webhook is the bridge's own: the table's derived
			// fields (active, the close stamps) do not make it someone else's.
			h.waitHooks()
			if echo, other := h.hooks.counts(rec["sys_id"]); echo != 1 || other != 1 {
				t.Errorf("webhooks: %d echoes, %d others; want the person's insert and one echo of the delete", echo, other)
			}
		})
	}
	if n := len(h.dlq()); n != 0 {
		t.Errorf("%d dead letters; every table's delete must satisfy its data policy", n)
	}
}

// An app change that closes a record carries the close rule's code and
// notes fields of its own table.
func TestWriteback_AppCloseCarriesTheTablesCloseFields(t *testing.T) {
	tables := servedTables(t)
	h := newHarness(t, perTableOpts(tables))
	ran := 0
	for _, table := range tables {
		tc := tableCases[table]
		if tc.closing == "" {
			if h.maps.Close(table) != nil {
				t.Errorf("%s has a close rule but no closing status in tableCases", table)
			}
			continue
		}
		ran++
		t.Run(table, func(t *testing.T) {
			h := h.on(t)
			entity, _ := h.maps.Entity(table)
			id := "CLOSE-" + table
			rec := h.linkedAs(table, entity, id, tc.insert)
			v := h.publishAs(entity, events.AppUpsert, id, map[string]string{"status": tc.closing})
			h.waitWrittenAs(entity, id, v)
			got := h.recordOf(table, rec["sys_id"])
			if !h.maps.Close(table).Closes(got[mapping.StateField]) {
				t.Fatalf("state %q after the app set status %s; want a closing state of %v", got[mapping.StateField], tc.closing, h.maps.Close(table).States)
			}
			rule := h.maps.Close(table)
			h.checkClosed(table, got, rule.PreferredCodes[0])
			for _, f := range rule.NotesFor(got[rule.CodeField]) {
				if !strings.Contains(got[f], "synced by nowbridge") {
					t.Errorf("%s %q, want the generated notes", f, got[f])
				}
			}
			h.waitHooks()
			if echo, other := h.hooks.counts(rec["sys_id"]); echo != 1 || other != 1 {
				t.Errorf("webhooks: %d echoes, %d others; want the person's insert and one echo of the close", echo, other)
			}
		})
	}
	if ran == 0 {
		t.Fatal("no served table has a close rule: incident must")
	}
	if n := len(h.dlq()); n != 0 {
		t.Errorf("%d dead letters; closing writes must satisfy the data policy", n)
	}
}

// BRIDGE_WRITEBACK_DELETE_STATE overrides the mapping's delete state, for
// every table or per table, and a state that does not close sends no close
// fields.
func TestWriteback_DeleteStateOverrides(t *testing.T) {
	for _, tt := range []struct {
		override  string
		wantState string
		closes    bool
	}{
		{"7", "7", true},           // every table: Closed, with a close code and notes
		{"incident=8", "8", false}, // incident only: Canceled, no close fields needed
	} {
		t.Run(tt.override, func(t *testing.T) {
			h := newHarness(t, opts{cfg: outbound.Config{DeleteState: tt.override}})
			rec := h.linkedIncident("TCK-OVR", nil)
			v := h.publish(events.AppDelete, "TCK-OVR", nil, time.Time{})
			h.waitWritten("TCK-OVR", v)
			got := h.record(rec["sys_id"])
			if got["state"] != tt.wantState {
				t.Fatalf("state %q, want the override's %s", got["state"], tt.wantState)
			}
			if hasCode := got["close_code"] != ""; hasCode != tt.closes {
				t.Errorf("close_code %q: a close code is sent exactly when the state closes (%v)", got["close_code"], tt.closes)
			}
			if n := len(h.dlq()); n != 0 {
				t.Errorf("%d dead letters", n)
			}
		})
	}
}

// A mapping file's own delete rule decides without any setting; a file
// that says nothing about deletes dead-letters them with the fix.
func TestWriteback_DeleteRuleOfAMappingFile(t *testing.T) {
	const file = `table: incident
entity: ticket
link:
  field: correlation_id
  display_field: correlation_display
fields:
  - saas: title
    servicenow: short_description
  - saas: status
    servicenow: state
    values: {new: "1", resolved: "6"}
`
	t.Run("mode delete", func(t *testing.T) {
		own, err := mapping.Parse("incident.yaml", []byte(file+"delete:\n  mode: delete\n"))
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t, opts{extraMap: []*mapping.Table{own}})
		rec := h.linkedIncident("TCK-FDEL", nil)
		v := h.publish(events.AppDelete, "TCK-FDEL", nil, time.Time{})
		h.waitWritten("TCK-FDEL", v)
		if _, ok := h.sim.Get("incident", rec["sys_id"]); ok {
			t.Fatal("the record survived an app delete its mapping says deletes")
		}
	})
	t.Run("no delete key", func(t *testing.T) {
		own, err := mapping.Parse("incident.yaml", []byte(file))
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t, opts{extraMap: []*mapping.Table{own}})
		rec := h.linkedIncident("TCK-NDEL", nil)
		h.publish(events.AppDelete, "TCK-NDEL", nil, time.Time{})
		var reason string
		h.eventually("one dead letter", 20*time.Second, func() (bool, string) {
			msgs := h.dlq()
			if len(msgs) == 1 {
				reason = msgs[0].Header.Get(events.HeaderDLQReason)
			}
			return len(msgs) == 1, fmt.Sprintf("%d dead letters", len(msgs))
		})
		if !strings.Contains(reason, "says nothing about deletes") || !strings.Contains(reason, "BRIDGE_WRITEBACK_DELETE") {
			t.Errorf("dead letter reason %q does not say what to add or set", reason)
		}
		if got := h.record(rec["sys_id"]); got["state"] != "1" {
			t.Errorf("state %q: nothing may be written", got["state"])
		}
	})
}

func TestCheckDelete(t *testing.T) {
	maps, err := mapping.Load(nil, []string{"incident", "change_request"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	noRule, err := mapping.Parse("u_case.yaml", []byte("table: u_case\nentity: case\nfields:\n  - saas: title\n    servicenow: short_description\n"))
	if err != nil {
		t.Fatal(err)
	}
	withCase, _ := mapping.NewSet(nil, append(tablesOf(maps), noRule)...)
	tests := []struct {
		name    string
		set     *mapping.Set
		cfg     outbound.Config
		wantErr string
	}{
		{"the mappings' own rules", maps, outbound.Config{}, ""},
		{"per-table states", maps, outbound.Config{DeleteState: "incident=7,change_request=4"}, ""},
		{"one state no other table has", maps, outbound.Config{DeleteState: "7"}, `BRIDGE_WRITEBACK_DELETE_STATE "7" is not a state of change_request`},
		{"a state of another table", maps, outbound.Config{DeleteState: "change_request=6"}, `"6" is not a state of change_request (its mapping change_request.yaml (shipped) knows -1, -2, -3, -4, -5, 0, 3, 4)`},
		{"a table not synced", maps, outbound.Config{DeleteState: "problem=107"}, "names problem, which is not a synced table"},
		{"delete mode everywhere", maps, outbound.Config{DeleteMode: outbound.DeleteRecord}, ""},
		{"a mapping without a rule only warns", withCase, outbound.Config{}, ""},
		{"resolve forced on a table without a state", withCase, outbound.Config{DeleteMode: outbound.DeleteResolve}, "BRIDGE_WRITEBACK_DELETE_STATE=u_case=<state>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := outbound.CheckDelete(tt.set, tt.set.Tables(), tt.cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("err = %v, want none", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseDeleteStates(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr string
	}{
		{"", map[string]string{}, ""},
		{"7", map[string]string{"": "7"}, ""},
		{" incident=7 , change_request = 4", map[string]string{"incident": "7", "change_request": "4"}, ""},
		{"7,8", nil, "one state for every table, or table=state pairs"},
		{"incident=", nil, "is not table=state"},
		{"incident=7,incident=8", nil, "incident is given twice"},
	}
	for _, tt := range tests {
		got, err := outbound.ParseDeleteStates(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseDeleteStates(%q) err = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("ParseDeleteStates(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func tablesOf(s *mapping.Set) []*mapping.Table {
	var out []*mapping.Table
	for _, name := range s.Tables() {
		t, _ := s.ForTable(name)
		out = append(out, t)
	}
	return out
}
