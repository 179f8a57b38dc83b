package snclient

import (
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

func TestQuery_ScriptValuesRefused(t *testing.T) {
	for _, v := range []string{"javascript:gs.getUser()", "JavaScript:x", "  javascript:1", "\tjavascript:1"} {
		q := And(Field("correlation_id").EQ(v))
		if q.Err() == nil {
			t.Errorf("EQ(%q) encoded as %q: ServiceNow would run it as a script", v, q.Encode())
		}
		if q := And(Field("number").In("INC1", v)); q.Err() == nil {
			t.Errorf("In(..., %q) accepted", v)
		}
		if q := And(Field("sys_updated_on").Between("2026-01-01 00:00:00", v)); q.Err() == nil {
			t.Errorf("Between(..., %q) accepted", v)
		}
	}
	for _, v := range []string{"TCK-1 javascript:", "java", "notjavascript:x", ""} {
		if q := And(Field("correlation_id").EQ(v)); q.Err() != nil {
			t.Errorf("EQ(%q) refused: %v", v, q.Err())
		}
	}
}

// FuzzEncodedQueryRoundTrip: whatever value an app or a record supplies, the
// query the client encodes is read back by an encoded-query parser (the
// simulator's, which follows ServiceNow's grammar) as exactly that clause,
// never as more clauses, another operator or a script.
func FuzzEncodedQueryRoundTrip(f *testing.F) {
	for _, v := range []string{"TCK-1042", "a^b", "a^NQb", "x^ORy", "^^", "ORDERBYnumber", "=x", "a,b", "a@b", "INC001 ", "é 東京", "javascript:1", ""} {
		f.Add("correlation_id", v)
	}
	f.Fuzz(func(t *testing.T, field, value string) {
		q := And(Field(field).EQ(value))
		if q.Err() != nil {
			if isScript(value) || !fieldNameRE.MatchString(field) {
				return
			}
			t.Fatalf("EQ(%q, %q) refused: %v", field, value, q.Err())
		}
		enc := q.Encode()
		parsed, err := snsim.ParseQuery(enc)
		if err != nil {
			// Only syntax the simulator does not implement may fail, and
			// only on field names it reads differently (dot-walks).
			if strings.Contains(field, ".") {
				return
			}
			t.Fatalf("%q encodes as %q, which does not parse: %v", value, enc, err)
		}
		if len(parsed.Parts) != 1 || len(parsed.Parts[0].Groups) != 1 || len(parsed.Parts[0].Groups[0]) != 1 || len(parsed.Order) != 0 {
			t.Fatalf("%q encodes as %q, read back as %+v: not one clause", value, enc, parsed)
		}
		c := parsed.Parts[0].Groups[0][0]
		if c.Field != field || c.Op != "=" || c.Value != value {
			t.Fatalf("%s = %q encodes as %q, read back as field %q op %q value %q", field, value, enc, c.Field, c.Op, c.Value)
		}
	})
}
