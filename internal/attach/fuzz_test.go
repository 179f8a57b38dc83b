package attach

import (
	"encoding/json"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
)

// FuzzDecodeAppMessage: any subject and body decode to a checked message
// or an error, never a panic; a message that passes the checks names a
// record and a file.
func FuzzDecodeAppMessage(f *testing.F) {
	f.Add("app.ticket.attachment", []byte(`{"action":"add","external_id":"TCK-1","attachment_id":"A1","object":"app/ticket/TCK-1/A1"}`))
	f.Add("app.ticket.attachment", []byte(`{"action":"remove","external_id":"TCK-1","attachment_sys_id":"0123456789abcdef0123456789abcdef"}`))
	f.Add("app.ticket.upsert", []byte(`{}`))
	f.Add("app..attachment", []byte(`null`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		m, err := decodeAppMessage(subject, data)
		if err != nil {
			return
		}
		if m.Entity == "" {
			t.Fatalf("decoded %q without an entity", subject)
		}
		if checkAppMessage(m) != nil {
			return
		}
		if m.ExternalID == "" || (m.Action == "add" && (m.AttachmentID == "" || m.Object == "")) || (m.Action == "remove" && m.AttachmentID == "" && m.AttachmentSysID == "") {
			t.Fatalf("checked message %+v names no record or file", m)
		}
	})
}

// FuzzSNFileOf: any stored event reads as an attachment of a valid record
// or an error.
func FuzzSNFileOf(f *testing.F) {
	f.Add([]byte(`{"table":"sys_attachment","sys_id":"0123456789abcdef0123456789abcdef","action":"insert","record":{"table_name":"incident","table_sys_id":"fedcba9876543210fedcba9876543210","size_bytes":"12","hash":"zz"}}`))
	f.Add([]byte(`{"table":"incident"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev events.SNEvent
		if json.Unmarshal(data, &ev) != nil {
			return
		}
		a, err := snFileOf(&ev)
		if err != nil {
			return
		}
		if !events.ValidSysID(a.ID) || !events.ValidTable(a.Table) || !events.ValidSysID(a.SysID) || a.Size < -1 {
			t.Fatalf("accepted %+v from %s", a, data)
		}
	})
}
