package events_test

import (
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// The vectors the shipped business rules are checked against (by
// servicenow/contract_test.go, through Node.js). The simulator's
// business-rule emulation can point its test at the same file.
const sharedVectors = "../../servicenow/testdata/webhook_vectors.json"

func TestEncodeWebhookBody_SharedVectors(t *testing.T) {
	b, err := os.ReadFile(sharedVectors)
	if err != nil {
		t.Fatal(err)
	}
	var vf struct {
		Secret    string `json:"secret"`
		Timestamp int64  `json:"timestamp"`
		Vectors   []struct {
			Name             string          `json:"name"`
			Event            json.RawMessage `json:"event"`
			Body             string          `json:"body"`
			WebhookID        string          `json:"webhook_id"`
			WebhookSignature string          `json:"webhook_signature"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(b, &vf); err != nil {
		t.Fatal(err)
	}
	if len(vf.Vectors) < 5 {
		t.Fatalf("%d vectors, want at least 5", len(vf.Vectors))
	}
	secret, err := webhook.ParseSecret(vf.Secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vf.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			var ev events.SNEvent
			if err := json.Unmarshal(v.Event, &ev); err != nil {
				t.Fatal(err)
			}
			got, err := events.EncodeWebhookBody(&ev)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != v.Body {
				t.Fatalf("body differs from what the business rule sends\n got: %s\nwant: %s", got, v.Body)
			}
			if id := ev.MsgID(); id != v.WebhookID {
				t.Errorf("MsgID %q, vector webhook-id %q", id, v.WebhookID)
			}
			if sig := webhook.Sign(secret, v.WebhookID, vf.Timestamp, got); sig != v.WebhookSignature {
				t.Errorf("signature %q, vector %q", sig, v.WebhookSignature)
			}
		})
	}
}

func TestEncodeWebhookBody_EscapesLikeJSONStringify(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"plain", "Email down", `"Email down"`},
		{"quote and backslash", `a"b\c`, `"a\"b\\c"`},
		{"short escapes", "\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"other controls in lower-case hex", "\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"DEL stays raw", "\x7f", "\"\x7f\""},
		{"HTML stays raw", "<b>&</b>", `"<b>&</b>"`},
		{"line and paragraph separators stay raw", "a\u2028b\u2029c", "\"a\u2028b\u2029c\""},
		{"emoji and CJK stay raw", "🚀 漢字 é", `"🚀 漢字 é"`},
		{"invalid lead byte", "a\xffb", "\"a\uFFFDb\""},
		{"truncated sequence is one replacement", "\xe2\x82A", "\"\uFFFDA\""},
		{"overlong and surrogate bytes: one per byte", "\xed\xa0\x80", "\"\uFFFD\uFFFD\uFFFD\""},
		{"truncated 4-byte sequence at the end", "\xf0\x9f\x98", "\"\uFFFD\""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body, err := events.EncodeWebhookBody(&events.SNEvent{Record: events.Fields{"f": c.in}})
			if err != nil {
				t.Fatal(err)
			}
			want := `{"table":"","sys_id":"","action":"","sys_mod_count":"0","sys_updated_on":"","record":{"f":` + c.want + `}}`
			if string(body) != want {
				t.Errorf("got  %s\nwant %s", body, want)
			}
		})
	}
}

func TestEncodeWebhookBody_OrderAndOmissions(t *testing.T) {
	ev := &events.SNEvent{
		Table: "incident", SysID: "0c27966a1cee1de6866df823845b834e", Action: "update", SysModCount: 3,
		SysUpdatedOn: "2026-11-28 10:00:00", Changed: []string{"state", "comments"},
		Record: events.Fields{"z": "1", "a": "2", "\uffff": "3", "😀": "4"}, Source: events.SourceReconcile,
	}
	got, err := events.EncodeWebhookBody(ev)
	if err != nil {
		t.Fatal(err)
	}
	// No instance, no sys_updated_by, changed sorted, record keys in UTF-16
	// order (the emoji's lead surrogate sorts before U+FFFF), no source.
	want := `{"table":"incident","sys_id":"0c27966a1cee1de6866df823845b834e","action":"update","sys_mod_count":"3",` +
		`"sys_updated_on":"2026-11-28 10:00:00","changed":["comments","state"],"record":{"a":"2","z":"1","😀":"4","` + "\uffff" + `":"3"}}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if !reflect.DeepEqual(ev.Changed, []string{"state", "comments"}) {
		t.Errorf("EncodeWebhookBody reordered the caller's Changed slice: %v", ev.Changed)
	}
	nilRecord, _ := events.EncodeWebhookBody(&events.SNEvent{Table: "incident"})
	if want := `{"table":"incident","sys_id":"","action":"","sys_mod_count":"0","sys_updated_on":"","record":{}}`; string(nilRecord) != want {
		t.Errorf("nil record: got %s, want %s", nilRecord, want)
	}
}

// FuzzEncodeWebhookBody: the body is always valid JSON, and for valid UTF-8
// it decodes back to the event it encodes.
func FuzzEncodeWebhookBody(f *testing.F) {
	f.Add("incident", "Email down", "comments", "line\nwith \"quotes\" \u2028")
	f.Add("x", "\xff\xe2\x82", "k\x00", "\U0001F680")
	f.Fuzz(func(t *testing.T, table, v1, key, v2 string) {
		ev := &events.SNEvent{Table: table, SysID: v1, Action: "update", SysModCount: 1, SysUpdatedOn: v2,
			Changed: []string{key}, Record: events.Fields{"a": v1, key: v2}}
		body, err := events.EncodeWebhookBody(ev)
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(body) || !utf8.Valid(body) {
			t.Fatalf("invalid JSON or UTF-8: %q", body)
		}
		// Each string on its own: invalid pieces can concatenate into valid
		// UTF-8 ("\xe6" + "\xa2\xa5" is U+68A5).
		for _, s := range []string{table, v1, key, v2} {
			if !utf8.ValidString(s) {
				return
			}
		}
		var back events.SNEvent
		if err := json.Unmarshal(body, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, *ev) {
			t.Fatalf("round trip\n got %+v\nwant %+v", back, *ev)
		}
	})
}
