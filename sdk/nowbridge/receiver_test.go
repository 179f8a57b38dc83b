package nowbridge_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

var (
	appSecret   = webhook.NewSecret([]byte("an apply secret of 32 bytes.....")) // what BRIDGE_APPLY_SECRET holds
	otherSecret = webhook.NewSecret([]byte("someone else's key of 32 bytes.."))
)

// receiverServer serves NewApplyReceiver around h on httptest.
func receiverServer(t *testing.T, h nowbridge.ApplyHandler) *httptest.Server {
	t.Helper()
	rcv, err := nowbridge.NewApplyReceiver(nowbridge.ReceiverConfig{Secrets: []string{appSecret.Encoded()}, Logger: testLogger(t)}, h)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rcv)
	t.Cleanup(srv.Close)
	return srv
}

// The bridge's own HTTP applier posts to the receiver: the handler gets the
// typed message with its id, and each answer means to the bridge what the
// receiver's documentation says.
func TestApplyReceiver_AnswersTheBridgesHTTPApplierAsItExpects(t *testing.T) {
	var (
		mu  sync.Mutex
		got []nowbridge.ApplyMessage
	)
	srv := receiverServer(t, func(ctx context.Context, m *nowbridge.ApplyMessage) error {
		mu.Lock()
		got = append(got, *m)
		mu.Unlock()
		switch m.Fields["title"] {
		case "refuse":
			return nowbridge.Permanent(errors.New("the app refuses this title"))
		case "busy":
			return nowbridge.RetryAfter(errors.New("database in maintenance"), 7*time.Second)
		case "fail":
			return errors.New("database down")
		}
		if m.ExternalID == "" {
			m.ExternalID = "TCK-" + m.Number // the app created its ticket: link it
		}
		return nil
	})
	a := apply.NewHTTPApplier(srv.URL, appSecret, 5*time.Second, 2)
	t.Cleanup(a.CloseIdleConnections)
	ctx := context.Background()
	sys := sysID(1)

	res, err := a.Apply(ctx, applyMessage(sys, 2, events.ActionInsert, nowbridge.Fields{"title": "Email down"}))
	if err != nil || res.ExternalID != "TCK-INC0000002" || res.AlreadyNewer {
		t.Fatalf("apply v2 = %+v, %v; want applied, linked to TCK-INC0000002", res, err)
	}
	mu.Lock()
	first := got[0]
	mu.Unlock()
	if want := events.ApplyMsgID("incident", sys, 2, events.ActionInsert); first.MsgID != want || first.SysID != sys || first.Version != 2 || first.Entity != "ticket" {
		t.Errorf("handler got %+v; want the message with id %s", first, want)
	}

	// The same version again (a redelivery): applied, without the handler.
	if res, err := a.Apply(ctx, applyMessage(sys, 2, events.ActionInsert, nowbridge.Fields{"title": "Email down"})); err != nil || res.AlreadyNewer {
		t.Errorf("redelivered v2 = %+v, %v; want applied", res, err)
	}
	// An older version: 409, which the bridge counts as applied.
	if res, err := a.Apply(ctx, applyMessage(sys, 1, events.ActionUpdate, nil)); err != nil || !res.AlreadyNewer {
		t.Errorf("older v1 = %+v, %v; want AlreadyNewer (409)", res, err)
	}
	mu.Lock()
	if len(got) != 1 {
		t.Errorf("the handler ran %d times; the redelivery and the older version must not reach it", len(got))
	}
	mu.Unlock()

	_, err = a.Apply(ctx, applyMessage(sys, 3, events.ActionUpdate, nowbridge.Fields{"title": "refuse"}))
	if d := consume.Classify(err); d.Action != consume.ActionDeadLetter || !strings.Contains(err.Error(), "422") {
		t.Errorf("Permanent: err %v classified %v; want a 422 the bridge dead-letters", err, d.Action)
	}
	_, err = a.Apply(ctx, applyMessage(sys, 4, events.ActionUpdate, nowbridge.Fields{"title": "busy"}))
	if d := consume.Classify(err); d.Action != consume.ActionRetry || d.Delay != 7*time.Second {
		t.Errorf("RetryAfter(7s): err %v classified %v after %v; want a retry after 7s", err, d.Action, d.Delay)
	}
	_, err = a.Apply(ctx, applyMessage(sys, 4, events.ActionUpdate, nowbridge.Fields{"title": "fail"}))
	if d := consume.Classify(err); d.Action != consume.ActionRetry || !strings.Contains(err.Error(), "503") {
		t.Errorf("an error: err %v classified %v; want a 503 the bridge retries", err, d.Action)
	}
	// After the failures, version 4 still reaches the handler.
	if _, err := a.Apply(ctx, applyMessage(sys, 4, events.ActionUpdate, nowbridge.Fields{"title": "fine"})); err != nil {
		t.Errorf("v4 after its failures: %v", err)
	}

	// Signed with another secret: 401, which the bridge dead-letters.
	wrong := apply.NewHTTPApplier(srv.URL, otherSecret, 5*time.Second, 1)
	t.Cleanup(wrong.CloseIdleConnections)
	_, err = wrong.Apply(ctx, applyMessage(sys, 5, events.ActionUpdate, nil))
	if d := consume.Classify(err); d.Action != consume.ActionDeadLetter || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong secret: err %v classified %v; want a 401 dead letter", err, d.Action)
	}
}

// signed builds a request the way the bridge signs it.
func signed(t *testing.T, url string, secret webhook.Secret, id string, at time.Time, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	webhook.SetHeaders(req.Header, secret, id, at, body)
	return req
}

func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Requests that are not the bridge's signed apply messages never reach the
// handler.
func TestApplyReceiver_RefusesWhatTheBridgeDidNotSend(t *testing.T) {
	called := false
	srv := receiverServer(t, func(context.Context, *nowbridge.ApplyMessage) error { called = true; return nil })
	body, _ := applyMessage(sysID(1), 1, events.ActionUpdate, nil).Body()
	now := time.Now()
	big := bytes.Repeat([]byte("x"), 5<<20)
	get, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	cases := []struct {
		name string
		req  *http.Request
		want int
	}{
		{"GET", get, http.StatusMethodNotAllowed},
		{"no signature", func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
			return r
		}(), http.StatusUnauthorized},
		{"other secret", signed(t, srv.URL, otherSecret, "id-1", now, body), http.StatusUnauthorized},
		{"signed an hour ago", signed(t, srv.URL, appSecret, "id-1", now.Add(-time.Hour), body), http.StatusUnauthorized},
		{"body changed after signing", func() *http.Request {
			r := signed(t, srv.URL, appSecret, "id-1", now, body)
			r.Body = io.NopCloser(bytes.NewReader(bytes.Replace(body, []byte(`"version":1`), []byte(`"version":9`), 1)))
			return r
		}(), http.StatusUnauthorized},
		{"not JSON", signed(t, srv.URL, appSecret, "id-1", now, []byte("version=1")), http.StatusBadRequest},
		{"over 4 MiB", signed(t, srv.URL, appSecret, "id-1", now, big), http.StatusRequestEntityTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if status, b := do(t, c.req); status != c.want || !strings.Contains(b, `"error"`) {
				t.Errorf("status %d %s, want %d with an error", status, b, c.want)
			}
		})
	}
	if called {
		t.Error("the handler was called for a refused request")
	}
	if status, _ := do(t, signed(t, srv.URL, appSecret, "id-1", now, body)); status != http.StatusOK || !called {
		t.Errorf("the genuine request: status %d, handler called %v", status, called)
	}
}

// The results receiver verifies, decodes and answers the same way.
func TestResultsReceiver_DeliversTypedResults(t *testing.T) {
	var got []nowbridge.Result
	rcv, err := nowbridge.NewResultsReceiver(nowbridge.ReceiverConfig{Secrets: []string{otherSecret.Encoded(), appSecret.Encoded()}, Logger: testLogger(t)},
		func(_ context.Context, r *nowbridge.Result) error {
			got = append(got, *r)
			if r.Outcome == nowbridge.OutcomeRetrying {
				return errors.New("not now")
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	count := int64(0)
	r := nowbridge.Result{ExternalID: "TCK-1", Version: 3, Entity: "ticket", Action: "upsert", Outcome: nowbridge.OutcomeCreated,
		Table: "incident", SysID: sysID(1), Number: "INC0010001", SysModCount: &count, URL: "https://dev1.service-now.com/nav_to.do?uri=incident.do?sys_id=" + sysID(1)}
	body := mustJSON(t, r)
	id := events.ResultMsgID("ticket", "TCK-1", 3, nowbridge.OutcomeCreated)
	if status, b := do(t, signed(t, srv.URL, appSecret, id, time.Now(), body)); status != http.StatusOK {
		t.Fatalf("status %d %s", status, b)
	}
	if len(got) != 1 || got[0].Number != "INC0010001" || got[0].SysModCount == nil || got[0].URL != r.URL {
		t.Fatalf("handler got %+v", got)
	}
	r.Outcome = nowbridge.OutcomeRetrying
	if status, _ := do(t, signed(t, srv.URL, appSecret, id+"r", time.Now(), mustJSON(t, r))); status != http.StatusServiceUnavailable {
		t.Errorf("a failing handler answered %d, want 503", status)
	}
	if _, err := nowbridge.NewResultsReceiver(nowbridge.ReceiverConfig{}, func(context.Context, *nowbridge.Result) error { return nil }); err == nil || !strings.Contains(err.Error(), "BRIDGE_APPLY_SECRET") {
		t.Errorf("a receiver without secrets: %v; want an error naming the bridge's setting", err)
	}
}

// The bridge's own results delivery (BRIDGE_RESULTS_URL) POSTs every result
// of BRIDGE_RESULTS to the results receiver; a 503 is retried, and each
// external id's results arrive in order.
func TestResultsReceiver_TakesTheBridgesResultsDelivery(t *testing.T) {
	e := newEnv(t)
	var (
		mu     sync.Mutex
		got    []string
		failed bool
	)
	rcv, err := nowbridge.NewResultsReceiver(nowbridge.ReceiverConfig{Secrets: []string{appSecret.Encoded()}, Logger: testLogger(t)},
		func(_ context.Context, r *nowbridge.Result) error {
			mu.Lock()
			defer mu.Unlock()
			if r.Outcome == nowbridge.OutcomeRetrying && !failed {
				failed = true
				return errors.New("the app's database is busy")
			}
			got = append(got, fmt.Sprintf("%s %d %s %s", r.ExternalID, r.Version, r.Outcome, r.Number))
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	e.publishResult(result("TCK-1", 1, nowbridge.OutcomeRetrying))
	e.publishResult(result("TCK-1", 1, nowbridge.OutcomeCreated))
	e.publishResult(result("TCK-1", 2, nowbridge.OutcomeRejected))

	d, err := apply.NewResultsDelivery(apply.ResultsConfig{JS: e.js, URL: srv.URL, Secret: appSecret,
		Tuning: consume.Tuning{Workers: 2, RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	e.run(d.Run)
	want := []string{"TCK-1 1 retrying ", "TCK-1 1 created INC0010001", "TCK-1 2 rejected INC0010001"}
	waitFor(t, 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 3 }, func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("the app received %q", got)
	})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != fmt.Sprint(want) || !failed {
		t.Errorf("the app received %q (after one 503: %v), want %q", got, failed, want)
	}
}
