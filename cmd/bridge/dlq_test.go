package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/dlq"
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
	rep := newStatusReporter(js, nil, config.Default(), nil, nil)
	if err := rep.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runTool(t, map[string]string{"BRIDGE_NATS_URL": s.ClientURL()}, "", "status")
	if code != 0 || !strings.Contains(out, rep.ID) || !strings.Contains(out, "RECONCILE") || !strings.Contains(out, "incident") {
		t.Fatalf("status: %d\n%s\n%s", code, out, stderr)
	}
}

// `bridge dlq retry --wait` prints each retried app change's late result,
// and says which have none yet.
func TestDLQRetry_WaitPrintsTheLateResult(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"TCK-1", "TCK-2"} {
		m := nats.NewMsg(events.DLQSubject("writeback"))
		m.Data = []byte(`{"external_id":"` + id + `","version":2,"fields":{"status":"resolved"}}`)
		m.Header.Set(events.HeaderDLQSubject, "app.ticket.upsert")
		m.Header.Set(events.HeaderDLQStream, events.StreamApp)
		m.Header.Set(events.HeaderDLQReason, "PATCH incident/abc: 403 Operation Failed: Data Policy Exception")
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// The writeback, as it answers a retried change: TCK-1 written, TCK-2
	// still waiting on ServiceNow.
	done := make(chan struct{})
	go func() {
		defer close(done)
		cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamApp, jetstream.ConsumerConfig{Durable: "fake-writeback"})
		if err != nil {
			t.Error(err)
			return
		}
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Error(err)
			return
		}
		mc := int64(3)
		for _, r := range []events.Result{
			{ExternalID: "TCK-1", Version: 2, Entity: "ticket", Action: "upsert", Outcome: events.OutcomeRetrying, Error: &events.ResultError{Status: 429, Message: "Rate limit exceeded"}},
			{ExternalID: "TCK-1", Version: 2, Entity: "ticket", Action: "upsert", Outcome: events.OutcomeUpdated, Number: "INC0010001", SysModCount: &mc,
				URL: "https://dev12345.service-now.com/nav_to.do?uri=incident.do?sys_id=9d385017c611228701d22104cc95c371"},
		} {
			body, _ := json.Marshal(r)
			out := nats.NewMsg(events.ResultSubject("ticket", r.Outcome))
			out.Data = body
			out.Header.Set(events.HeaderMsgID, events.ResultMsgID("ticket", "TCK-1", 2, r.Outcome)+dlq.RetryTag(msg.Headers()))
			if _, err := js.PublishMsg(ctx, out); err != nil {
				t.Error(err)
			}
		}
	}()
	env := map[string]string{"BRIDGE_NATS_URL": s.ClientURL()}
	code, out, stderr := runTool(t, env, "", "dlq", "retry", "--all", "--wait", "2s")
	<-done
	if code != 0 {
		t.Fatalf("dlq retry --all --wait: exit %d, %q %q", code, out, stderr)
	}
	for _, want := range []string{
		"retried 1 -> app.ticket.upsert (APP_EVENTS seq 1): updated INC0010001 https://dev12345.service-now.com/nav_to.do?uri=incident.do?sys_id=9d385017c611228701d22104cc95c371",
		"retried 2 -> app.ticket.upsert (APP_EVENTS seq 2)\n",
		"1 retried app changes have no result after 2s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// bridge status shows the results stream beside the others.
	code, out, _ = runTool(t, env, "", "status", "--json")
	var rep struct {
		Streams []struct {
			Name string `json:"name"`
			Msgs uint64 `json:"messages"`
		} `json:"streams"`
	}
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, %v: %s", code, err, out)
	}
	found := false
	for _, st := range rep.Streams {
		if st.Name == events.StreamResults {
			found = st.Msgs == 2
		}
	}
	if !found {
		t.Errorf("status lists %+v, want BRIDGE_RESULTS with its 2 results", rep.Streams)
	}
}
