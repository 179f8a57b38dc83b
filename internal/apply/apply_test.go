package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is one test's real nats-server with the bridge's streams and buckets.
type env struct {
	t      testing.TB
	nc     *nats.Conn
	js     jetstream.JetStream
	url    string
	states *state.Store
	links  *state.Links
}

func newEnv(t testing.TB) *env {
	t.Helper()
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	st, ln, err := state.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, nc: nc, js: js, url: s.ClientURL(), states: st, links: ln}
}

// testConfig is a pipeline config with test-sized timings.
func (e *env) testConfig(a Applier) Config {
	return Config{
		JS: e.js, Applier: a, Mapping: mapping.Default(nil), States: e.states, Links: e.links,
		Tuning: consume.Tuning{
			Workers: 4, Batch: 16, AckWait: 2 * time.Second, MaxDeliver: 20,
			RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		},
		Registerer: prometheus.NewRegistry(),
	}
}

// start runs the pipeline until the test ends (or stop is called).
func (e *env) start(cfg Config) (*Runner, func()) {
	e.t.Helper()
	r, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("Run: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	return r, stop
}

func sysID(i int) string { return fmt.Sprintf("%032x", i+1) }

func snEvent(sys string, version int64, action string) events.SNEvent {
	states := []string{"1", "2", "3", "6", "7", "8"}
	return events.SNEvent{
		Instance: "dev12345", Table: "incident", SysID: sys, Action: action, SysModCount: events.ModCount(version),
		SysUpdatedOn: time.Date(2026, 11, 28, 10, 0, int(version%60), 0, time.UTC).Format(events.SNTimeLayout),
		SysUpdatedBy: "beth.anglin",
		Record: events.Fields{
			"number": "INC" + sys[25:], "short_description": "Email down v" + strconv.FormatInt(version, 10),
			"state": states[version%int64(len(states))], "priority": "2", "urgency": "2", "impact": "1",
			"sys_id": sys, "sys_mod_count": strconv.FormatInt(version, 10), "u_other": "ignored",
		},
	}
}

// publish stores an event in SN_EVENTS the way the receiver does.
func (e *env) publish(ev events.SNEvent, msgID string) {
	e.t.Helper()
	body, err := json.Marshal(ev)
	if err != nil {
		e.t.Fatal(err)
	}
	if msgID == "" {
		msgID = ev.MsgID()
	}
	msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, msgID)
	msg.Header.Set(events.HeaderSource, events.SourceWebhook)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.js.PublishMsg(ctx, msg); err != nil {
		e.t.Fatal(err)
	}
}

// waitDrained waits until the apply consumer has acked (or dead-lettered)
// every event in SN_EVENTS. The ack floor says so: right after a publish
// the consumer's pending count may not include it yet.
func (e *env) waitDrained(durable string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var info *jetstream.ConsumerInfo
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var last uint64
		st, err := e.js.Stream(ctx, events.StreamSN)
		if err == nil {
			last = st.CachedInfo().State.LastSeq
			var c jetstream.Consumer
			if c, err = e.js.Consumer(ctx, events.StreamSN, durable); err == nil {
				info, err = c.Info(ctx)
			}
		}
		cancel()
		if err == nil && info.AckFloor.Stream >= last && info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("apply consumer not drained after %v: %+v", timeout, info)
}

type applied struct {
	Subject string
	MsgID   string
	Message
}

// appliedMsgs returns everything in BRIDGE_APPLY, in stream order.
func (e *env) appliedMsgs() []applied {
	e.t.Helper()
	return streamMsgs(e, events.StreamApply, func(m *jetstream.RawStreamMsg) applied {
		var a applied
		if err := json.Unmarshal(m.Data, &a.Message); err != nil {
			e.t.Fatalf("bridge.apply body %q: %v", m.Data, err)
		}
		a.Subject, a.MsgID = m.Subject, m.Header.Get(events.HeaderMsgID)
		return a
	})
}

func (e *env) dlqMsgs() []*jetstream.RawStreamMsg {
	return streamMsgs(e, events.StreamDLQ, func(m *jetstream.RawStreamMsg) *jetstream.RawStreamMsg { return m })
}

func streamMsgs[T any](e *env, name string, conv func(*jetstream.RawStreamMsg) T) []T {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []T
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out = append(out, conv(m))
	}
	return out
}

// waitApplied waits until BRIDGE_APPLY holds n messages.
func (e *env) waitApplied(n int, timeout time.Duration) []applied {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := e.appliedMsgs()
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				e.t.Fatalf("BRIDGE_APPLY holds %d messages, want %d", len(got), n)
			}
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestApply_UpdatePublishesOneMappedMessage(t *testing.T) {
	e := newEnv(t)
	r, _ := e.start(e.testConfig(&NATSApplier{JS: e.js}))
	ev := snEvent(sysID(0), 4, events.ActionUpdate)
	ev.Record["state"] = "2"
	ev.Record["correlation_id"] = "TCK-1042"
	e.publish(ev, "")
	e.publish(ev, "") // the same webhook again: the stream keeps one
	e.waitDrained("apply", 10*time.Second)
	got := e.waitApplied(1, 5*time.Second)[0]

	if got.Subject != "bridge.apply.ticket.update" {
		t.Errorf("subject = %s, want bridge.apply.ticket.update", got.Subject)
	}
	if want := "incident:" + sysID(0) + ":4:update"; got.MsgID != want {
		t.Errorf("Nats-Msg-Id = %s, want %s", got.MsgID, want)
	}
	wantFields := events.Fields{"title": "Email down v4", "status": "in_progress", "priority": "2", "urgency": "2", "impact": "1"}
	if got.SysID != sysID(0) || got.Number != ev.Record["number"] || got.Version != 4 || got.Table != "incident" ||
		got.ExternalID != "TCK-1042" || got.Entity != "ticket" || got.Action != "update" || fmt.Sprint(got.Fields) != fmt.Sprint(wantFields) {
		t.Errorf("message = %+v\nwant sys_id %s, number %s, version 4, external_id TCK-1042, fields %v", got.Message, sysID(0), ev.Record["number"], wantFields)
	}
	if !got.UpdatedAt.Equal(time.Date(2026, 11, 28, 10, 0, 4, 0, time.UTC)) {
		t.Errorf("updated_at = %v", got.UpdatedAt)
	}
	ctx := context.Background()
	rec, _, _, err := e.states.Get(ctx, "incident", sysID(0))
	if err != nil || rec.Version != 4 || rec.Fields["state"] != "2" || rec.Fields["short_description"] != "Email down v4" {
		t.Errorf("state = %+v %v, want version 4 with the ServiceNow values", rec, err)
	}
	if _, ext, ok, _ := e.links.ExternalID(ctx, "incident", sysID(0)); !ok || ext != "TCK-1042" {
		t.Errorf("link from correlation_id = %q %v, want TCK-1042", ext, ok)
	}
	if n := testutil.ToFloat64(r.metrics.applied.WithLabelValues("nats", "update")); n != 1 {
		t.Errorf("applied_total{nats,update} = %v, want 1", n)
	}
}

func TestApply_OutOfOrderDuplicateAndReplayAreNeverAppliedTwice(t *testing.T) {
	e := newEnv(t)
	r, _ := e.start(e.testConfig(&NATSApplier{JS: e.js}))
	sys := sysID(1)
	v5, v4 := snEvent(sys, 5, events.ActionUpdate), snEvent(sys, 4, events.ActionUpdate)
	e.publish(v5, "")
	e.publish(v4, "")                                   // 5 before 4
	e.publish(v5, "")                                   // duplicate webhook (same Nats-Msg-Id)
	e.publish(v5, "replay:"+v5.MsgID())                 // replay / late reconcile: passes the stream, not the guard
	e.publish(snEvent(sys, 5, events.ActionDelete), "") // delete keeps the version
	e.waitDrained("apply", 10*time.Second)

	got := e.waitApplied(2, 5*time.Second)
	if got[0].MsgID != v5.MsgID() || got[1].Subject != "bridge.apply.ticket.delete" || got[1].Version != 5 {
		t.Fatalf("applied %s then %s v%d; want v5 update then its delete", got[0].MsgID, got[1].Subject, got[1].Version)
	}
	if n := testutil.ToFloat64(r.metrics.stale); n != 2 {
		t.Errorf("stale_total = %v, want 2 (v4 after v5, the replayed v5)", n)
	}
	if v, known, deleted, err := e.states.LastVersion(context.Background(), "incident", sys); v != 5 || !known || !deleted || err != nil {
		t.Errorf("state = v%d known %v deleted %v err %v; want v5 deleted", v, known, deleted, err)
	}
	// Anything at or below the deleted version stays stale.
	e.publish(v4, "replay:"+v4.MsgID())
	e.waitDrained("apply", 10*time.Second)
	if n := len(e.appliedMsgs()); n != 2 {
		t.Fatalf("BRIDGE_APPLY holds %d messages after a replay of v4, want 2", n)
	}
	// bridge replay: the guard's verdict, and --force around it.
	ctx := context.Background()
	if stale, at, err := r.Stale(ctx, &v4); !stale || at != 5 || err != nil {
		t.Fatalf("Stale(v4) = %v %d %v, want true 5", stale, at, err)
	}
	if out, err := r.HandleForced(ctx, &v4); out != OutcomeApplied || err != nil {
		t.Fatalf("HandleForced(v4) = %s %v, want applied", out, err)
	}
	if v, _, deleted, _ := e.states.LastVersion(ctx, "incident", sys); v != 5 || !deleted {
		t.Fatalf("forced replay of v4 moved the state to v%d (deleted %v); want it left at v5 deleted", v, deleted)
	}
}

// appServer is a SaaS endpoint that verifies every request and records it.
type appServer struct {
	*httptest.Server
	verifier webhook.Verifier
	mu       sync.Mutex
	attempts map[string][]string // idempotency key -> webhook-ids of each attempt
	accepted []Message           // 2xx answers, in order
	problems []string
	respond  func(key string, attempt int, m Message) (int, string)
}

func newAppServer(t *testing.T, secret webhook.Secret, respond func(key string, attempt int, m Message) (int, string)) *appServer {
	return newAppServerRetryAfter(t, secret, "", respond)
}

// newAppServerRetryAfter answers every 503 with Retry-After: retryAfter.
func newAppServerRetryAfter(t *testing.T, secret webhook.Secret, retryAfter string, respond func(key string, attempt int, m Message) (int, string)) *appServer {
	a := &appServer{verifier: webhook.Verifier{Secrets: []webhook.Secret{secret}}, attempts: map[string][]string{}, respond: respond}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		a.mu.Lock()
		defer a.mu.Unlock()
		if err := a.verifier.Verify(req.Header.Get(webhook.HeaderID), req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body); err != nil {
			a.problems = append(a.problems, "signature: "+err.Error())
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var m Message
		if err := json.Unmarshal(body, &m); err != nil {
			a.problems = append(a.problems, "body: "+err.Error())
		}
		key := req.Header.Get(HeaderIdempotencyKey)
		if key != req.Header.Get(webhook.HeaderID) {
			a.problems = append(a.problems, "Idempotency-Key "+key+" differs from webhook-id "+req.Header.Get(webhook.HeaderID))
		}
		a.attempts[key] = append(a.attempts[key], req.Header.Get(webhook.HeaderID))
		status, resp := a.respond(key, len(a.attempts[key]), m)
		if status/100 == 2 {
			a.accepted = append(a.accepted, m)
		}
		w.Header().Set("Content-Type", "application/json")
		if status == http.StatusServiceUnavailable && retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, resp)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *appServer) check(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.problems {
		t.Error(p)
	}
}

func newSecret() webhook.Secret { return webhook.NewSecret([]byte("0123456789abcdef0123456789abcdef")) }

func httpApplier(t *testing.T, url string, secret webhook.Secret) *HTTPApplier {
	h := NewHTTPApplier(url, secret, time.Second, 4)
	t.Cleanup(h.CloseIdleConnections)
	return h
}

func TestApply_HTTPSignedIdempotentRetriedUntilSuccess(t *testing.T) {
	e := newEnv(t)
	secret := newSecret()
	app := newAppServer(t, secret, func(key string, attempt int, m Message) (int, string) {
		if attempt <= 2 {
			return http.StatusServiceUnavailable, `{"error":"maintenance"}`
		}
		return http.StatusCreated, `{"external_id":"TCK-9"}`
	})
	r, _ := e.start(e.testConfig(httpApplier(t, app.URL, secret)))
	sys := sysID(2)
	e.publish(snEvent(sys, 0, events.ActionInsert), "")
	e.waitDrained("apply", 10*time.Second)
	app.check(t)

	key := "incident:" + sys + ":0:insert"
	app.mu.Lock()
	attempts := app.attempts[key]
	app.mu.Unlock()
	if len(attempts) != 3 || attempts[0] != key || attempts[1] != key || attempts[2] != key {
		t.Fatalf("attempts with key %s: %v; want 3 with the same id (503, 503, 201)", key, attempts)
	}
	ctx := context.Background()
	if _, ext, ok, _ := e.links.ExternalID(ctx, "incident", sys); !ok || ext != "TCK-9" {
		t.Errorf("link = %q %v, want TCK-9 from the response", ext, ok)
	}
	if v, known, _, _ := e.states.LastVersion(ctx, "incident", sys); !known || v != 0 {
		t.Errorf("state = v%d known %v, want v0", v, known)
	}
	if n := testutil.ToFloat64(r.metrics.retries.WithLabelValues("server_error")); n != 2 {
		t.Errorf("retries{server_error} = %v, want 2", n)
	}
	if n := testutil.ToFloat64(r.metrics.redelivered); n != 2 {
		t.Errorf("redeliveries = %v, want 2", n)
	}
	// The record's next version carries the id the app gave it.
	e.publish(snEvent(sys, 1, events.ActionUpdate), "")
	e.waitDrained("apply", 10*time.Second)
	app.mu.Lock()
	last := app.accepted[len(app.accepted)-1]
	app.mu.Unlock()
	if last.ExternalID != "TCK-9" || last.Version != 1 {
		t.Errorf("next version sent with external_id %q v%d, want TCK-9 v1", last.ExternalID, last.Version)
	}
}

// Issue 16: an app answering 503 with Retry-After: 1 twice got its attempts
// 1 s and then 31 s apart, because the consumer's BackOff (30s, 1m, ...)
// overrode the second NakWithDelay. With the default ack wait, every
// attempt must now come when the app asked.
func TestApply_RetryAfterIsHonouredOnEveryRetry(t *testing.T) {
	e := newEnv(t)
	secret := newSecret()
	var mu sync.Mutex
	var at []time.Time
	app := newAppServerRetryAfter(t, secret, "1", func(key string, attempt int, m Message) (int, string) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		if attempt <= 2 {
			return http.StatusServiceUnavailable, `{"error":"maintenance"}`
		}
		return http.StatusOK, ""
	})
	cfg := e.testConfig(httpApplier(t, app.URL, secret))
	cfg.AckWait, cfg.HandleTimeout, cfg.RetryMax = 0, 0, time.Minute // the defaults: 30 s ack wait
	e.start(cfg)
	e.publish(snEvent(sysID(5), 1, events.ActionUpdate), "")
	e.waitDrained("apply", 15*time.Second)
	app.check(t)
	mu.Lock()
	defer mu.Unlock()
	if len(at) != 3 {
		t.Fatalf("%d attempts, want 3 (503, 503, 200)", len(at))
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < time.Second || gap > 2500*time.Millisecond {
			t.Errorf("attempt %d came %v after the one before, want 1 s (Retry-After: 1)", i+1, gap)
		}
	}
}

func TestApply_HTTP409IsAppliedAnd422DeadLettersWithTheResponse(t *testing.T) {
	e := newEnv(t)
	secret := newSecret()
	newer, rejected := sysID(3), sysID(4)
	app := newAppServer(t, secret, func(key string, attempt int, m Message) (int, string) {
		if m.SysID == newer {
			return http.StatusConflict, `{"error":"have v9"}`
		}
		return http.StatusUnprocessableEntity, `{"error":"title too long",
"field":"title"}`
	})
	r, _ := e.start(e.testConfig(httpApplier(t, app.URL, secret)))
	e.publish(snEvent(newer, 3, events.ActionUpdate), "")
	e.publish(snEvent(rejected, 7, events.ActionUpdate), "")
	e.waitDrained("apply", 10*time.Second)
	app.check(t)

	if v, known, _, _ := e.states.LastVersion(context.Background(), "incident", newer); !known || v != 3 {
		t.Errorf("409: state v%d known %v, want v3 (applied already)", v, known)
	}
	if v, known, _, _ := e.states.LastVersion(context.Background(), "incident", rejected); known {
		t.Errorf("422: state v%d stored; a rejected version must not count as applied", v)
	}
	dl := e.dlqMsgs()
	if len(dl) != 1 {
		t.Fatalf("BRIDGE_DLQ holds %d messages, want 1 (the 422)", len(dl))
	}
	h := dl[0].Header
	checks := map[string]string{
		"subject":               dl[0].Subject,
		events.HeaderDLQStatus:  h.Get(events.HeaderDLQStatus),
		events.HeaderDLQSubject: h.Get(events.HeaderDLQSubject),
		events.HeaderDLQStream:  h.Get(events.HeaderDLQStream),
		events.HeaderDLQSeq:     h.Get(events.HeaderDLQSeq),
		HeaderDLQResponse:       h.Get(HeaderDLQResponse),
		events.HeaderMsgID:      h.Get(events.HeaderMsgID),
	}
	want := map[string]string{
		"subject": "bridge.dlq.apply", events.HeaderDLQStatus: "422", events.HeaderDLQSubject: "sn.incident.update",
		events.HeaderDLQStream: "SN_EVENTS", events.HeaderDLQSeq: "2",
		HeaderDLQResponse: `{"error":"title too long", "field":"title"}`, events.HeaderMsgID: "apply:SN_EVENTS:2",
	}
	for k, w := range want {
		if checks[k] != w {
			t.Errorf("dead letter %s = %q, want %q", k, checks[k], w)
		}
	}
	if !strings.Contains(h.Get(events.HeaderDLQReason), "422") {
		t.Errorf("dead letter reason %q does not name the status", h.Get(events.HeaderDLQReason))
	}
	var ev events.SNEvent
	if err := json.Unmarshal(dl[0].Data, &ev); err != nil || ev.SysID != rejected {
		t.Errorf("dead letter body is not the original event: %v", err)
	}
	if n := testutil.ToFloat64(r.metrics.dlq); n != 1 {
		t.Errorf("dlq_total = %v, want 1", n)
	}
	if n := testutil.ToFloat64(r.metrics.newer); n != 1 {
		t.Errorf("already_newer_total = %v, want 1", n)
	}
}

func TestApply_PerRecordOrderWithFourWorkersAndRetries(t *testing.T) {
	e := newEnv(t)
	secret := newSecret()
	var maxSeen sync.Map // sys_id -> last accepted version
	var violations atomic.Int32
	app := newAppServer(t, secret, func(key string, attempt int, m Message) (int, string) {
		// Every third version fails once, so later versions queue behind it.
		if m.Version%3 == 1 && attempt == 1 {
			return http.StatusBadGateway, ""
		}
		if prev, ok := maxSeen.Load(m.SysID); ok && prev.(int64) >= m.Version {
			violations.Add(1)
		}
		maxSeen.Store(m.SysID, m.Version)
		return http.StatusOK, ""
	})
	e.start(e.testConfig(httpApplier(t, app.URL, secret)))
	const records, versions = 12, 6
	for v := range int64(versions) {
		for i := range records {
			e.publish(snEvent(sysID(10+i), v, events.ActionUpdate), "")
		}
	}
	e.waitDrained("apply", 30*time.Second)
	app.check(t)
	if n := violations.Load(); n > 0 {
		t.Fatalf("%d versions reached the app after a newer one of the same record", n)
	}
	app.mu.Lock()
	defer app.mu.Unlock()
	bySys := map[string][]int64{}
	for _, m := range app.accepted {
		bySys[m.SysID] = append(bySys[m.SysID], m.Version)
	}
	for i := range records {
		got := bySys[sysID(10+i)]
		if fmt.Sprint(got) != "[0 1 2 3 4 5]" {
			t.Errorf("record %d: versions applied %v, want [0 1 2 3 4 5] (each once, in order)", i, got)
		}
	}
}

func TestApply_RedeliveryAfterCrashAppliesNothingTwice(t *testing.T) {
	e := newEnv(t)
	const records, versions = 8, 3
	for v := range int64(versions) {
		for i := range records {
			e.publish(snEvent(sysID(30+i), v, events.ActionUpdate), "")
		}
	}
	// First bridge: its connection dies right after the 5th app publish,
	// before that version's state write and ack, with more messages pulled.
	nc1, err := nats.Connect(e.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc1.Close)
	js1, _ := jetstream.New(nc1)
	cfg1 := e.testConfig(&NATSApplier{JS: js1})
	cfg1.JS, cfg1.AckWait, cfg1.HandleTimeout = js1, 500*time.Millisecond, 300*time.Millisecond
	st1, ln1, err := state.Open(context.Background(), js1)
	if err != nil {
		t.Fatal(err)
	}
	cfg1.States, cfg1.Links = st1, ln1
	r1, err := New(cfg1)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	crashed := make(chan struct{})
	r1.afterApply = func(*Message) {
		if n.Add(1) == 5 {
			nc1.Close()
			close(crashed)
		}
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- r1.Run(ctx1) }()
	select {
	case <-crashed:
	case <-time.After(10 * time.Second):
		t.Fatal("first bridge never applied 5 events")
	}
	cancel1()
	<-done1

	// Second bridge, same durable consumer: picks up what was never acked.
	cfg2 := e.testConfig(&NATSApplier{JS: e.js})
	cfg2.AckWait, cfg2.HandleTimeout = cfg1.AckWait, cfg1.HandleTimeout
	r2, _ := e.start(cfg2)
	e.waitDrained("apply", 20*time.Second)
	got := e.waitApplied(records*versions, 5*time.Second)

	seen := map[string]int{}
	last := map[string]int64{}
	for _, m := range got {
		seen[m.MsgID]++
		if prev, ok := last[m.SysID]; ok && m.Version <= prev {
			t.Errorf("%s v%d published after v%d", m.SysID, m.Version, prev)
		}
		last[m.SysID] = m.Version
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s in BRIDGE_APPLY %d times", id, c)
		}
	}
	for i := range records {
		if v, _, _, _ := e.states.LastVersion(context.Background(), "incident", sysID(30+i)); v != versions-1 {
			t.Errorf("record %d: state v%d, want v%d", i, v, versions-1)
		}
	}
	if testutil.ToFloat64(r2.metrics.redelivered) == 0 {
		t.Error("the second bridge saw no redeliveries: the crash did not leave anything unacked")
	}
}

func TestApply_TwoReplicasNeverRegressTheState(t *testing.T) {
	e := newEnv(t)
	r1, _ := e.start(e.testConfig(&NATSApplier{JS: e.js}))
	r2, _ := e.start(e.testConfig(&NATSApplier{JS: e.js}))
	const records, versions = 6, 8
	for v := range int64(versions) {
		for i := range records {
			e.publish(snEvent(sysID(60+i), v, events.ActionUpdate), "")
		}
	}
	e.waitDrained("apply", 20*time.Second)
	ids := map[string]bool{}
	for _, m := range e.appliedMsgs() {
		if ids[m.MsgID] {
			t.Errorf("%s in BRIDGE_APPLY twice", m.MsgID)
		}
		ids[m.MsgID] = true
	}
	stale := testutil.ToFloat64(r1.metrics.stale) + testutil.ToFloat64(r2.metrics.stale)
	if got := float64(len(ids)) + stale; got != records*versions {
		t.Errorf("applied %d + stale %v = %v, want every one of the %d events accounted for", len(ids), stale, got, records*versions)
	}
	for i := range records {
		if v, _, _, _ := e.states.LastVersion(context.Background(), "incident", sysID(60+i)); v != versions-1 {
			t.Errorf("record %d: state v%d, want v%d", i, v, versions-1)
		}
	}
}

// TestApply_EchoStoredByAnotherReplicaIsNotApplied: with several replicas a
// webhook of the owner's own write can be stored by a replica whose receiver
// did not know the write; apply, on the owner, recognises it and hands the
// app nothing, while the next version, someone else's, is applied.
func TestApply_EchoStoredByAnotherReplicaIsNotApplied(t *testing.T) {
	e := newEnv(t)
	echoes := dedupe.New(dedupe.Config{})
	cfg := e.testConfig(&NATSApplier{JS: e.js})
	cfg.Echoes = echoes
	e.start(cfg)
	echoes.RecordWrite("incident", sysID(0), 5) // the writeback's write made version 5

	own := snEvent(sysID(0), 5, events.ActionUpdate)
	own.Source = events.SourceWebhook
	e.publish(own, "")
	next := snEvent(sysID(0), 6, events.ActionUpdate)
	next.Source = events.SourceWebhook
	e.publish(next, "")
	e.waitDrained("apply", 10*time.Second)
	got := e.waitApplied(1, 5*time.Second) // both handled: a second message fails it
	if got[0].Version != 6 {
		t.Fatalf("applied version %d, want 6 (5 is the bridge's own write)", got[0].Version)
	}
}
