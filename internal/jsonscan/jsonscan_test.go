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

// FuzzObjectShape holds the checks that build nothing to the readers that
// build: whatever SkipString or ObjectShape accepts, String or ObjectOnce
// reads, ending at the same byte, with as many members, each key once.
func FuzzObjectShape(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"number":"INC0001","comments":"2026-11-28 - Beth\nLooking into it","state":"2"}`,
		`{"a":"1","a":"2"}`,
		`{"a":"1","\u0061":"2"}`,
		`{"a":"\ud83d\ude00","b":"\ud83d"}`,
		`{"caf\u00e9":"x", "café" : "y" }`,
		`{"a":"é","b":"\xff"}`,
		`{"a":1}`,
		`"just a string"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		all := string(b)
		if next, ok := SkipString(b, 0); ok {
			_, want, wok := String(b, all, 0)
			if !wok || want != next {
				t.Fatalf("SkipString(%q) = %d, true; String: %d, %v", b, next, want, wok)
			}
		}
		next, members, ok := ObjectShape(b, 0)
		if !ok {
			return
		}
		m, want, once, wok := ObjectOnce(b, all, 0)
		if !wok || want != next || !once || len(m) != members {
			t.Fatalf("ObjectShape(%q) = %d, %d members; ObjectOnce: next %d, %d members, once %v, ok %v", b, next, members, want, len(m), once, wok)
		}
	})
}

// plainRun finds the first byte that is not plain printable ASCII, whatever
// the bytes around it (the word-at-a-time test must never miss one or stop
// early).
func FuzzPlainRun(f *testing.F) {
	f.Add([]byte(`abcdefgh"ijklmnop`), 0)
	f.Add([]byte("abc\x1fdefghijklmnop\\"), 1)
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00a\""), 0)
	f.Add([]byte(`abcdefghijklmnopé`), 3)
	f.Fuzz(func(t *testing.T, b []byte, j int) {
		if j < 0 || j > len(b) {
			return
		}
		want := j
		for want < len(b) && b[want] >= 0x20 && b[want] != '"' && b[want] != '\\' && b[want] < 0x80 {
			want++
		}
		if got := plainRun(b, j); got != want {
			t.Fatalf("plainRun(%q, %d) = %d, want %d", b, j, got, want)
		}
	})
}
