package dedupe

import (
	"fmt"
	"maps"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/events"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sysID = "9d385017c611228701d22104cc95c371"

func ev(action string, mc int64, changed []string, rec map[string]string) *events.SNEvent {
	return &events.SNEvent{Table: "incident", SysID: sysID, Action: action, SysModCount: events.ModCount(mc), Changed: changed, Record: rec}
}

func TestIsEcho_RecordedVersionOnly(t *testing.T) {
	c := New(Config{Tables: incidentOnly})
	c.RecordWrite("incident", sysID, 4)
	if !c.IsEcho(ev("update", 4, nil, nil)) {
		t.Error("version 4 was written by the bridge but was not recognised as an echo")
	}
	for _, mc := range []int64{3, 5} {
		if c.IsEcho(ev("update", mc, nil, nil)) {
			t.Errorf("version %d was not written by the bridge but was treated as an echo", mc)
		}
	}
	if c.IsEcho(&events.SNEvent{Table: "problem", SysID: sysID, SysModCount: 4}) {
		t.Error("same sys_id and version on another table must not be an echo")
	}
}

func TestIsEcho_WebhookBeforeResponse(t *testing.T) {
	tests := []struct {
		name    string
		changed []string
		record  map[string]string
		want    bool
	}{
		{"changed fields match what we wrote", []string{"state", "short_description"}, map[string]string{"state": "2", "short_description": "Email down"}, true},
		{"subset of our fields changed", []string{"state"}, map[string]string{"state": "2"}, true},
		{"derived field changed too", []string{"urgency", "priority"}, map[string]string{"urgency": "1", "priority": "2"}, true},
		{"a field we did not write changed", []string{"state", "assigned_to"}, map[string]string{"state": "2", "assigned_to": "abc"}, false},
		{"our field with another value", []string{"state"}, map[string]string{"state": "3"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{Tables: incidentOnly})
			p := c.BeginWrite("incident", sysID, "", map[string]string{"state": "2", "short_description": "Email down", "urgency": "1"})
			got := c.IsEcho(ev("update", 7, tt.changed, tt.record))
			if got != tt.want {
				t.Fatalf("IsEcho = %v, want %v", got, tt.want)
			}
			p.Done(sysID, 7)
			if !c.IsEcho(ev("update", 7, tt.changed, tt.record)) {
				t.Fatal("after Done(7) the version must be recognised whatever its fields")
			}
		})
	}
}

func TestIsEcho_InsertMatchedByCorrelation(t *testing.T) {
	c := New(Config{Tables: incidentOnly})
	p := c.BeginWrite("incident", "", "TCK-1042", map[string]string{"short_description": "New", "correlation_id": "TCK-1042", "comments": "first"})
	// The platform fills number, defaults and audit fields on insert, and a
	// raw read renders the journal field empty: still our insert.
	ins := ev("insert", 0, []string{"short_description", "correlation_id", "number", "state", "opened_at", "comments"},
		map[string]string{"short_description": "New", "correlation_id": "TCK-1042", "number": "INC0010001", "state": "1", "opened_at": "2026-11-28 10:00:00", "comments": ""})
	if !c.IsEcho(ins) {
		t.Fatal("insert webhook carrying our correlation_id and fields was not recognised")
	}
	other := ev("insert", 0, []string{"short_description", "correlation_id"}, map[string]string{"short_description": "New", "correlation_id": "TCK-9"})
	other.SysID = "00000000000000000000000000000001"
	if c.IsEcho(other) {
		t.Fatal("an insert with another correlation id is not ours")
	}
	foreign := ev("insert", 0, []string{"short_description", "correlation_id", "assigned_to"}, map[string]string{"short_description": "New", "correlation_id": "TCK-1042", "assigned_to": "abc"})
	foreign.SysID = "00000000000000000000000000000002"
	if c.IsEcho(foreign) {
		t.Fatal("an insert that sets a field we did not send is not ours")
	}
	differs := ev("insert", 0, []string{"short_description", "correlation_id"}, map[string]string{"short_description": "Other", "correlation_id": "TCK-1042"})
	differs.SysID = "00000000000000000000000000000003"
	if c.IsEcho(differs) {
		t.Fatal("an insert whose values differ from what we sent is not ours")
	}
	p.Done(sysID, 0)
}

func TestIsEcho_JournalFieldRendering(t *testing.T) {
	for _, rendered := range []string{"", "Looking into it", "2026-11-28 10:00:00 - System Administrator (Additional comments)\nLooking into it\n\n"} {
		c := New(Config{Tables: incidentOnly})
		p := c.BeginWrite("incident", sysID, "", map[string]string{"comments": "Looking into it", "state": "2"})
		if !c.IsEcho(ev("update", 5, []string{"comments", "state"}, map[string]string{"comments": rendered, "state": "2"})) {
			t.Errorf("journal field rendered as %q: our comment was not recognised", rendered)
		}
		p.Cancel()
	}
	c := New(Config{Tables: incidentOnly})
	p := c.BeginWrite("incident", sysID, "", map[string]string{"comments": "Looking into it"})
	defer p.Cancel()
	if c.IsEcho(ev("update", 5, []string{"comments"}, map[string]string{"comments": "2026-11-28 10:00:00 - Beth Anglin (Additional comments)\nSomething else\n\n"})) {
		t.Error("another user's comment matched our pending write")
	}
}

func TestPending_CancelAndExpiry(t *testing.T) {
	clk := newClock()
	c := New(Config{Tables: incidentOnly, PendingTTL: 30 * time.Second, Now: clk.now})
	fields := map[string]string{"state": "2"}
	p := c.BeginWrite("incident", sysID, "", fields)
	p.Cancel()
	if c.IsEcho(ev("update", 1, []string{"state"}, fields)) {
		t.Fatal("a cancelled write must not match webhooks")
	}
	c.BeginWrite("incident", sysID, "", fields)
	clk.advance(31 * time.Second)
	if c.IsEcho(ev("update", 1, []string{"state"}, fields)) {
		t.Fatal("an expired pending write must not match webhooks")
	}
}

func TestAppEcho(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := New(Config{Tables: incidentOnly, Registerer: reg})
	applied := map[string]string{"title": "Email down", "status": "in_progress"}
	c.RecordApplied("ticket", "TCK-1", applied)
	if !c.IsAppEcho("ticket", "TCK-1", map[string]string{"status": "in_progress", "title": "Email down"}) {
		t.Error("the app republishing exactly what was applied must be an echo")
	}
	if c.IsAppEcho("ticket", "TCK-1", map[string]string{"title": "Email down", "status": "resolved"}) {
		t.Error("a real change by the app must not be an echo")
	}
	if got := testutil.ToFloat64(c.echoes.WithLabelValues(DirSaaS)); got != 1 {
		t.Errorf("saas echo metric = %v, want 1", got)
	}
}

func TestTTLAndEvictions(t *testing.T) {
	reg := prometheus.NewRegistry()
	clk := newClock()
	c := New(Config{Tables: incidentOnly, Size: 2, TTL: time.Minute, Registerer: reg, Now: clk.now})
	c.RecordWrite("incident", sysID, 1)
	c.RecordWrite("incident", sysID, 2)
	c.RecordWrite("incident", sysID, 3) // evicts 1
	if c.Wrote("incident", sysID, 1) {
		t.Error("oldest entry should have been evicted at size 2")
	}
	if got := testutil.ToFloat64(c.evictions); got < 1 {
		t.Errorf("evictions metric = %v, want >= 1", got)
	}
	if !c.Wrote("incident", sysID, 3) {
		t.Error("entry expired before its TTL")
	}
	clk.advance(time.Minute)
	if c.Wrote("incident", sysID, 3) {
		t.Error("entry should have expired after its TTL")
	}
}

func TestConcurrentUse(t *testing.T) {
	c := New(Config{Tables: incidentOnly, Size: 1000})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				id := fmt.Sprintf("%032x", w*1000+i)
				p := c.BeginWrite("incident", id, "", map[string]string{"state": "2"})
				e := &events.SNEvent{Table: "incident", SysID: id, Action: "update", SysModCount: 1, Changed: []string{"state"}, Record: events.Fields{"state": "2"}}
				if !c.IsEcho(e) {
					t.Errorf("worker %d: pending write %d not matched", w, i)
					return
				}
				p.Done(id, 1)
			}
		}()
	}
	wg.Wait()
}

func TestHashFieldsOrderIndependent(t *testing.T) {
	a := HashFields(map[string]string{"a": "1", "b": "2"})
	b := HashFields(map[string]string{"b": "2", "a": "1"})
	if a != b {
		t.Fatal("hash depends on map order")
	}
	if HashFields(map[string]string{"a": "1b", "": "2"}) == HashFields(map[string]string{"a": "1", "b": "2"}) {
		t.Fatal("field boundaries must be part of the hash")
	}
}

// BenchmarkLRU measures Add and Get on a cache holding 1M entries and the
// memory each entry costs.
func BenchmarkLRU(b *testing.B) {
	const n = 1_000_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := New(Config{Tables: incidentOnly, Size: n})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%032x", i)
	}
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i, id := range ids {
		c.RecordWrite("incident", id, int64(i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / n
	b.Run("Add", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			c.RecordWrite("incident", ids[i%n], int64(n+i))
			i++
		}
		b.ReportMetric(perEntry, "bytes/entry")
	})
	b.Run("Get", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			c.Wrote("incident", ids[i%n], int64(i%n))
			i++
		}
	})
	runtime.KeepAlive(ids)
}

// BenchmarkIsEcho is the cost the echo check adds to every ingested event.
func BenchmarkIsEcho(b *testing.B) {
	c := New(Config{Tables: incidentOnly, Size: 100_000})
	for i := range 100_000 {
		c.RecordWrite("incident", fmt.Sprintf("%032x", i), 3)
	}
	hit := &events.SNEvent{Table: "incident", SysID: fmt.Sprintf("%032x", 42), Action: "update", SysModCount: 3, Changed: []string{"state"}, Record: events.Fields{"state": "2"}}
	miss := &events.SNEvent{Table: "incident", SysID: fmt.Sprintf("%032x", 42), Action: "update", SysModCount: 4, Changed: []string{"state"}, Record: events.Fields{"state": "2"}}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.IsEcho(hit)
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.IsEcho(miss)
		}
	})
}

// BenchmarkRecordApplied is the SaaS-direction side: what the app was last
// told, per entity id (a six-field ticket), and the app-echo check.
func BenchmarkRecordApplied(b *testing.B) {
	const n = 100_000
	fields := func(i int) map[string]string {
		return map[string]string{"title": fmt.Sprintf("ticket %d", i), "description": "Outlook cannot connect", "status": "in_progress", "priority": "3", "urgency": "2", "impact": "2"}
	}
	var before, after runtime.MemStats
	c := New(Config{Tables: incidentOnly, Size: n})
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("TCK-%07d", i)
	}
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i, id := range ids {
		c.RecordApplied("ticket", id, fields(i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / n
	same := fields(42)
	b.Run("IsAppEcho", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.IsAppEcho("ticket", ids[42], same)
		}
		b.ReportMetric(perEntry, "bytes/entry")
	})
	runtime.KeepAlive(ids)
}

func TestIsEcho_SideEffectOnAFieldTheWriteLeftAloneIsNotOurs(t *testing.T) {
	c := New(Config{Tables: incidentOnly})
	p := c.BeginWriteWith("incident", sysID, "", map[string]string{"urgency": "1"}, map[string]string{"impact": "2", "priority": "3"})
	defer p.Cancel()
	// priority is derived, so "changed" alone would call this ours; the
	// app knows priority 3, so the new 2 must reach it.
	if c.IsEcho(ev("update", 1, []string{"urgency", "priority"}, map[string]string{"urgency": "1", "impact": "2", "priority": "2"})) {
		t.Fatal("a write whose computed side effect the app has not seen was matched as a pure echo")
	}
	if !c.IsEcho(ev("update", 1, []string{"urgency"}, map[string]string{"urgency": "1", "impact": "2", "priority": "3"})) {
		t.Fatal("a write that left the other fields as the app knows them is an echo")
	}
}

// The writeback claims an update only as the version after the one the
// bridge knew: a webhook of any other version carries changes the app has
// not seen, and matching it as the write's echo before the response would
// drop it for good.
func TestIsEcho_PendingUpdateMatchesOnlyTheVersionItCanClaim(t *testing.T) {
	c := New(Config{Tables: incidentOnly})
	p := c.BeginUpdate("incident", sysID, 5, map[string]string{"state": "3"}, map[string]string{"urgency": "2"})
	defer p.Cancel()
	rec := map[string]string{"state": "3", "urgency": "2"}
	if c.IsEcho(ev("update", 6, []string{"state"}, rec)) {
		t.Error("version 6 matched a pending update that can only be claimed as version 5")
	}
	if _, ok := p.Matched(); ok {
		t.Error("Matched reports a webhook although none matched")
	}
	if !c.IsEcho(ev("update", 5, []string{"state"}, rec)) {
		t.Error("version 5 with exactly the written value is the update's echo")
	}
	if mc, ok := p.Matched(); !ok || mc != 5 {
		t.Errorf("Matched = %d, %v; want 5, true", mc, ok)
	}
	none := c.BeginUpdate("incident", sysID, -1, map[string]string{"state": "1"}, nil)
	defer none.Cancel()
	if c.IsEcho(ev("update", 7, []string{"state"}, map[string]string{"state": "1"})) {
		t.Error("a pending update with no claimable version matched a webhook")
	}
}

func TestIsEcho_PendingWriteNotKeptAsSentIsNotOurs(t *testing.T) {
	c := New(Config{Tables: incidentOnly})
	p := c.BeginWrite("incident", sysID, "", map[string]string{"state": "3", "short_description": "Printer"})
	defer p.Cancel()
	// ServiceNow kept the old state (an ACL, a business rule): the change
	// list omits it, but the record shows the app's value did not land.
	if c.IsEcho(ev("update", 1, []string{"short_description"}, map[string]string{"state": "2", "short_description": "Printer"})) {
		t.Error("a write ServiceNow did not keep as sent was matched as an echo")
	}
}

func TestLastHandOver_TimeAndReplacedValuesNotTheAppsOwn(t *testing.T) {
	c := New(Config{Tables: incidentOnly})
	if _, ok := c.LastHandOver("ticket", "TCK-1"); ok {
		t.Fatal("nothing was handed over yet")
	}
	before := time.Now()
	c.RecordApplied("ticket", "TCK-1", map[string]string{"status": "new", "urgency": "3"})
	c.RecordApplied("ticket", "TCK-1", map[string]string{"status": "in_progress", "urgency": "2"})
	ho, ok := c.LastHandOver("ticket", "TCK-1")
	if !ok || ho.At.Before(before) {
		t.Fatalf("LastHandOver = %+v, %v", ho, ok)
	}
	if want := map[string]string{"status": "new", "urgency": "3"}; !maps.Equal(ho.Replaced, want) {
		t.Errorf("Replaced = %v, want %v", ho.Replaced, want)
	}
	// The app's own values are not a hand-over: the time stays, and a
	// field it set itself is no longer one the hand-over replaced.
	c.MergeApplied("ticket", "TCK-1", map[string]string{"status": "on_hold"})
	ho2, _ := c.LastHandOver("ticket", "TCK-1")
	if !ho2.At.Equal(ho.At) {
		t.Error("MergeApplied counted as a hand-over")
	}
	if want := map[string]string{"urgency": "3"}; !maps.Equal(ho2.Replaced, want) {
		t.Errorf("Replaced after the app's write = %v, want %v", ho2.Replaced, want)
	}
	if got, _ := c.Applied("ticket", "TCK-1"); got["status"] != "on_hold" || got["urgency"] != "2" {
		t.Errorf("Applied = %v after the merge", got)
	}
}

// IsEchoOf reads the record only when a write in flight must be compared
// with it, and then decides exactly as IsEcho does with the record in hand.
func TestIsEchoOf_ReadsTheRecordOnlyWhenAWriteIsInFlight(t *testing.T) {
	c := New(Config{Tables: incidentOnly})
	reads := 0
	record := func(rec map[string]string) func() events.Fields {
		return func() events.Fields { reads++; return rec }
	}
	lazy := func(action string, mc int64, changed []string) *events.SNEvent {
		e := ev(action, mc, changed, nil)
		return e
	}
	if c.IsEchoOf(lazy("update", 3, []string{"state"}), record(map[string]string{"state": "2"})) || reads != 0 {
		t.Fatalf("nothing written or in flight: echo reported or the record read (%d reads)", reads)
	}
	c.RecordWrite("incident", sysID, 4)
	if !c.IsEchoOf(lazy("update", 4, []string{"state"}), record(map[string]string{"state": "2"})) || reads != 0 {
		t.Fatalf("a written version: not an echo, or the record read (%d reads)", reads)
	}
	p := c.BeginWrite("incident", sysID, "", map[string]string{"state": "2"})
	defer p.Cancel()
	if c.IsEchoOf(lazy("update", 5, []string{"state"}), record(map[string]string{"state": "3"})) {
		t.Fatal("a write in flight of state 2: an event with state 3 is not its echo")
	}
	if !c.IsEchoOf(lazy("update", 6, []string{"state"}), record(map[string]string{"state": "2"})) {
		t.Fatal("a write in flight of state 2: an event with state 2 is its echo")
	}
	if reads != 2 {
		t.Fatalf("the record was read %d times for 2 events compared with a write in flight, want once each", reads)
	}
}
