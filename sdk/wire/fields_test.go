package wire

import (
	"encoding/json"
	"maps"
	"testing"
)

// decodeSlow is the encoding/json path of Fields.UnmarshalJSON alone.
func decodeSlow(b []byte) (Fields, error) {
	var vals map[string]fieldValue
	if err := json.Unmarshal(b, &vals); err != nil {
		return nil, err
	}
	out := make(Fields, len(vals))
	for k, v := range vals {
		out[k] = string(v)
	}
	return out, nil
}

func TestPlainObject_AgreesWithEncodingJSON(t *testing.T) {
	for _, in := range []string{
		`{}`, ` { } `, `{"a":"1"}`, `{"a":"1","b":""}`, "{\n \"a\" : \"x y\" ,\t\"b\":\"é ✓\"\r\n}",
		`{"a":"1","a":"2"}`, `{"short_description":"Email: down, again"}`, `{"comments":"10:00 - Beth\nLooking\u0021 \"x\" \\"}`,
		`{"a\"b":"1"}`, `{"a":"x\u0041"}`, `{"a":"\ud83d\ude00 \ud800"}`,
	} {
		got, ok := plainObject([]byte(in))
		if !ok {
			t.Errorf("plainObject(%s) took the slow path; a record of plain strings should not", in)
			continue
		}
		want, err := decodeSlow([]byte(in))
		if err != nil || !maps.Equal(got, want) {
			t.Errorf("plainObject(%s) = %v, encoding/json gives %v (%v)", in, got, want, err)
		}
	}
	for _, in := range []string{
		``, `null`, `[]`, `{`, `{"a"}`, `{"a":}`, `{"a":"1",}`, `{"a":"1"} x`, `{"a":"1"}}`, `{"a":1}`, `{"a":null}`,
		`{"a":{"value":"x"}}`, "{\"a\":\"\n\"}", `{"a":"\x"}`, `{"a":"\u00"}`, `{"a":"x\"}`, "{\"a\":\"\xff\"}", `{"a":"1" "b":"2"}`,
	} {
		if got, ok := plainObject([]byte(in)); ok {
			t.Errorf("plainObject(%q) = %v on the fast path; it must leave it to encoding/json", in, got)
		}
	}
}

// FuzzPlainObject: whatever the fast path accepts, encoding/json decodes
// to the same fields.
func FuzzPlainObject(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":"1","b":"x y"}`, `{"a":"1","a":"2"}`, `{"a":1}`, "{\"é\":\"\u2028\"}", `{"a":"\u0041"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := plainObject(b)
		if !ok {
			return
		}
		want, err := decodeSlow(b)
		if err != nil {
			t.Fatalf("plainObject accepted %q, which encoding/json refuses: %v", b, err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("plainObject(%q) = %v, encoding/json gives %v", b, got, want)
		}
	})
}
