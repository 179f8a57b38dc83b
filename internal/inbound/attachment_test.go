package inbound

import (
	"net/http"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
)

// The attachment business rule's webhooks are stored whatever BRIDGE_TABLES
// names: the rule only sends those of synced tables' records, and the
// attachment pipeline decides about the rest.
func TestIngest_AttachmentEventStoredWhateverTheTables(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Tables = []string{"change_request"} })
	ev := map[string]any{
		"table": "sys_attachment", "sys_id": sysID(7), "action": "insert", "sys_mod_count": "0",
		"sys_updated_on": "2026-11-28 10:00:00",
		"record": map[string]any{"table_name": "change_request", "table_sys_id": sysID(1), "file_name": "screen.png",
			"content_type": "image/png", "size_bytes": "2048", "hash": "aa"},
	}
	wantAccepted(t, h.send(mustJSON(t, ev)), 1, 0, 0)
	msgs := h.stored()
	if len(msgs) != 1 || msgs[0].Subject != "sn.sys_attachment.insert" || msgs[0].Header.Get(events.HeaderMsgID) != "sys_attachment:"+sysID(7)+":0:insert" {
		t.Fatalf("stored %d messages (%v), want one on sn.sys_attachment.insert with id sys_attachment:<sys_id>:0:insert", len(msgs), msgs)
	}
	// Any other table outside BRIDGE_TABLES is still refused.
	ev["table"] = "incident"
	if r := h.send(mustJSON(t, ev)); r.status != http.StatusUnprocessableEntity {
		t.Errorf("an incident event with only change_request synced answered %d %s, want 422", r.status, r.body)
	}
}
