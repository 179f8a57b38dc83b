package outbound_test

import (
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
)

// A mapping that links through another field than correlation_id: the
// create writes the external id there, and with the link bucket lost the
// writeback finds the record again by that field, not by correlation_id
// (which would miss it and create a duplicate).
func TestWriteback_LostLinkFoundByTheMappingsLinkField(t *testing.T) {
	own, err := mapping.Parse("incident.yaml", []byte(`table: incident
entity: ticket
link:
  field: correlation_display
fields:
  - saas: title
    servicenow: short_description
  - saas: status
    servicenow: state
    values: {new: "1", in_progress: "2", resolved: "6"}
`))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, opts{extraMap: []*mapping.Table{own}})
	v := h.publish(events.AppUpsert, "TCK-LNK", map[string]string{"title": "Printer on fire", "status": "new"}, time.Time{})
	h.waitWritten("TCK-LNK", v)
	_, id, ok, err := h.links.SysID(h.ctx, "ticket", "TCK-LNK")
	if err != nil || !ok {
		t.Fatalf("link not stored: %v %v", ok, err)
	}
	if rec := h.record(id); rec["correlation_display"] != "TCK-LNK" || rec["correlation_id"] != "" {
		t.Fatalf("created record links through correlation_display %q and correlation_id %q; want TCK-LNK and nothing",
			rec["correlation_display"], rec["correlation_id"])
	}
	if err := h.links.Unlink(h.ctx, "ticket", "TCK-LNK"); err != nil {
		t.Fatal(err)
	}
	v = h.publish(events.AppUpsert, "TCK-LNK", map[string]string{"title": "Printer on fire", "status": "in_progress"}, time.Time{})
	h.waitWritten("TCK-LNK", v)
	if n := h.sim.Count("incident"); n != 1 {
		t.Fatalf("%d incidents after the link bucket lost the link, want 1: the lookup did not use the mapping's link field", n)
	}
	if got := h.record(id)["state"]; got != "2" {
		t.Errorf("state = %q after the second change, want 2 (written to the record found by correlation_display)", got)
	}
}
