package outbound

import (
	"encoding/json"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
)

// FuzzChangeOf: whatever a message holds, the writeback either finds whom
// to tell of its result (an entity and an external id, the decodable
// change or as much of it as the probe reads) or tells no one; never a
// panic, and a result built from it always encodes.
func FuzzChangeOf(f *testing.F) {
	f.Add("app.ticket.upsert", []byte(`{"external_id":"TCK-1042","version":7,"fields":{"title":"Email down"}}`))
	f.Add("app.ticket.archive", []byte(`{"external_id":"TCK-1","version":3}`))
	f.Add("app.ticket.upsert", []byte(`{"external_id":"TCK-2","version":"seven","fields":[]}`))
	f.Add("app.ticket.upsert", []byte(`{"external_id":"","version":1}`))
	f.Add("app..upsert", []byte(`{"external_id":"x"}`))
	f.Add("sn.incident.update", []byte(`{"external_id":"x"}`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		ch, ok := changeOf(subject, data)
		if !ok {
			return
		}
		if ch.ExternalID == "" || ch.Entity == "" {
			t.Fatalf("%s %q: someone to tell without an external id or entity: %+v", subject, data, ch)
		}
		r := events.Result{ExternalID: ch.ExternalID, Version: ch.Version, Entity: ch.Entity, Action: ch.Action, Outcome: events.OutcomeRejected}
		if _, err := json.Marshal(r); err != nil {
			t.Fatalf("result of %s %q does not encode: %v", subject, data, err)
		}
		if events.ResultSubject(r.Entity, r.Outcome) == "" || events.ResultMsgID(r.Entity, r.ExternalID, r.Version, r.Outcome) == "" {
			t.Fatal("no subject or id")
		}
	})
}
