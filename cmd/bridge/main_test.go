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

// TestRun_EveryConfigProblemInOneLine: a start with several bad settings
// names each of them, so one fix-and-retry round is enough, still on one
// line (SPEC §5).
func TestRun_EveryConfigProblemInOneLine(t *testing.T) {
	code, _, stderr := runTool(t, map[string]string{"BRIDGE_LOG_FORMAT": "xml", "BRIDGE_STREAM_REPLICAS": "9"}, "", "doctor", "--dedupe-size", "0")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (stderr %q)", code, stderr)
	}
	if n := strings.Count(strings.TrimSpace(stderr), "\n"); n != 0 {
		t.Fatalf("stderr has %d lines, want one:\n%s", n+1, stderr)
	}
	got := strings.Split(strings.TrimPrefix(strings.TrimSpace(stderr), "bridge: "), "; ")
	want := []string{"BRIDGE_STREAM_REPLICAS: ", "BRIDGE_LOG_FORMAT: ", "BRIDGE_DEDUPE_SIZE: "}
	if len(got) != len(want) {
		t.Fatalf("stderr names %d problems, want %d: %s", len(got), len(want), stderr)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("line %d = %q, want it to start with %q", i+1, got[i], w)
		}
	}
}
