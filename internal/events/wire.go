package events

import (
	"bytes"
	"encoding/json"
)

// EncodeWebhookBody renders an event exactly as the shipped business rules do
// (JSON.stringify of an object built in SPEC §2 field order, record keys
// sorted, no HTML escaping), so the simulator's business-rule emulation and
// the real scripts send byte-identical bodies for the same record.
func EncodeWebhookBody(e *SNEvent) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
