package outbound_test

import (
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// An app create's insert webhook is the bridge's echo for every shipped
// table, also when it arrives before the POST's answer (matched by the link
// field against the pending write): every field the webhook carries that
// the bridge did not send must be one the table's mapping says an insert
// fills (insert_fills) or the platform derives. A default the mapping does
// not name (change_request's category, say) would send the app's own
// record back to it as a ServiceNow change.
func TestWriteback_AppCreateIsAnEchoPerTableBeforeTheAnswer(t *testing.T) {
	tables := servedTables(t)
	h := newHarness(t, perTableOpts(tables))
	if err := h.sim.SetWebhookOptions(snsim.WebhookOptions{BeforeResponse: true}); err != nil {
		t.Fatal(err)
	}
	for _, table := range tables {
		t.Run(table, func(t *testing.T) {
			h := h.on(t)
			entity, _ := h.maps.Entity(table)
			id := "NEW-" + table
			v := h.publishAs(entity, events.AppUpsert, id, map[string]string{"title": "Created by the app"})
			h.waitWrittenAs(entity, id, v)
			h.waitHooks()
			_, sysID, ok, err := h.links.SysID(h.ctx, entity, id)
			if err != nil || !ok {
				t.Fatalf("%s not linked: %v", id, err)
			}
			if echo, other := h.hooks.counts(sysID); echo != 1 || other != 0 {
				rec := h.recordOf(table, sysID)
				t.Errorf("the insert webhook of the app's %s: %d echoes, %d others; want one echo (record %v)", table, echo, other, rec)
			}
		})
	}
}
