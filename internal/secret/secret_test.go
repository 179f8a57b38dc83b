package secret_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/nowbridge/nowbridge/internal/secret"
)

func TestString_NeverPrinted(t *testing.T) {
	const value = "hunter2-credential"
	s := secret.String(value)
	type holder struct {
		Name  string
		Token secret.String
		Ptr   *secret.String
	}
	h := holder{Name: "x", Token: s, Ptr: &s}

	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("direct", "secret", s)
	log.Info("any", "holder", h)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("text", "secret", s, "holder", h)
	js, err := json.Marshal(h)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	ym, err := yaml.Marshal(h)
	if err != nil {
		t.Fatalf("yaml.Marshal: %v", err)
	}
	outputs := map[string]string{
		"%v":   fmt.Sprintf("%v", s),
		"%s":   fmt.Sprintf("%s", s),
		"%q":   fmt.Sprintf("%q", s),
		"%+v":  fmt.Sprintf("%+v", h),
		"%#v":  fmt.Sprintf("%#v", h),
		"err":  fmt.Errorf("connect with %v", s).Error(),
		"slog": logs.String(),
		"json": string(js),
		"yaml": string(ym),
	}
	for how, out := range outputs {
		if strings.Contains(out, value) {
			t.Errorf("%s reveals the secret: %s", how, out)
		}
	}
	if !strings.Contains(outputs["%+v"], secret.Redacted) || !strings.Contains(outputs["json"], secret.Redacted) {
		t.Errorf("want %s in place of the value, got %s and %s", secret.Redacted, outputs["%+v"], outputs["json"])
	}
	if s.Reveal() != value {
		t.Errorf("Reveal() = %q, want the value", s.Reveal())
	}
}

func TestString_IsZero(t *testing.T) {
	if !secret.String("").IsZero() || secret.String("x").IsZero() {
		t.Error("IsZero: want true only for the empty secret")
	}
}
