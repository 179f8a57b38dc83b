package dedupe

import (
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
)

// incidentOnly is the default mapping: the tests of incident's echoes.
var incidentOnly = mapping.Default(nil)

// clock is a settable Config.Now, so TTL tests need no sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func shippedSet(t *testing.T) *mapping.Set {
	t.Helper()
	s, err := mapping.Load(nil, mapping.Shipped(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tableEvent(table, action string, modCount int64, changed []string, record map[string]string) *events.SNEvent {
	e := ev(action, modCount, changed, record)
	e.Table = table
	return e
}

// The echo decision reads each table's own mapping: what the platform
// derives on change_request is not what it derives on incident.
func TestIsEcho_DerivedFieldsArePerTable(t *testing.T) {
	all := shippedSet(t)
	tests := []struct {
		name    string
		table   string
		written map[string]string
		changed []string
		record  map[string]string
		want    bool
	}{
		{"incident: priority derived from urgency", "incident", map[string]string{"urgency": "1"},
			[]string{"urgency", "priority"}, map[string]string{"urgency": "1", "priority": "2"}, true},
		{"change_request: priority is set by people, not derived", "change_request", map[string]string{"risk": "2"},
			[]string{"risk", "priority"}, map[string]string{"risk": "2", "priority": "1"}, false},
		{"change_request: close stamps derived from the state", "change_request", map[string]string{"state": "3", "close_code": "successful", "close_notes": "done"},
			[]string{"state", "close_code", "close_notes", "active", "closed_at", "closed_by"},
			map[string]string{"state": "3", "close_code": "successful", "close_notes": "done", "active": "false", "closed_at": "2026-11-28 10:00:00", "closed_by": "x"}, true},
		{"problem: fix stamps derived", "problem", map[string]string{"state": "104"},
			[]string{"state", "fix_at", "fix_by"}, map[string]string{"state": "104", "fix_at": "2026-11-28 10:00:00", "fix_by": "x"}, true},
		{"problem: someone else's cause notes", "problem", map[string]string{"state": "104"},
			[]string{"state", "cause_notes"}, map[string]string{"state": "104", "cause_notes": "disk full"}, false},
		{"sc_req_item: stage follows the state", "sc_req_item", map[string]string{"state": "3"},
			[]string{"state", "stage", "active"}, map[string]string{"state": "3", "stage": "complete", "active": "false"}, true},
		{"sn_hr_core_case: priority is not derived", "sn_hr_core_case", map[string]string{"state": "18"},
			[]string{"state", "priority"}, map[string]string{"state": "18", "priority": "2"}, false},
		{"a table without a mapping knows only system fields", "u_custom", map[string]string{"state": "2"},
			[]string{"state", "active", "sys_updated_on"}, map[string]string{"state": "2", "active": "true"}, false},
		{"system fields derived on every table", "u_custom", map[string]string{"state": "2"},
			[]string{"state", "sys_updated_on", "sys_mod_count"}, map[string]string{"state": "2"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{Tables: all})
			p := c.BeginWrite(tt.table, sysID, "", tt.written)
			defer p.Cancel()
			if got := c.IsEcho(tableEvent(tt.table, "update", 5, tt.changed, tt.record)); got != tt.want {
				t.Fatalf("IsEcho = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIsEcho_JournalFieldsArePerTable(t *testing.T) {
	rendered := "2026-11-28 10:00:00 - System Administrator (Work notes)\nchecked the router\n\n"
	for _, table := range []string{"change_request", "problem", "sc_req_item", "sn_hr_core_case"} {
		t.Run(table, func(t *testing.T) {
			c := New(Config{Tables: shippedSet(t)})
			p := c.BeginWrite(table, sysID, "", map[string]string{"work_notes": "checked the router"})
			defer p.Cancel()
			if !c.IsEcho(tableEvent(table, "update", 5, []string{"work_notes"}, map[string]string{"work_notes": rendered})) {
				t.Fatal("the rendered journal entry of our work note was not matched")
			}
		})
	}
	t.Run("a table without a mapping compares the value as written", func(t *testing.T) {
		c := New(Config{Tables: shippedSet(t)})
		p := c.BeginWrite("u_custom", sysID, "", map[string]string{"work_notes": "checked the router"})
		defer p.Cancel()
		if c.IsEcho(tableEvent("u_custom", "update", 5, []string{"work_notes"}, map[string]string{"work_notes": rendered})) {
			t.Fatal("work_notes is no journal field of an unmapped table")
		}
	})
}

func TestIsEcho_InsertFillsArePerTable(t *testing.T) {
	sent := map[string]string{"short_description": "Upgrade the router", "correlation_id": "CHG-7"}
	filled := func(table string, extra map[string]string) *events.SNEvent {
		rec := map[string]string{"short_description": "Upgrade the router", "correlation_id": "CHG-7", "number": "CHG0030001", "sys_created_on": "2026-11-28 10:00:00"}
		changed := []string{"short_description", "correlation_id", "number", "sys_created_on"}
		for f, v := range extra {
			rec[f] = v
			changed = append(changed, f)
		}
		return tableEvent(table, "insert", 0, changed, rec)
	}
	tests := []struct {
		name  string
		table string
		extra map[string]string
		want  bool
	}{
		{"change_request: the change model's defaults", "change_request", map[string]string{"type": "normal", "chg_model": "abc", "state": "-5", "risk": "3"}, true},
		{"incident: a type is no insert default", "incident", map[string]string{"type": "normal"}, false},
		{"incident: its own defaults", "incident", map[string]string{"state": "1", "impact": "3", "urgency": "3", "priority": "5"}, true},
		{"sn_hr_core_case: opened_for filled", "sn_hr_core_case", map[string]string{"opened_for": "abc", "state": "1"}, true},
		{"someone's field on a table that does not fill it", "sc_req_item", map[string]string{"assigned_to": "abc"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{Tables: shippedSet(t)})
			p := c.BeginWrite(tt.table, "", "CHG-7", sent)
			defer p.Cancel()
			if got := c.IsEcho(filled(tt.table, tt.extra)); got != tt.want {
				t.Fatalf("IsEcho = %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("no mapping: no link field to match an insert by", func(t *testing.T) {
		c := New(Config{})
		p := c.BeginWrite("incident", "", "CHG-7", sent)
		defer p.Cancel()
		if c.IsEcho(filled("incident", nil)) {
			t.Fatal("an insert was matched by a link field no mapping names")
		}
	})
}
