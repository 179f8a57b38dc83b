package events

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecodeFast holds the receiver's fast path to the general one: whatever
// decodeFast accepts, decodeOne reads as the same event, and whatever valid
// passes, Validate finds nothing wrong with.
func FuzzDecodeFast(f *testing.F) {
	base := `{"table":"incident","sys_id":"0123456789abcdef0123456789abcdef","action":"update","sys_mod_count":"4",` +
		`"sys_updated_on":"2026-11-28 10:00:00","sys_updated_by":"beth","changed":["state","short_description"],` +
		`"record":{"number":"INC0010001","comments":"line\nnext \u00e9 \ud83d\ude00","state":"2"}}`
	for _, s := range []string{
		base,
		strings.Replace(base, `"4"`, `4`, 1),
		strings.Replace(base, `"4"`, `04`, 1),
		strings.Replace(base, `"4"`, `"+4"`, 1),
		strings.Replace(base, `"table"`, `"Table"`, 1),
		strings.Replace(base, `"table"`, `"t\u0061ble"`, 1),
		strings.Replace(base, `"beth"`, `"\ud800"`, 1),
		strings.Replace(base, `"beth"`, `null`, 1),
		strings.Replace(base, `"action":"update"`, `"action":"delete","action":"insert"`, 1),
		strings.Replace(base, `"changed":["state","short_description"],`, `"changed":[],"changed":["a"],`, 1),
		` ` + base + "\n",
		`{"sys_mod_count":1}`, `{}`, `{"record":{}}`,
	} {
		f.Add([]byte(s))
	}
	v := NewValidator([]string{"incident"})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var fast SNEvent
		ok, verbatim := decodeFast(raw, &fast)
		if !ok {
			return
		}
		var slow SNEvent
		problems, err := decodeOne(trimSpace(raw), &slow, "")
		if err != nil || len(problems) > 0 {
			t.Fatalf("fast path accepted %q, the general path refuses it: %v %+v", raw, err, problems)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("fast path read %q as\n%#v\nthe general path as\n%#v", raw, fast, slow)
		}
		if !v.valid(&fast) {
			return
		}
		if ps := v.Validate(&fast, ""); len(ps) > 0 {
			t.Fatalf("valid passed an event Validate refuses: %+v", ps)
		}
		w, err := v.DecodeWebhook(raw)
		if err != nil {
			t.Fatalf("DecodeWebhook refused what the fast path accepted: %v", err)
		}
		if (w.verbatim != nil) != verbatim {
			t.Fatalf("verbatim %v, but the webhook keeps the body: %v", verbatim, w.verbatim != nil)
		}
		// The stored form, whichever way it is written, is the same event
		// with the webhook's source.
		stored := w.AppendStored(nil, 0)
		var back SNEvent
		if err := json.Unmarshal(stored, &back); err != nil {
			t.Fatalf("stored form %s does not decode: %v", stored, err)
		}
		want := fast
		want.Source = SourceWebhook
		if !reflect.DeepEqual(back, want) {
			t.Fatalf("stored form %s reads as\n%#v\nwant\n%#v", stored, back, want)
		}
	})
}

func trimSpace(b []byte) []byte { return []byte(strings.TrimSpace(string(b))) }

// TestValid_AgreesWithValidate checks the hand-written rules case by case
// against go-playground's: each event breaks one rule.
func TestValid_AgreesWithValidate(t *testing.T) {
	v := NewValidator([]string{"incident"})
	good := func() SNEvent {
		return SNEvent{Table: "incident", SysID: "0123456789abcdef0123456789abcdef", Action: "update", SysModCount: 4,
			SysUpdatedOn: "2026-11-28 10:00:00", Changed: []string{"state"}, Record: Fields{"state": "2"}}
	}
	cases := map[string]func(e *SNEvent){
		"as sent":               func(*SNEvent) {},
		"delete without record": func(e *SNEvent) { e.Action, e.Record = "delete", nil },
		"update without record": func(e *SNEvent) { e.Record = nil },
		"unknown action":        func(e *SNEvent) { e.Action = "merge" },
		"table not synced":      func(e *SNEvent) { e.Table = "problem" },
		"table malformed":       func(e *SNEvent) { e.Table = "Incident" },
		"table too long":        func(e *SNEvent) { e.Table = "a" + strings.Repeat("b", 80) },
		"sys_id upper case":     func(e *SNEvent) { e.SysID = strings.ToUpper(e.SysID) },
		"sys_id short":          func(e *SNEvent) { e.SysID = e.SysID[1:] },
		"time without seconds":  func(e *SNEvent) { e.SysUpdatedOn = "2026-11-28 10:00" },
		"time out of range":     func(e *SNEvent) { e.SysUpdatedOn = "2026-13-28 10:00:00" },
		"empty changed entry":   func(e *SNEvent) { e.Changed = []string{""} },
		"long changed entry":    func(e *SNEvent) { e.Changed = []string{strings.Repeat("x", 81)} },
		"81 characters of é":    func(e *SNEvent) { e.Changed = []string{strings.Repeat("é", 41)} },
		"instance 101 bytes":    func(e *SNEvent) { e.Instance = strings.Repeat("i", 101) },
		"updated_by 100 bytes":  func(e *SNEvent) { e.SysUpdatedBy = strings.Repeat("u", 100) },
		"unknown source":        func(e *SNEvent) { e.Source = "replay" },
		"reconcile source":      func(e *SNEvent) { e.Source = SourceReconcile },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			e := good()
			mutate(&e)
			problems := v.Validate(&e, "")
			if v.valid(&e) && len(problems) > 0 {
				t.Fatalf("valid passed what Validate refuses: %+v", problems)
			}
			// valid may send a valid event to Validate (a length it counts in
			// bytes), never the other way round; here every case is exact.
			if name == "81 characters of é" {
				if len(problems) > 0 {
					t.Fatalf("41 two-byte characters are within max=80 characters: %+v", problems)
				}
				return
			}
			if !v.valid(&e) && len(problems) == 0 {
				t.Fatalf("valid refused an event Validate accepts")
			}
		})
	}
}
