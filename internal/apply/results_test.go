package apply

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// resultsApp is an app's results endpoint: it verifies each POST's
// signature and answers as told.
type resultsApp struct {
	*httptest.Server
	mu       sync.Mutex
	got      []events.Result // accepted, in order
	ids      []string        // webhook-id of each accepted one
	attempts map[string]int  // by webhook-id
	problems []string
}

func newResultsApp(t *testing.T, secret webhook.Secret, answer func(r events.Result, attempt int) int) *resultsApp {
	a := &resultsApp{attempts: map[string]int{}}
	v := webhook.Verifier{Secrets: []webhook.Secret{secret}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		a.mu.Lock()
		defer a.mu.Unlock()
		id := req.Header.Get(webhook.HeaderID)
		if err := v.Verify(id, req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body); err != nil {
			a.problems = append(a.problems, "signature: "+err.Error())
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var r events.Result
		if err := json.Unmarshal(body, &r); err != nil {
			a.problems = append(a.problems, "body: "+err.Error())
		}
		if k := req.Header.Get(HeaderIdempotencyKey); k != id {
			a.problems = append(a.problems, "Idempotency-Key "+k+" differs from webhook-id "+id)
		}
		if req.Header.Get(HeaderOutcome) != r.Outcome || req.Header.Get(HeaderEntity) != r.Entity {
			a.problems = append(a.problems, "Bridge-Outcome/Bridge-Entity headers do not match the body: "+req.Header.Get(HeaderOutcome))
		}
		a.attempts[id]++
		status := answer(r, a.attempts[id])
		if status/100 == 2 {
			a.got = append(a.got, r)
			a.ids = append(a.ids, id)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"error":"unknown ticket"}`)
	}))
	t.Cleanup(a.Close)
	return a
}

func (e *env) publishResult(r events.Result) string {
	e.t.Helper()
	body, _ := json.Marshal(r)
	id := events.ResultMsgID(r.Entity, r.ExternalID, r.Version, r.Outcome)
	msg := &nats.Msg{Subject: events.ResultSubject(r.Entity, r.Outcome), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, id)
	if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
		e.t.Fatal(err)
	}
	return id
}

func TestResultsDelivery_SignedInOrderRetriedAndRefusedOnesDeadLettered(t *testing.T) {
	e := newEnv(t)
	secret := newSecret()
	app := newResultsApp(t, secret, func(r events.Result, attempt int) int {
		switch {
		case r.ExternalID == "TCK-GONE":
			return http.StatusUnprocessableEntity
		case r.Outcome == events.OutcomeRetrying && attempt < 3:
			return http.StatusServiceUnavailable // the first result of TCK-1 waits: its second must too
		}
		return http.StatusOK
	})
	d, err := NewResultsDelivery(ResultsConfig{
		JS: e.js, URL: app.URL, Secret: secret,
		Tuning:     consume.Tuning{Workers: 4, Batch: 16, AckWait: 2 * time.Second, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond},
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	mc := int64(1)
	ids := []string{
		e.publishResult(events.Result{ExternalID: "TCK-1", Version: 1, Entity: "ticket", Action: "upsert", Outcome: events.OutcomeRetrying,
			Error: &events.ResultError{Status: 429, Message: "Rate limit exceeded", Reason: "rate_limited"}}),
		e.publishResult(events.Result{ExternalID: "TCK-1", Version: 1, Entity: "ticket", Action: "upsert", Outcome: events.OutcomeUpdated,
			Table: "incident", SysID: sysID(1), Number: "INC0010001", SysModCount: &mc}),
		e.publishResult(events.Result{ExternalID: "TCK-2", Version: 4, Entity: "ticket", Action: "upsert", Outcome: events.OutcomeCreated,
			Table: "incident", SysID: sysID(2), Number: "INC0010002"}),
		e.publishResult(events.Result{ExternalID: "TCK-GONE", Version: 2, Entity: "ticket", Action: "upsert", Outcome: events.OutcomeRejected,
			Error: &events.ResultError{Status: 403, Message: "Operation Failed", DeadLettered: true}}),
	}
	var dead []*jetstream.RawStreamMsg
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		app.mu.Lock()
		n := len(app.got)
		app.mu.Unlock()
		dead = e.dlqMsgs()
		if n == 3 && len(dead) == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	app.mu.Lock()
	got, gotIDs := slices.Clone(app.got), slices.Clone(app.ids)
	attempts := app.attempts[ids[0]]
	for _, p := range app.problems {
		t.Error(p)
	}
	app.mu.Unlock()
	if len(got) != 3 || len(dead) != 1 {
		t.Fatalf("delivered %d results and dead-lettered %d, want 3 and 1: %v", len(got), len(dead), got)
	}
	var tck1 []string
	for i, r := range got {
		if r.ExternalID == "TCK-1" {
			tck1 = append(tck1, r.Outcome+" "+gotIDs[i])
		}
	}
	if want := []string{"retrying " + ids[0], "updated " + ids[1]}; !slices.Equal(tck1, want) {
		t.Errorf("TCK-1's results arrived as %q, want %q (in order, webhook-id = the result's id)", tck1, want)
	}
	if attempts != 3 {
		t.Errorf("the retrying result was POSTed %d times, want 3 (two 503s, then 200)", attempts)
	}
	h := dead[0].Header
	if dead[0].Subject != "bridge.dlq.results" || h.Get(events.HeaderDLQStatus) != "422" || !strings.Contains(h.Get(events.HeaderDLQResponse), "unknown ticket") ||
		h.Get(events.HeaderDLQHint) != HintResultRefused || h.Get(events.HeaderDLQSubject) != "bridge.result.ticket.rejected" {
		t.Errorf("dead letter on %s with %v, want the app's 422 and its answer on bridge.dlq.results", dead[0].Subject, h)
	}

	// Once the app is fixed, `bridge dlq retry` stores the result again; the
	// app gets it under its first id, so it can tell it from a new one.
	app.mu.Lock()
	app.attempts = map[string]int{}
	app.mu.Unlock()
	fixed := newResultsApp(t, secret, func(events.Result, int) int { return http.StatusNoContent })
	d.post.Client = fixed.Client()
	d.url = fixed.URL
	if _, err := dlq.Retry(context.Background(), e.js, dead[0].Sequence); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		fixed.mu.Lock()
		n := len(fixed.got)
		fixed.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	fixed.mu.Lock()
	defer fixed.mu.Unlock()
	if len(fixed.ids) != 1 || fixed.ids[0] != ids[3] || fixed.got[0].ExternalID != "TCK-GONE" {
		t.Errorf("after the retry the app got %v under %v, want TCK-GONE's result under %s", fixed.got, fixed.ids, ids[3])
	}
}

func TestNewResultsDelivery_RefusesAnUnusableSetup(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		cfg  ResultsConfig
		want string
	}{
		{ResultsConfig{JS: e.js, URL: "app.example.com/results", Secret: newSecret()}, "BRIDGE_RESULTS_URL \"app.example.com/results\" is not an http(s) URL"},
		{ResultsConfig{JS: e.js, URL: "https://app.example.com/results"}, "set BRIDGE_APPLY_SECRET or BRIDGE_WEBHOOK_SECRETS"},
	} {
		if _, err := NewResultsDelivery(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewResultsDelivery(%s) = %v, want an error containing %q", tc.cfg.URL, err, tc.want)
		}
	}
}
