package tokens

import (
	"strings"
	"testing"
)

func TestParse_NamesFingerprintsAndProblems(t *testing.T) {
	set, err := Parse(" alice:0123456789abcdef01 , fedcba9876543210fedc ,, ")
	if err != nil || len(set) != 2 {
		t.Fatalf("Parse: %d tokens, %v; want 2 (blank entries ignored)", len(set), err)
	}
	if set[0].Identity() != "alice" || set[0].Value() != "0123456789abcdef01" {
		t.Errorf("named entry: identity %q value %q", set[0].Identity(), set[0].Value())
	}
	fp := set[1].Identity()
	if again, _ := Parse("fedcba9876543210fedc"); again[0].Identity() != fp || !strings.HasPrefix(fp, "token:") || len(fp) != 14 {
		t.Errorf("an unnamed token's identity %q should be token: and 8 stable hex digits", fp)
	}
	if strings.Contains(fp, "fedcba") {
		t.Errorf("the fingerprint %q shows the token", fp)
	}
	if tok, ok := set.ByIdentity("alice"); !ok || tok.Value() != "0123456789abcdef01" {
		t.Error("ByIdentity(alice) did not find alice's token")
	}

	for in, want := range map[string]string{
		"short": "entry 1: a token must be at least 16 characters",
		"ok:0123456789abcdef,x y:0123456789abcdef": "entry 2: the name before ':' must be",
		"tab:0123456789\tabcdef0":                  "entry 1: a token must not contain spaces or control characters",
		"a:0123456789abcdef,a:fedcba9876543210":    "entry 2: a is named twice",
		"a/b:0123456789abcdef":                     "entry 1: the name before ':' must be", // a token holding ':' must be named
	} {
		_, err := Parse(in)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error starting %q", in, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "0123456789") {
			t.Errorf("Parse(%q)'s error shows a token: %v", in, err)
		}
	}
}
