package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

// runTool runs the binary in-process with env and stdin, returning the exit
// status, stdout and stderr.
func runTool(t *testing.T, env map[string]string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return env[k] }, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestToolsWithoutNATS_SayWhereTheyLooked(t *testing.T) {
	env := map[string]string{"BRIDGE_EMBEDDED_NATS_LISTEN": "127.0.0.1:1"}
	for _, args := range [][]string{{"status"}, {"dlq", "ls"}} {
		code, _, stderr := runTool(t, env, "", args...)
		if code != 1 || !strings.Contains(stderr, "no NATS server listens at 127.0.0.1:1") || !strings.Contains(stderr, "bridge serve") {
			t.Errorf("%v: exit %d, stderr %q; want 1 and advice naming the address and `bridge serve`", args, code, stderr)
		}
	}
}

func TestDLQCommands_LsShowRetryPurge(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"TCK-1", "TCK-2"} {
		m := nats.NewMsg(events.DLQSubject("writeback"))
		m.Data = []byte(`{"external_id":"` + id + `","version":2,"fields":{}}`)
		m.Header.Set(events.HeaderDLQSubject, "app.ticket.upsert")
		m.Header.Set(events.HeaderDLQStream, events.StreamApp)
		m.Header.Set(events.HeaderDLQReason, "PATCH incident/abc: 403 Operation Failed: Data policy")
		m.Header.Set(events.HeaderDLQStatus, "403")
		m.Header.Set(events.HeaderDLQHint, "resolving needs close_code and close_notes")
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"BRIDGE_NATS_URL": s.ClientURL()}
	code, out, stderr := runTool(t, env, "", "dlq", "ls")
	if code != 0 || !strings.Contains(out, "ticket/TCK-1 v2") || !strings.Contains(out, "403") || !strings.Contains(out, "2 dead letters") {
		t.Fatalf("dlq ls: %d %q %q", code, out, stderr)
	}
	code, out, _ = runTool(t, env, "", "dlq", "show", "1")
	if code != 0 || !strings.Contains(out, "hint:      resolving needs close_code") || !strings.Contains(out, `"external_id": "TCK-1"`) {
		t.Fatalf("dlq show: %d %q", code, out)
	}
	if code, _, _ := runTool(t, env, "", "dlq", "show", "x"); code != 2 {
		t.Fatalf("dlq show x: exit %d, want 2", code)
	}
	code, out, _ = runTool(t, env, "", "dlq", "retry", "1")
	if code != 0 || !strings.Contains(out, "retried 1 -> app.ticket.upsert (APP_EVENTS seq 1)") {
		t.Fatalf("dlq retry 1: %d %q", code, out)
	}
	code, _, stderr = runTool(t, env, "", "dlq", "purge")
	if code != 2 || !strings.Contains(stderr, "--yes") {
		t.Fatalf("purge without an answer: %d %q; want exit 2 asking for --yes", code, stderr)
	}
	code, out, _ = runTool(t, env, "yes\n", "dlq", "purge")
	if code != 0 || !strings.Contains(out, "purged 1 dead letters") {
		t.Fatalf("purge: %d %q", code, out)
	}
	code, out, _ = runTool(t, env, "", "status", "--json")
	if code != 0 || !strings.Contains(out, `"dlq_total": 0`) || !strings.Contains(out, `"name": "APP_EVENTS"`) {
		t.Fatalf("status --json: %d %q", code, out)
	}
}

func TestStatus_ShowsTheReportOfARunningBridge(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	rep := newStatusReporter(js, nil, config.Default(), nil)
	if err := rep.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runTool(t, map[string]string{"BRIDGE_NATS_URL": s.ClientURL()}, "", "status")
	if code != 0 || !strings.Contains(out, rep.ID) || !strings.Contains(out, "RECONCILE") || !strings.Contains(out, "incident") {
		t.Fatalf("status: %d\n%s\n%s", code, out, stderr)
	}
}
