package inbound

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	secretA = webhook.NewSecret([]byte("0123456789abcdef0123456789abcdef"))
	secretB = webhook.NewSecret([]byte("fedcba9876543210fedcba9876543210"))
)

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a receiver on httptest in front of a real in-process JetStream.
type harness struct {
	t      *testing.T
	opts   *server.Options
	server *server.Server
	js     jetstream.JetStream // the test's own view of the stream
	rcv    *Receiver
	http   *httptest.Server
	logs   *syncBuffer
}

func newHarness(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, opts: natstest.Options(t.TempDir()), logs: &syncBuffer{}}
	h.server = natstest.RunServerWithOptions(t, h.opts)
	_, h.js = natstest.Connect(t, h.server)
	ctx := context.Background()
	if err := broker.EnsureAll(ctx, h.js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	nc, err := broker.Connect(ctx, h.server.ClientURL(), "inbound-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg := Config{Conn: nc, Secrets: []webhook.Secret{secretA}, Logger: log, PublishTimeout: time.Second, RetryAfter: 3 * time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	h.rcv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.http = httptest.NewServer(h.rcv.Handler())
	t.Cleanup(h.http.Close)
	t.Cleanup(func() {
		for _, s := range []string{secretA.Encoded(), secretA.KeyBase64(), secretB.KeyBase64()} {
			if strings.Contains(h.logs.String(), s) {
				t.Errorf("a webhook secret appears in the logs:\n%s", h.logs.String())
			}
		}
	})
	return h
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("answer %d is not a JSON object: %q", r.status, r.body)
	}
	return m
}

func (h *harness) do(req *http.Request) response {
	h.t.Helper()
	resp, err := h.http.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) get(path string) response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.http.URL+path, nil)
	return h.do(req)
}

// post sends body signed with secret (zero secret: unsigned).
func (h *harness) post(body []byte, secret webhook.Secret, id string, ts time.Time) response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.http.URL+Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if !secret.IsZero() {
		webhook.SetHeaders(req.Header, secret, id, ts, body)
	}
	return h.do(req)
}

func (h *harness) send(body []byte) response {
	h.t.Helper()
	return h.post(body, secretA, "test-"+strconv.FormatInt(time.Now().UnixNano(), 36), time.Now())
}

// stored returns every message in SN_EVENTS.
func (h *harness) stored() []jetstream.RawStreamMsg {
	h.t.Helper()
	ctx := context.Background()
	st, err := h.js.Stream(ctx, events.StreamSN)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			h.t.Fatalf("get seq %d: %v", seq, err)
		}
		out = append(out, *m)
	}
	return out
}

func sysID(n int) string { return fmt.Sprintf("%032x", n) }

func event(n, modCount int) map[string]any {
	return map[string]any{
		"instance":       "dev12345",
		"table":          "incident",
		"sys_id":         sysID(n),
		"action":         "update",
		"sys_mod_count":  strconv.Itoa(modCount),
		"sys_updated_on": "2026-11-28 10:00:00",
		"sys_updated_by": "beth.anglin",
		"changed":        []string{"state", "comments"},
		"record":         map[string]any{"number": fmt.Sprintf("INC%07d", n), "short_description": "Email down", "state": "2"},
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantAccepted(t *testing.T, r response, accepted, duplicates, echoes int) {
	t.Helper()
	want := Accepted{accepted, duplicates, echoes}
	var got Accepted
	if r.status != http.StatusAccepted || json.Unmarshal(r.body, &got) != nil || got != want {
		t.Fatalf("answer %d %s, want 202 %+v", r.status, r.body, want)
	}
}

func TestIngest_SignedEventStoredOnceWithMsgIDAndBody(t *testing.T) {
	h := newHarness(t, nil)
	wantAccepted(t, h.send(mustJSON(t, event(1, 4))), 1, 0, 0)

	msgs := h.stored()
	if len(msgs) != 1 {
		t.Fatalf("SN_EVENTS holds %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Subject != "sn.incident.update" {
		t.Errorf("subject %q, want sn.incident.update", m.Subject)
	}
	if got, want := m.Header.Get(events.HeaderMsgID), "incident:"+sysID(1)+":4:update"; got != want {
		t.Errorf("Nats-Msg-Id %q, want %q", got, want)
	}
	if got := m.Header.Get(events.HeaderSource); got != "webhook" {
		t.Errorf("Bridge-Source %q, want webhook", got)
	}
	// Stored headers travel on with the message (dead letters copy them):
	// nothing but the id and the source, no publish-time expectations.
	for k := range m.Header {
		if strings.HasPrefix(k, "Nats-Expected") {
			t.Errorf("stored header %s would make a republish of this message fail", k)
		}
	}
	var ev events.SNEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatalf("stored body is not an event: %v: %s", err, m.Data)
	}
	if ev.Source != "webhook" || ev.SysModCount != 4 || ev.Record["number"] != "INC0000001" || ev.SysUpdatedBy != "beth.anglin" || len(ev.Changed) != 2 {
		t.Errorf("stored event %+v does not carry the webhook's fields with source=webhook", ev)
	}
	if !bytes.Contains(m.Data, []byte(`"sys_mod_count":"4"`)) {
		t.Errorf("stored body should render sys_mod_count as a string like ServiceNow: %s", m.Data)
	}
}

func TestIngest_DuplicateWebhookStoredOnce(t *testing.T) {
	h := newHarness(t, nil)
	body := mustJSON(t, event(1, 4))
	wantAccepted(t, h.send(body), 1, 0, 0)
	wantAccepted(t, h.send(body), 0, 1, 0)
	if n := len(h.stored()); n != 1 {
		t.Fatalf("SN_EVENTS holds %d messages after the same webhook twice, want 1", n)
	}
}

func TestIngest_ArrayOfThreeStored(t *testing.T) {
	h := newHarness(t, nil)
	wantAccepted(t, h.send(mustJSON(t, []any{event(1, 1), event(2, 1), event(3, 1)})), 3, 0, 0)
	msgs := h.stored()
	if len(msgs) != 3 {
		t.Fatalf("SN_EVENTS holds %d messages, want 3", len(msgs))
	}
	for i, m := range msgs {
		if want := "incident:" + sysID(i+1) + ":1:update"; m.Header.Get(events.HeaderMsgID) != want {
			t.Errorf("message %d has id %q, want %q (in body order)", i, m.Header.Get(events.HeaderMsgID), want)
		}
	}
}

func TestIngest_ArrayWithOneInvalidElementStoresNothing(t *testing.T) {
	h := newHarness(t, nil)
	bad := event(2, 1)
	bad["sys_id"] = "not-hex"
	r := h.send(mustJSON(t, []any{event(1, 1), bad, event(3, 1)}))
	if r.status != http.StatusUnprocessableEntity {
		t.Fatalf("answer %d %s, want 422", r.status, r.body)
	}
	var got struct {
		Error  string           `json:"error"`
		Detail []events.Problem `json:"detail"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil || got.Error == "" || len(got.Detail) != 1 || got.Detail[0].Field != "[1].sys_id" {
		t.Fatalf("422 body %s should name exactly [1].sys_id", r.body)
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("SN_EVENTS holds %d messages after a rejected array, want 0 (all or nothing)", n)
	}
}

func TestIngest_RetryAfterPartialStoreIsIdempotent(t *testing.T) {
	// A 503 after some events of a body were stored is safe: the retry of
	// the whole body stores only what is missing.
	h := newHarness(t, nil)
	wantAccepted(t, h.send(mustJSON(t, event(1, 1))), 1, 0, 0)
	wantAccepted(t, h.send(mustJSON(t, []any{event(1, 1), event(2, 1)})), 1, 1, 0)
	if n := len(h.stored()); n != 2 {
		t.Fatalf("SN_EVENTS holds %d messages, want 2", n)
	}
}

func TestIngest_SysModCountAsNumberOrString(t *testing.T) {
	h := newHarness(t, nil)
	asNumber := event(1, 0)
	asNumber["sys_mod_count"] = 7
	asString := event(2, 0)
	asString["sys_mod_count"] = "7"
	wantAccepted(t, h.send(mustJSON(t, asNumber)), 1, 0, 0)
	wantAccepted(t, h.send(mustJSON(t, asString)), 1, 0, 0)
	for i, m := range h.stored() {
		if want := "incident:" + sysID(i+1) + ":7:update"; m.Header.Get(events.HeaderMsgID) != want {
			t.Errorf("msg id %q, want %q", m.Header.Get(events.HeaderMsgID), want)
		}
	}
}

func TestIngest_RotatedSecretVerifies(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Secrets = []webhook.Secret{secretA, secretB} })
	wantAccepted(t, h.post(mustJSON(t, event(1, 1)), secretB, "rot-1", time.Now()), 1, 0, 0)
	// A signature header listing an unknown and a known entry passes too.
	body := mustJSON(t, event(2, 1))
	req, _ := http.NewRequest(http.MethodPost, h.http.URL+Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	ts := time.Now()
	webhook.SetHeaders(req.Header, secretB, "rot-2", ts, body)
	other := webhook.Sign(webhook.NewSecret([]byte("an-old-retired-secret-key-bytes!")), "rot-2", ts.Unix(), body)
	req.Header.Set(webhook.HeaderSignature, other+" "+req.Header.Get(webhook.HeaderSignature))
	wantAccepted(t, h.do(req), 1, 0, 0)
}

func TestIngest_RejectionsHaveTheirStatusAndAJSONError(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxBodyBytes = 4096 })
	good := mustJSON(t, event(1, 1))
	withTable := event(1, 1)
	withTable["table"] = "problem"
	badSysID := event(1, 1)
	badSysID["sys_id"] = strings.Repeat("A", 32)
	badCount := event(1, 1)
	badCount["sys_mod_count"] = "four"
	big := event(1, 1)
	big["record"] = map[string]any{"description": strings.Repeat("x", 5000)}
	var tooMany []any
	for i := range events.MaxBatch + 1 {
		tooMany = append(tooMany, event(i, 1))
	}

	type req struct {
		name        string
		body        []byte
		contentType string
		secret      webhook.Secret
		ts          time.Time
		edit        func(*http.Request)
		status      int
		detail      string // substring of the JSON answer
	}
	now := time.Now()
	cases := []req{
		{name: "bad signature", body: good, secret: secretB, status: 401, detail: "no webhook-signature entry matches"},
		{name: "unsigned", body: good, status: 401, detail: "missing webhook-id"},
		{name: "missing webhook-id", body: good, secret: secretA, edit: func(r *http.Request) { r.Header.Del(webhook.HeaderID) }, status: 401, detail: "missing"},
		{name: "missing webhook-timestamp", body: good, secret: secretA, edit: func(r *http.Request) { r.Header.Del(webhook.HeaderTimestamp) }, status: 401, detail: "missing"},
		{name: "missing webhook-signature", body: good, secret: secretA, edit: func(r *http.Request) { r.Header.Del(webhook.HeaderSignature) }, status: 401, detail: "missing"},
		{name: "timestamp not a number", body: good, secret: secretA, edit: func(r *http.Request) { r.Header.Set(webhook.HeaderTimestamp, "yesterday") }, status: 401, detail: "not a Unix time"},
		{name: "old timestamp", body: good, secret: secretA, ts: now.Add(-6 * time.Minute), status: 401, detail: "tolerance"},
		{name: "future timestamp", body: good, secret: secretA, ts: now.Add(6 * time.Minute), status: 401, detail: "tolerance"},
		{name: "body changed after signing", body: good, secret: secretA, edit: func(r *http.Request) {
			r.Body = io.NopCloser(bytes.NewReader(bytes.Replace(good, []byte("Email"), []byte("Gmail"), 1)))
		}, status: 401, detail: "no webhook-signature entry matches"},
		{name: "body over limit", body: mustJSON(t, big), secret: secretA, status: 413, detail: "at most 4096 bytes"},
		{name: "body over limit, chunked", body: mustJSON(t, big), secret: secretA, edit: func(r *http.Request) { r.ContentLength = -1 }, status: 413, detail: "at most 4096 bytes"},
		{name: "not JSON", body: []byte("state=2&sys_id=1"), secret: secretA, status: 400, detail: "not valid JSON"},
		{name: "empty body", body: []byte{}, secret: secretA, status: 400, detail: "empty"},
		{name: "empty array", body: []byte("[]"), secret: secretA, status: 400, detail: "empty"},
		{name: "JSON string", body: []byte(`"incident"`), secret: secretA, status: 400, detail: "expected an event object"},
		{name: "array of numbers", body: []byte(`[1]`), secret: secretA, status: 400, detail: "[0]"},
		{name: "wrong content type", body: good, contentType: "text/plain", secret: secretA, status: 415, detail: "application/json"},
		{name: "form content type", body: good, contentType: "application/x-www-form-urlencoded", secret: secretA, status: 415, detail: "application/json"},
		{name: "no content type", body: good, contentType: "-", secret: secretA, status: 415, detail: "application/json"},
		{name: "unknown table", body: mustJSON(t, withTable), secret: secretA, status: 422, detail: `"field":"table"`},
		{name: "sys_id not 32 hex", body: mustJSON(t, badSysID), secret: secretA, status: 422, detail: `"field":"sys_id"`},
		{name: "sys_mod_count not a number", body: mustJSON(t, badCount), secret: secretA, status: 422, detail: `"field":"sys_mod_count"`},
	}
	// Over MaxBatch needs a larger limit: its own receiver below.
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodPost, h.http.URL+Path, bytes.NewReader(c.body))
			switch c.contentType {
			case "":
				r.Header.Set("Content-Type", "application/json; charset=utf-8")
			case "-":
			default:
				r.Header.Set("Content-Type", c.contentType)
			}
			if !c.secret.IsZero() {
				ts := c.ts
				if ts.IsZero() {
					ts = time.Now()
				}
				webhook.SetHeaders(r.Header, c.secret, "case-"+c.name, ts, c.body)
			}
			if c.edit != nil {
				c.edit(r)
			}
			got := h.do(r)
			if got.status != c.status {
				t.Fatalf("answer %d %s, want %d", got.status, got.body, c.status)
			}
			if ct := got.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if m := got.json(t); m["error"] == "" || m["error"] == nil {
				t.Errorf("answer %s has no \"error\"", got.body)
			}
			if !strings.Contains(string(got.body), c.detail) {
				t.Errorf("answer %s should mention %q", got.body, c.detail)
			}
		})
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("SN_EVENTS holds %d messages after only rejected requests, want 0", n)
	}
	t.Run("array over 500 events", func(t *testing.T) {
		h2 := newHarness(t, nil)
		r := h2.send(mustJSON(t, tooMany))
		if r.status != 400 || !strings.Contains(string(r.body), "at most 500") {
			t.Fatalf("answer %d %s, want 400 naming the limit of 500", r.status, r.body)
		}
	})
}

type echoSet map[string]bool

func (s echoSet) IsEchoOf(ev *events.SNEvent, _ func() events.Fields) bool { return s[ev.MsgID()] }

func TestIngest_EchoAnsweredAndNotStored(t *testing.T) {
	echoes := echoSet{"incident:" + sysID(1) + ":5:update": true}
	h := newHarness(t, func(c *Config) { c.Echoes = echoes })
	wantAccepted(t, h.send(mustJSON(t, []any{event(1, 5), event(2, 5)})), 1, 0, 1)
	msgs := h.stored()
	if len(msgs) != 1 || msgs[0].Header.Get(events.HeaderMsgID) != "incident:"+sysID(2)+":5:update" {
		t.Fatalf("SN_EVENTS should hold only the non-echo event, holds %d", len(msgs))
	}
	wantAccepted(t, h.send(mustJSON(t, event(1, 5))), 0, 0, 1)
}

// A single event's record is left unread by the decoder; the echo check of
// a write in flight must still compare it, field by field.
func TestIngest_EchoOfAWriteInFlightIsMatchedOnItsRecord(t *testing.T) {
	cache := dedupe.New(dedupe.Config{Tables: mapping.Default(nil)})
	h := newHarness(t, func(c *Config) { c.Echoes = cache })
	p := cache.BeginWrite("incident", sysID(1), "", map[string]string{"state": "2"})
	defer p.Cancel()
	ours := event(1, 5) // changed: state, comments; record state 2
	ours["changed"] = []string{"state"}
	wantAccepted(t, h.send(mustJSON(t, ours)), 0, 0, 1)
	theirs := event(1, 6)
	theirs["changed"] = []string{"state"}
	theirs["record"] = map[string]any{"number": "INC0000001", "state": "3"}
	wantAccepted(t, h.send(mustJSON(t, theirs)), 1, 0, 0)
	if msgs := h.stored(); len(msgs) != 1 || msgs[0].Header.Get(events.HeaderMsgID) != "incident:"+sysID(1)+":6:update" {
		t.Fatalf("SN_EVENTS should hold only the other person's version 6, holds %d messages", len(msgs))
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestIngest_NATSDownAnswers503ThenRecoversWithoutRestart(t *testing.T) {
	h := newHarness(t, nil)
	wantAccepted(t, h.send(mustJSON(t, event(1, 1))), 1, 0, 0)
	if r := h.get("/readyz"); r.status != 200 {
		t.Fatalf("/readyz %d %s before the outage, want 200", r.status, r.body)
	}

	h.server.Shutdown()
	h.server.WaitForShutdown()

	r := h.send(mustJSON(t, event(2, 1)))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "3" {
		t.Fatalf("with NATS down: answer %d (Retry-After %q) %s, want 503 with Retry-After 3", r.status, r.header.Get("Retry-After"), r.body)
	}
	if m := r.json(t); m["error"] == nil {
		t.Errorf("503 body %s has no error", r.body)
	}
	if r := h.get("/readyz"); r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("/readyz with NATS down: %d %s, want 503 with Retry-After", r.status, r.body)
	}
	if r := h.get("/healthz"); r.status != 200 {
		t.Errorf("/healthz with NATS down: %d, want 200 (the process is up)", r.status)
	}

	h.server = natstest.Restart(t, h.server, h.opts)
	waitFor(t, "/readyz to answer 200 after the NATS restart", 20*time.Second, func() bool { return h.get("/readyz").status == 200 })
	// The sender retries what got the 503. The first try may have been
	// stored after all: the NATS client holds a publish made while
	// disconnected and sends it on reconnect, after the receiver gave up
	// waiting for its ack. Then the retry is a duplicate -- stored once
	// either way, which is what the 503 and the msg id promise.
	r = h.send(mustJSON(t, event(2, 1)))
	var got Accepted
	if r.status != http.StatusAccepted || json.Unmarshal(r.body, &got) != nil || got.Accepted+got.Duplicates != 1 || got.Echoes != 0 {
		t.Fatalf("retry after the restart: answer %d %s, want 202 with the event accepted or a duplicate", r.status, r.body)
	}
	_, h.js = natstest.Connect(t, h.server)
	if n := len(h.stored()); n != 2 {
		t.Fatalf("SN_EVENTS holds %d messages after the restart, want 2", n)
	}
}

func TestIngest_StreamMissingAnswers503(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.js.DeleteStream(context.Background(), events.StreamSN); err != nil {
		t.Fatal(err)
	}
	if r := h.get("/readyz"); r.status != 503 || !strings.Contains(string(r.body), events.StreamSN) {
		t.Fatalf("/readyz without SN_EVENTS: %d %s, want 503 naming the stream", r.status, r.body)
	}
	if r := h.send(mustJSON(t, event(1, 1))); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("publish without SN_EVENTS: %d %s, want 503 with Retry-After", r.status, r.body)
	}
}

func TestEndpoints_HealthReadyMetrics(t *testing.T) {
	h := newHarness(t, nil)
	if r := h.get("/healthz"); r.status != 200 || r.json(t)["status"] != "ok" {
		t.Fatalf("/healthz: %d %s", r.status, r.body)
	}
	if r := h.get("/readyz"); r.status != 200 || r.json(t)["status"] != "ready" {
		t.Fatalf("/readyz: %d %s", r.status, r.body)
	}
	body := mustJSON(t, event(1, 1))
	h.send(body)
	h.send(body)
	h.post(body, secretB, "x", time.Now())
	h.post(body, webhook.Secret{}, "x", time.Now())
	r := h.get("/metrics")
	if r.status != 200 {
		t.Fatalf("/metrics: %d", r.status)
	}
	for _, want := range []string{
		`bridge_ingest_events_published_total{table="incident"} 1`,
		`bridge_ingest_duplicates_total{table="incident"} 1`,
		`bridge_ingest_signature_failures_total{reason="signature"} 1`,
		`bridge_ingest_signature_failures_total{reason="missing_headers"} 1`,
		`bridge_http_requests_total{code="202",path="/webhooks/servicenow"} 2`,
		`bridge_http_requests_total{code="401",path="/webhooks/servicenow"} 2`,
		`bridge_ingest_publish_seconds_count 2`,
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestErrors_JSONShapeForUnknownRoutesMethodsAndPanics(t *testing.T) {
	h := newHarness(t, nil)
	h.rcv.e.GET("/boom", func(echo.Context) error { panic("boom: " + secretA.Encoded()[:3]) })
	h.rcv.e.GET("/fails", func(echo.Context) error { return errors.New("database password=hunter2 rejected") })
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/nope", 404},
		{"GET", Path, 405},
		{"GET", "/boom", 500},
		{"GET", "/fails", 500},
	} {
		req, _ := http.NewRequest(c.method, h.http.URL+c.path, nil)
		r := h.do(req)
		if r.status != c.status {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, r.status, c.status)
			continue
		}
		m := r.json(t)
		if m["error"] == nil || strings.Contains(string(r.body), "boom") || strings.Contains(string(r.body), "hunter2") || strings.Contains(string(r.body), "goroutine") {
			t.Errorf("%s %s: body %s must be a JSON error without internals", c.method, c.path, r.body)
		}
	}
	if logs := h.logs.String(); !strings.Contains(logs, "panic while handling a request") || strings.Contains(logs, "goroutine ") {
		t.Errorf("the panic should be logged once, without a stack trace:\n%s", logs)
	}
}

func TestServe_FinishesInFlightRequestsOnShutdown(t *testing.T) {
	h := newHarness(t, nil)
	started := make(chan struct{})
	h.rcv.e.GET("/slow", func(c echo.Context) error {
		close(started)
		time.Sleep(300 * time.Millisecond)
		return c.String(200, "done")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.rcv.Serve(ctx, ln, 5*time.Second) }()

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	got := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://" + ln.Addr().String() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-started
	cancel()
	if s := <-got; s != "done" {
		t.Fatalf("in-flight request got %q, want it finished with \"done\"", s)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("the listener still accepts connections after shutdown")
	}
}

func TestNew_RequiresConnAndSecrets(t *testing.T) {
	if _, err := New(Config{Secrets: []webhook.Secret{secretA}}); err == nil {
		t.Error("New without a NATS connection succeeded")
	}
	s := natstest.RunServer(t)
	nc, _ := natstest.Connect(t, s)
	if _, err := New(Config{Conn: nc}); err == nil || !strings.Contains(err.Error(), "BRIDGE_WEBHOOK_SECRETS") {
		t.Errorf("New without secrets: %v, want an error naming BRIDGE_WEBHOOK_SECRETS", err)
	}
}

func TestServe_IdleNewConnectionDoesNotHoldShutdown(t *testing.T) {
	// A client that connected but has not sent a request yet is not
	// in-flight work: net/http would wait 5s for it before calling it idle.
	// It holds the shutdown for the drain grace at most.
	h := newHarness(t, func(c *Config) { c.DrainGrace = 300 * time.Millisecond })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.rcv.Serve(ctx, ln, 2*time.Second) }()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(100 * time.Millisecond) // let the server accept it
	start := time.Now()
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve with a silent connection open: %v", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("shutdown took %s with only a silent connection open, want the 300ms drain grace and little more", d)
	}
}
