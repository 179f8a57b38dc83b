package events

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
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
		var fast, lazy SNEvent
		ok, verbatim, none := decodeFast(raw, &fast, false)
		lok, lverbatim, rec := decodeFast(raw, &lazy, true)
		if none.raw != nil {
			t.Fatalf("decodeFast left a record unread without being asked to")
		}
		if lok != ok || ok && lverbatim != verbatim {
			t.Fatalf("lazy decodeFast: ok %v verbatim %v; eager: ok %v verbatim %v", lok, lverbatim, ok, verbatim)
		}
		if !ok {
			return
		}
		// The lazy read is the eager one with its record read later.
		if rec.raw != nil {
			if lazy.Record != nil || rec.members != len(fast.Record) {
				t.Fatalf("record left unread: e.Record %v, %d members; eager read %d", lazy.Record, rec.members, len(fast.Record))
			}
			lazy.Record = rec.read()
		}
		if !reflect.DeepEqual(fast, lazy) {
			t.Fatalf("lazy decodeFast read %q as\n%#v\neager as\n%#v", raw, lazy, fast)
		}
		lazy.Record = nil
		if rec.raw != nil && v.valid(&lazy, rec) != v.valid(&fast, lazyRecord{}) {
			t.Fatalf("valid of the unread record %v, of the read one %v", v.valid(&lazy, rec), v.valid(&fast, lazyRecord{}))
		}
		var slow SNEvent
		problems, err := decodeOne(trimSpace(raw), &slow, "")
		if err != nil || len(problems) > 0 {
			t.Fatalf("fast path accepted %q, the general path refuses it: %v %+v", raw, err, problems)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("fast path read %q as\n%#v\nthe general path as\n%#v", raw, fast, slow)
		}
		if !v.valid(&fast, lazyRecord{}) {
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
		if got := w.Record(0); !reflect.DeepEqual(got, fast.Record) {
			t.Fatalf("Webhook.Record(0) = %#v, want %#v", got, fast.Record)
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
		// An empty "changed" is left out of a re-encoded stored form
		// (omitempty): the same event, read back as nil.
		if len(want.Changed) == 0 && len(back.Changed) == 0 {
			want.Changed, back.Changed = nil, nil
		}
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
			if v.valid(&e, lazyRecord{}) && len(problems) > 0 {
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
			if !v.valid(&e, lazyRecord{}) && len(problems) == 0 {
				t.Fatalf("valid refused an event Validate accepts")
			}
		})
	}
}

// plainSNTime never takes what time.ParseInLocation refuses; on the usual
// form it takes exactly what it takes.
func TestPlainSNTime_AgreesWithTimeParse(t *testing.T) {
	for _, s := range []string{
		"2026-11-28 10:00:00", "2024-02-29 23:59:59", "2025-02-29 10:00:00", "2026-04-31 10:00:00",
		"2026-13-01 10:00:00", "2026-00-01 10:00:00", "2026-01-00 10:00:00", "2026-01-01 24:00:00",
		"2026-01-01 10:60:00", "2026-01-01 10:00:60", "0000-01-01 00:00:00", "9999-12-31 23:59:59",
		"2026-01-01T10:00:00", "2026/01/01 10:00:00", "2026-01-01 1:00:000", "2026-01-01 10:00:0a",
		"+026-01-01 10:00:00", "2026-01-01 10:00:00.5", "2026-1-01 10:00:00",
	} {
		_, err := time.ParseInLocation(SNTimeLayout, s, time.UTC)
		if plainSNTime(s) && err != nil {
			t.Errorf("plainSNTime(%q) true, time.ParseInLocation refuses it: %v", s, err)
		}
		if len(s) == len(SNTimeLayout) && s[10] == ' ' && err == nil && !plainSNTime(s) {
			t.Errorf("plainSNTime(%q) false, time.ParseInLocation takes it", s)
		}
		if validSNTime(s) != (err == nil) {
			t.Errorf("validSNTime(%q) = %v, time.ParseInLocation err %v", s, validSNTime(s), err)
		}
	}
}
