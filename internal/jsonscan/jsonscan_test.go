package jsonscan

import (
	"encoding/json"
	"testing"
)

func TestString_AgreesWithEncodingJSON(t *testing.T) {
	for _, lit := range []string{
		`"plain"`, `"caf\u00e9"`, `"line\nnext\ttab \"q\" \\ \/"`, `"\ud83d\ude00"`, `"\ud800"`, `"\udc00x"`,
		`"\ud83dx"`, `"\b\f\r"`, `"été"`, `"\u0041\u00DF"`,
	} {
		got, next, ok := String([]byte(lit), lit, 0)
		var want string
		if err := json.Unmarshal([]byte(lit), &want); err != nil {
			t.Fatalf("test literal %s: %v", lit, err)
		}
		if !ok || got != want || next != len(lit) {
			t.Errorf("String(%s) = %q, %d, %v; encoding/json reads %q", lit, got, next, ok, want)
		}
	}
	for _, bad := range []string{`"tab	inside"`, `"\x"`, `"unterminated`, `"\u12"`, "\"\xff\""} {
		if got, _, ok := String([]byte(bad), bad, 0); ok {
			var want string
			if err := json.Unmarshal([]byte(bad), &want); err == nil && got == want {
				continue // encoding/json reads it the same way
			}
			t.Errorf("String(%q) = %q; want it refused", bad, got)
		}
	}
}

func TestUint(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"4,", 4, true}, {"123456789012345678", 123456789012345678, true},
		{"04", 0, false}, {"-1", 0, false}, {"1.0", 0, false}, {"1e3", 0, false}, {"", 0, false},
		{"1234567890123456789", 0, false},
	} {
		n, _, ok := Uint([]byte(tc.in), 0)
		if ok != tc.ok || (ok && n != tc.want) {
			t.Errorf("Uint(%q) = %d, %v; want %d, %v", tc.in, n, ok, tc.want, tc.ok)
		}
	}
	if n, ok := UintText("04"); !ok || n != 4 {
		t.Errorf(`UintText("04") = %d, %v; strconv reads 4 and so must the fast path`, n, ok)
	}
	if _, ok := UintText("4 "); ok {
		t.Error(`UintText("4 ") accepted trailing text`)
	}
}
