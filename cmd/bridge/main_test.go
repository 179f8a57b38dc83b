package main

import (
	"strings"
	"testing"
)

// TestRun_ExitStatus pins the SPEC §5 contract: 0 success, 1 failure, 2 wrong
// usage, and one line on stderr for errors.
func TestRun_ExitStatus(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"version", []string{"version"}, 0, ""},
		{"help", nil, 0, ""},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"dlq", "bogus"}, 2, `unknown command "bogus"`},
		{"stray argument", []string{"version", "extra"}, 2, `unknown command "extra"`},
		{"unknown flag", []string{"serve", "--no-such-flag"}, 2, "unknown flag"},
		{"missing setting is a failure, not usage", []string{"reconcile", "--once"}, 1, "BRIDGE_SN_INSTANCE_URL: required"},
		{"malformed setting is a failure", []string{"doctor", "--log-format", "xml"}, 1, "BRIDGE_LOG_FORMAT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runTool(t, map[string]string{}, "", c.args...)
			if code != c.code {
				t.Fatalf("bridge %s: exit %d, want %d (stderr %q)", strings.Join(c.args, " "), code, c.code, stderr)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("stderr %q lacks %q", stderr, c.want)
			}
			if c.code != 0 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("error should be one line, got %q", stderr)
			}
		})
	}
}
