package jsonw

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzAppendString: the output is JSON and decodes to s (invalid UTF-8 to
// U+FFFD, as encoding/json decodes it).
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\n\n\r\t\x01", "<>&\u2028", "é東京", "\xff\xfe", "a\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := AppendString(nil, s)
		if !json.Valid(b) || !utf8.Valid(b) {
			t.Fatalf("AppendString(%q) = %q: not valid JSON text", s, b)
		}
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		std, _ := json.Marshal(s)
		var want string
		_ = json.Unmarshal(std, &want)
		if got != want {
			t.Fatalf("AppendString(%q) decodes to %q, encoding/json's form to %q", s, got, want)
		}
	})
}
