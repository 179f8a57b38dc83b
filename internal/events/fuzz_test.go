package events_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/events"
)

// FuzzDecodeBody checks the webhook body decoder and validator on arbitrary
// input: it never panics, every failure is one of the documented kinds (400
// or 422) and names its fields, and every accepted event is valid and
// survives the trip through the stored JSON form unchanged.
// Seeds: testdata/fuzz/FuzzDecodeBody plus the ones added here.
func FuzzDecodeBody(f *testing.F) {
	for _, s := range []string{
		obj(""),
		obj(`"record":{"number":"INC0010001","n":3,"b":false,"z":null,"ref":{"link":"l","value":"v"}}`),
		"[" + obj("") + "," + strings.Replace(obj(""), `"4"`, `5`, 1) + "]",
		`{}`, `[]`, `[1]`, `null`, `"x"`, ``, `{"sys_mod_count":{}}`,
		obj(`"changed":["state",""],"record":{"a":[1]}`),
	} {
		f.Add([]byte(s))
	}
	v := events.NewValidator([]string{"incident", "problem"})
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := v.DecodeBody(body)
		if err != nil {
			if evs != nil {
				t.Fatalf("events returned with error %v", err)
			}
			var shape *events.ShapeError
			var verr *events.ValidationError
			switch {
			case errors.Is(err, events.ErrEmptyBody), errors.Is(err, events.ErrNotJSON), errors.As(err, &shape):
			case errors.As(err, &verr):
				if len(verr.Problems) == 0 {
					t.Fatal("ValidationError without problems")
				}
				for _, p := range verr.Problems {
					if p.Field == "" || p.Message == "" {
						t.Fatalf("problem without field or message: %+v", p)
					}
				}
			default:
				t.Fatalf("undocumented error kind %T: %v", err, err)
			}
			return
		}
		if len(evs) == 0 || len(evs) > events.MaxBatch {
			t.Fatalf("accepted %d events", len(evs))
		}
		for i := range evs {
			ev := &evs[i]
			if ps := v.Validate(ev, ""); len(ps) > 0 {
				t.Fatalf("accepted an invalid event: %+v", ps)
			}
			if got := strings.Count(ev.MsgID(), ":"); got != 3 {
				t.Fatalf("msg id %q has %d colons, want 3", ev.MsgID(), got)
			}
			stored, err := json.Marshal(ev)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			ev.Source = events.SourceWebhook // as the receiver stores it
			if want, got := mustMarshal(t, ev), events.AppendStored(nil, ev); string(got) != string(want) {
				t.Fatalf("AppendStored differs from json.Marshal:\n got %s\nwant %s", got, want)
			}
			ev.Source = ""
			again, err := v.DecodeBody(stored)
			if err != nil {
				t.Fatalf("stored form %s does not decode: %v", stored, err)
			}
			if !reflect.DeepEqual(roundTripForm(again[0]), roundTripForm(*ev)) {
				t.Fatalf("round trip changed the event:\n%+v\n%+v", *ev, again[0])
			}
			if _, err := events.EncodeWebhookBody(ev); err != nil {
				t.Fatalf("EncodeWebhookBody: %v", err)
			}
		}
	})
}

// roundTripForm drops the difference between an empty and an absent list or
// record, which the stored form does not keep (omitempty) and nothing reads.
func roundTripForm(ev events.SNEvent) events.SNEvent {
	if len(ev.Changed) == 0 {
		ev.Changed = nil
	}
	if len(ev.Record) == 0 {
		ev.Record = nil
	}
	return ev
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}
