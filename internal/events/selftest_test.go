package events_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
)

// TestSelfTestID_NoRecordEventCarriesTheMarker: a record event's id starts
// with its table, which can never hold the marker's '-'.
func TestSelfTestID_NoRecordEventCarriesTheMarker(t *testing.T) {
	if !events.IsSelfTestID(events.SelfTestIDPrefix + "0123456789abcdef0123456789abcdef") {
		t.Fatal("the marker is not recognised")
	}
	prefix, _, _ := bytes.Cut([]byte(events.SelfTestIDPrefix), []byte(":"))
	if events.ValidTable(string(prefix)) {
		t.Fatalf("%q is a valid table name: a record event's id could carry the marker", prefix)
	}
	for _, table := range []string{"incident", "nowbridge", "nowbridge_selftest", "selftest"} {
		id := events.MsgID(table, "9d385017c611228701d22104cc95c371", 4, events.ActionUpdate)
		if events.IsSelfTestID(id) {
			t.Errorf("record event id %q is taken for a self-test", id)
		}
	}
}

// TestEncodeSelfTestBody_IsJSONOfTheEvent: the script's byte form decodes to
// the same event, keeps the text raw (UTF-8, not \u-escaped, as
// JSON.stringify does) and omits empty optional members.
func TestEncodeSelfTestBody_IsJSONOfTheEvent(t *testing.T) {
	ev := events.SelfTestEvent{SelfTest: true, Instance: "dev12345", SentBy: "nowbridge.integration", Text: events.SelfTestText,
		Keys: []events.SelfTestKey{{Prefixed: true, KeyBytes: 32, Check: "AbC+/9xY"}, {KeyBytes: 80, Check: "zzzzzzzz"}}}
	b := events.EncodeSelfTestBody(&ev)
	want := `{"selftest":true,"instance":"dev12345","sent_by":"nowbridge.integration","text":"Café — 東京",` +
		`"keys":[{"whsec_prefix":true,"key_bytes":32,"check":"AbC+/9xY"},{"whsec_prefix":false,"key_bytes":80,"check":"zzzzzzzz"}]}`
	if string(b) != want {
		t.Fatalf("body\n got %s\nwant %s", b, want)
	}
	var back events.SelfTestEvent
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, ev) {
		t.Fatalf("decoded %+v (%v), want %+v", back, err, ev)
	}
	minimal := events.EncodeSelfTestBody(&events.SelfTestEvent{SelfTest: true, Text: "x"})
	if string(minimal) != `{"selftest":true,"text":"x","keys":[]}` {
		t.Errorf("minimal body %s", minimal)
	}
}

// TestEncodeCharset_AsJavaGetBytes: what String.getBytes gives for the
// self-test text in each charset a JVM might sign with.
func TestEncodeCharset_AsJavaGetBytes(t *testing.T) {
	cases := map[string][]byte{
		events.CharsetUTF8:    []byte("Café — 東京"),
		events.CharsetLatin1:  []byte("Caf\xe9 ? ??"),
		events.CharsetCP1252:  []byte("Caf\xe9 \x97 ??"),
		events.CharsetUTF16:   {0xFE, 0xFF, 0, 'C', 0, 'a', 0, 'f', 0, 0xE9, 0, ' ', 0x20, 0x14, 0, ' ', 0x67, 0x71, 0x4E, 0xAC},
		events.CharsetUTF16LE: {'C', 0, 'a', 0, 'f', 0, 0xE9, 0, ' ', 0, 0x14, 0x20, ' ', 0, 0x71, 0x67, 0xAC, 0x4E},
		events.CharsetUTF16BE: {0, 'C', 0, 'a', 0, 'f', 0, 0xE9, 0, ' ', 0x20, 0x14, 0, ' ', 0x67, 0x71, 0x4E, 0xAC},
	}
	for cs, want := range cases {
		got, ok := events.EncodeCharset(events.SelfTestText, cs)
		if !ok || !bytes.Equal(got, want) {
			t.Errorf("%s: % x (%v), want % x", cs, got, ok, want)
		}
	}
	if _, ok := events.EncodeCharset("x", "EBCDIC"); ok {
		t.Error("an unknown charset was accepted")
	}
	// Every other charset changes the self-test's bytes: that is what makes
	// it a charset test.
	for _, cs := range events.OtherCharsets {
		got, _ := events.EncodeCharset(events.SelfTestText, cs)
		if bytes.Equal(got, []byte(events.SelfTestText)) {
			t.Errorf("%s encodes the self-test text as UTF-8 does", cs)
		}
	}
}

func TestSelfTestKeyCheck_IdentifiesAKey(t *testing.T) {
	a := events.SelfTestKeyCheck("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	b := events.SelfTestKeyCheck("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=")
	if len(a) != 8 || len(b) != 8 || a == b {
		t.Fatalf("checks %q and %q: want 8 characters each, different for different keys", a, b)
	}
	if again := events.SelfTestKeyCheck("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="); again != a {
		t.Errorf("the check is not stable: %q then %q", a, again)
	}
	if got := events.SelfTestKeyCheck("not base64!"); got != "" {
		t.Errorf("a malformed key gave check %q, want none", got)
	}
}
