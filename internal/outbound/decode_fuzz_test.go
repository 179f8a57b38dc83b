package outbound_test

import (
	"encoding/json"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/outbound"
)

// FuzzDecodeChange: an app message, whatever its subject and bytes, decodes
// to a change the writer can act on (entity and action from the subject, an
// external id) or to an error; never a panic, never a half-filled change.
func FuzzDecodeChange(f *testing.F) {
	f.Add("app.ticket.upsert", []byte(`{"external_id":"TCK-1042","sys_id":"","version":7,"updated_at":"2026-11-28T10:00:03Z","fields":{"title":"Email down","status":"in_progress","priority":2,"comment":null}}`))
	f.Add("app.ticket.delete", []byte(`{"external_id":"TCK-1","version":1}`))
	f.Add("app.change.upsert", []byte(`{"external_id":"","fields":{}}`))
	f.Add("app.ticket.upsert", []byte(`{"external_id":"x","fields":{"a":{"value":"b"}},"version":-1}`))
	f.Add("app..upsert", []byte(`{}`))
	f.Add("app.ticket.attachment", []byte(`null`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		ch, err := outbound.DecodeChange(subject, data)
		if err != nil {
			return
		}
		if ch.ExternalID == "" || ch.Entity == "" {
			t.Fatalf("%s %q decoded without external id or entity: %+v", subject, data, ch)
		}
		if ch.Action != events.AppUpsert && ch.Action != events.AppDelete {
			t.Fatalf("%s decoded with action %q", subject, ch.Action)
		}
		if _, err := json.Marshal(ch.AppChange); err != nil {
			t.Fatalf("decoded change does not encode again: %v", err)
		}
	})
}
