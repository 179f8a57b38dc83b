package attach

import (
	"errors"
	"testing"
)

func TestLimits_Refusal(t *testing.T) {
	l := Limits{MaxBytes: 100, Allow: []string{"image/*", "application/pdf"}, Deny: []string{"image/svg+xml"}}
	for _, c := range []struct {
		size int64
		ct   string
		hint string // "" accepted
	}{
		{10, "image/png", ""},
		{10, "Image/PNG; name=a.png", ""},
		{10, "application/pdf", ""},
		{100, "image/jpeg", ""},
		{101, "image/jpeg", HintTooLarge},
		{10, "image/svg+xml", HintType},
		{10, "text/plain", HintType},
		{10, "", HintType}, // application/octet-stream is not allowed
	} {
		err, hint := l.refusal(c.size, c.ct)
		if hint != c.hint || (c.hint == "") != (err == nil) || (err != nil && !errors.Is(err, ErrRefused)) {
			t.Errorf("%d bytes %q: %v (hint %q), want hint %q", c.size, c.ct, err, hint, c.hint)
		}
	}
	if err, hint := (Limits{}).refusal(1, "text/plain"); err == nil || hint != HintOff {
		t.Errorf("MaxBytes 0: %v %q, want every file refused, attachments off", err, hint)
	}
	if err, _ := (Limits{MaxBytes: 10, Deny: []string{"*/*"}}).refusal(1, "text/plain"); err == nil {
		t.Error("deny */* let a file through")
	}
	if err, _ := (Limits{MaxBytes: 10}).refusal(1, "anything/at-all"); err != nil {
		t.Errorf("no lists: %v, want every type", err)
	}
}
