package wire

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestHandled_Supersedes(t *testing.T) {
	cases := []struct {
		name   string
		have   Handled
		v      int64
		action string
		want   bool
	}{
		{"newer update", Handled{Version: 3}, 4, ActionUpdate, true},
		{"same update again", Handled{Version: 3}, 3, ActionUpdate, false},
		{"older update", Handled{Version: 3}, 2, ActionUpdate, false},
		{"delete of the handled version", Handled{Version: 3}, 3, ActionDelete, true},
		{"delete again", Handled{Version: 3, Deleted: true}, 3, ActionDelete, false},
		{"older delete", Handled{Version: 3}, 2, ActionDelete, false},
		{"update after a delete of an older version", Handled{Version: 3, Deleted: true}, 4, ActionUpdate, true},
		{"app delete is a new version", Handled{Version: 3}, 4, AppDelete, true},
		{"first insert over nothing", Handled{}, 0, ActionInsert, false},
	}
	for _, c := range cases {
		if got := c.have.Supersedes(c.v, c.action); got != c.want {
			t.Errorf("%s: %+v.Supersedes(%d, %s) = %v, want %v", c.name, c.have, c.v, c.action, got, c.want)
		}
	}
}

func TestApplyMessage_RecordKey(t *testing.T) {
	cases := []struct {
		m    ApplyMessage
		want string
	}{
		{ApplyMessage{Entity: "ticket", AppChange: AppChange{Table: "incident", SysID: "abc", ExternalID: "T-1"}}, "incident/abc"},
		{ApplyMessage{Entity: "ticket", AppChange: AppChange{SysID: "abc"}}, "ticket/abc"},
		{ApplyMessage{Entity: "ticket", AppChange: AppChange{ExternalID: "T-1"}}, "ticket/T-1"},
		{ApplyMessage{Entity: "ticket"}, ""},
	}
	for _, c := range cases {
		if got := c.m.RecordKey(); got != c.want {
			t.Errorf("RecordKey of %+v = %q, want %q", c.m, got, c.want)
		}
	}
}

// The apply message's body is the contract of docs/integrating.md: the app
// change shape plus entity and action, the message id outside the body.
func TestApplyMessage_BodyIsTheDocumentedShape(t *testing.T) {
	m := ApplyMessage{
		Entity: "ticket", Action: ActionUpdate,
		AppChange: AppChange{ExternalID: "TCK-1042", SysID: "9d385017c611228701d22104cc95c371", Number: "INC0010001", Table: "incident",
			Version: 4, UpdatedAt: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC), Fields: Fields{"title": "Email down", "status": "in_progress"}},
		MsgID: "incident:9d385017c611228701d22104cc95c371:4:update",
	}
	body, err := m.Body()
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"entity":"ticket","action":"update","external_id":"TCK-1042","sys_id":"9d385017c611228701d22104cc95c371","number":"INC0010001","table":"incident","version":4,"updated_at":"2026-11-28T10:00:00Z","fields":{"status":"in_progress","title":"Email down"}}`
	if string(body) != want {
		t.Errorf("body\n%s\nwant\n%s", body, want)
	}
	var back ApplyMessage
	if err := json.Unmarshal(body, &back); err != nil {
		t.Fatal(err)
	}
	back.MsgID = m.MsgID
	if !reflect.DeepEqual(back, m) {
		t.Errorf("round trip %+v, want %+v", back, m)
	}
	if m.Subject() != "bridge.apply.ticket.update" || ApplyMsgID("incident", m.SysID, 4, ActionUpdate) != m.MsgID {
		t.Errorf("subject %q, id %q", m.Subject(), ApplyMsgID("incident", m.SysID, 4, ActionUpdate))
	}
}

func TestNames(t *testing.T) {
	checks := map[string]string{
		AppSubject("ticket", AppUpsert):                            "app.ticket.upsert",
		ResultSubject("ticket", OutcomeRejected):                   "bridge.result.ticket.rejected",
		AppMsgID("ticket", "TCK-1", 7, AppDelete):                  "ticket:TCK-1:7:delete",
		ResultMsgID("ticket", "TCK-1", 7, OutcomeCreated):          "result:ticket:TCK-1:7:created",
		MsgID("incident", "abc", 2, ActionInsert):                  "incident:abc:2:insert",
		RecordURL("https://x.service-now.com/", "incident", "abc"): "https://x.service-now.com/nav_to.do?uri=incident.do?sys_id=abc",
		RecordURL("", "incident", "abc"):                           "",
	}
	for got, want := range checks {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	for s, want := range map[string]bool{"ticket": true, "hr_case": true, "Ticket": false, "a.b": false, "": false, "9x": false} {
		if ValidEntity(s) != want {
			t.Errorf("ValidEntity(%q) = %v", s, !want)
		}
	}
}

// FuzzDecodeApplyMessage: whatever an apply message body decodes to
// re-encodes to a body that decodes to the same message.
func FuzzDecodeApplyMessage(f *testing.F) {
	f.Add([]byte(`{"entity":"ticket","action":"update","external_id":"TCK-1","sys_id":"9d385017c611228701d22104cc95c371","version":4,"updated_at":"2026-11-28T10:00:00Z","fields":{"title":"x","n":3,"ref":{"value":"v","link":"l"},"z":null}}`))
	f.Add([]byte(`{"fields":null}`))
	f.Add([]byte(`{"fields":{"a":[1]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m ApplyMessage
		if json.Unmarshal(data, &m) != nil {
			return
		}
		body, err := m.Body()
		if err != nil {
			t.Fatalf("re-encode %+v: %v", m, err)
		}
		var back ApplyMessage
		if err := json.Unmarshal(body, &back); err != nil {
			t.Fatalf("the re-encoded body %s does not decode: %v", body, err)
		}
		if !reflect.DeepEqual(back, m) && !(len(back.Fields) == 0 && len(m.Fields) == 0) {
			t.Fatalf("round trip changed the message:\n%+v\n%+v", m, back)
		}
	})
}
