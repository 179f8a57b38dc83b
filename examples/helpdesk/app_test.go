package helpdesk

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// appEnv is the helpdesk running against a real in-process nats-server
// with the streams the bridge creates; the test plays the bridge: it reads
// the app's changes from APP_EVENTS and publishes apply messages and
// results as the bridge does.
type appEnv struct {
	t    *testing.T
	ctx  context.Context
	js   jetstream.JetStream
	app  *App
	page *httptest.Server
	http *http.Client
	sent jetstream.Consumer // APP_EVENTS, in order
}

func startApp(t *testing.T) *appEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	ns := natstest.RunServer(t)
	nc, js := natstest.Connect(t, ns)
	for _, sc := range []jetstream.StreamConfig{
		{Name: wire.StreamApp, Subjects: []string{wire.AppSubjects}, Duplicates: time.Hour},
		{Name: wire.StreamApply, Subjects: []string{wire.ApplySubjects}, Duplicates: time.Hour},
		{Name: wire.StreamResults, Subjects: []string{wire.ResultsSubjects}, Duplicates: time.Hour},
	} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	app, err := New(ctx, Config{JS: js, DB: filepath.Join(t.TempDir(), "helpdesk.db"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	page := httptest.NewServer(app.Handler())
	sent, err := js.OrderedConsumer(ctx, wire.StreamApp, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		page.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		_ = app.Close()
		nc.Close()
	})
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &appEnv{t: t, ctx: ctx, js: js, app: app, page: page, http: client, sent: sent}
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// post submits a form as the page does and returns where it redirected.
func (e *appEnv) post(path string, form url.Values) string {
	e.t.Helper()
	resp, err := e.http.PostForm(e.page.URL+path, form)
	if err != nil {
		e.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		e.t.Fatalf("POST %s: %d, want 303; body:\n%s", path, resp.StatusCode, body)
	}
	return resp.Header.Get("Location")
}

func (e *appEnv) get(path string) (int, string) {
	e.t.Helper()
	resp, err := e.http.Get(e.page.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitPage polls a page until it contains every want (as the browser's
// polling would show it).
func (e *appEnv) waitPage(path string, want ...string) string {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := e.get(path)
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return body
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s never showed %q; it shows:\n%s", path, missing, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nextSent returns the app's next change on APP_EVENTS.
func (e *appEnv) nextSent() (string, string, wire.AppChange) {
	e.t.Helper()
	msg, err := e.sent.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		e.t.Fatalf("no app change on %s within 10s: %v", wire.StreamApp, err)
	}
	var ch wire.AppChange
	if err := json.Unmarshal(msg.Data(), &ch); err != nil {
		e.t.Fatalf("app change %s: %v", msg.Data(), err)
	}
	return msg.Subject(), msg.Headers().Get(wire.HeaderMsgID), ch
}

func (e *appEnv) publish(subject, msgID string, v any) {
	e.t.Helper()
	body, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderMsgID, msgID)
	if _, err := e.js.PublishMsg(e.ctx, msg); err != nil {
		e.t.Fatal(err)
	}
}

func (e *appEnv) result(r wire.Result) {
	e.t.Helper()
	r.Entity, r.Action, r.At = "ticket", wire.AppUpsert, time.Now()
	e.publish(wire.ResultSubject("ticket", r.Outcome), wire.ResultMsgID("ticket", r.ExternalID, r.Version, r.Outcome), r)
}

func (e *appEnv) apply(action string, ch wire.AppChange) {
	e.t.Helper()
	m := wire.ApplyMessage{Entity: "ticket", Action: action, AppChange: ch}
	e.publish(m.Subject(), wire.ApplyMsgID(ch.Table, ch.SysID, ch.Version, action), m)
}

const testSysID = "1c741bd70b2322007518478d83673af3"

func TestApp_TicketLifecycleThroughTheBridgeStreams(t *testing.T) {
	e := startApp(t)

	// Created in the page: the change is published on app.ticket.upsert.
	loc := e.post("/tickets", url.Values{"title": {"Email down"}, "description": {"Outlook says offline"}, "urgency": {"1"}, "impact": {"2"}})
	id := strings.TrimPrefix(loc, "/tickets/")
	subject, msgID, ch := e.nextSent()
	if subject != "app.ticket.upsert" || ch.ExternalID != id || ch.Version != 1 || msgID != wire.AppMsgID("ticket", id, 1, wire.AppUpsert) {
		t.Fatalf("sent %s %s %+v, want app.ticket.upsert of %s version 1 with its message id", subject, msgID, ch, id)
	}
	if ch.Fields["title"] != "Email down" || ch.Fields["urgency"] != "1" || ch.Fields["impact"] != "2" || ch.Fields["status"] != "new" {
		t.Fatalf("sent fields %v, want the ticket", ch.Fields)
	}
	e.waitPage(loc+"/fragment", `data-sync="pending"`, "not yet")

	// The bridge created the incident: the number and link appear.
	mc := int64(0)
	url0 := "https://dev1.service-now.com/nav_to.do?uri=incident.do?sys_id=" + testSysID
	e.result(wire.Result{ExternalID: id, Version: 1, Outcome: wire.OutcomeCreated, Table: "incident", SysID: testSysID, Number: "INC0010006", SysModCount: &mc, URL: url0})
	e.waitPage(loc+"/fragment", `data-sync="synced"`, ">INC0010006</a>", `href="https://dev1.service-now.com/nav_to.do?uri=incident.do?sys_id=`+testSysID)
	e.waitPage("/fragments/tickets", "INC0010006", "Email down")

	// ServiceNow changes the incident: the page follows; an older version
	// arriving later changes nothing.
	e.apply(wire.ActionUpdate, wire.AppChange{ExternalID: id, SysID: testSysID, Table: "incident", Number: "INC0010006", Version: 3,
		Fields: wire.Fields{"title": "Email down for everyone", "status": "in_progress", "priority": "2", "urgency": "1", "impact": "2"}})
	e.waitPage(loc+"/fragment", "Email down for everyone", `data-status="in_progress"`, "2 - High", "sys_mod_count 3")
	e.apply(wire.ActionUpdate, wire.AppChange{ExternalID: id, SysID: testSysID, Table: "incident", Number: "INC0010006", Version: 2,
		Fields: wire.Fields{"title": "Email down (old)"}})
	// A newer message after the stale one proves it was handled.
	e.apply(wire.ActionUpdate, wire.AppChange{ExternalID: id, SysID: testSysID, Table: "incident", Number: "INC0010006", Version: 4,
		Fields: wire.Fields{"description": "Exchange restarted"}})
	body := e.waitPage(loc+"/fragment", "Exchange restarted")
	if strings.Contains(body, "Email down (old)") {
		t.Fatalf("version 2 after version 3 was applied: the version guard let an older version through:\n%s", body)
	}

	// A comment and a resolve from the page each send a version.
	e.post(loc+"/comments", url.Values{"comment": {"Restarted the connector"}})
	_, _, ch = e.nextSent()
	if ch.Version != 2 || ch.Fields["comment"] != "Restarted the connector" || ch.Fields["title"] != "Email down for everyone" {
		t.Fatalf("comment sent %+v, want version 2 with the comment and the ticket as ServiceNow left it", ch)
	}
	e.post(loc+"/resolve", url.Values{"note": {"Works again"}})
	_, _, ch = e.nextSent()
	if ch.Version != 3 || ch.Fields["status"] != "resolved" || ch.Fields["comment"] != "Works again" {
		t.Fatalf("resolve sent %+v, want version 3 with status resolved and the note", ch)
	}
	e.waitPage(loc+"/fragment", `data-sync="pending"`, `data-status="resolved"`)

	// ServiceNow refuses it: the page shows why and what to do.
	e.result(wire.Result{ExternalID: id, Version: 2, Outcome: wire.OutcomeUpdated, Table: "incident", SysID: testSysID, Number: "INC0010006"})
	e.result(wire.Result{ExternalID: id, Version: 3, Outcome: wire.OutcomeRejected, Table: "incident", SysID: testSysID, Number: "INC0010006",
		Error: &wire.ResultError{Status: 403, Message: "Operation Failed", Detail: "Data Policy Exception: The following fields are mandatory: Resolution code",
			Hint: "Activate a close code choice on the instance", DeadLettered: true}})
	e.waitPage(loc+"/fragment", `data-sync="rejected"`, "Operation Failed: Data Policy Exception: The following fields are mandatory: Resolution code",
		"Activate a close code choice on the instance")
	e.waitPage("/fragments/tickets", `data-sync="rejected"`)
}

func TestApp_RecordCreatedInServiceNowIsImportedAndLinked(t *testing.T) {
	e := startApp(t)
	e.apply(wire.ActionInsert, wire.AppChange{SysID: testSysID, Table: "incident", Number: "INC0010042", Version: 0,
		Fields: wire.Fields{"title": "Phoned in: VPN drops", "status": "new", "urgency": "2", "impact": "2", "priority": "3"}})
	body := e.waitPage("/fragments/tickets", "INC0010042", "Phoned in: VPN drops", "3 - Moderate")
	_, _, ch := e.nextSent()
	if ch.SysID != testSysID || ch.ExternalID == "" || len(ch.Fields) != 0 || !strings.Contains(body, ch.ExternalID) {
		t.Fatalf("link change %+v, want the new ticket's external id with the record's sys_id and no fields", ch)
	}
	// The bridge delivers the message again (a lost ack): still one ticket.
	e.apply(wire.ActionUpdate, wire.AppChange{ExternalID: ch.ExternalID, SysID: testSysID, Table: "incident", Number: "INC0010042", Version: 1,
		Fields: wire.Fields{"title": "Phoned in: VPN drops hourly"}})
	body = e.waitPage("/fragments/tickets", "VPN drops hourly")
	if n := strings.Count(body, "<tr data-ticket="); n != 1 {
		t.Fatalf("%d tickets after the import and an update, want 1:\n%s", n, body)
	}
}

func TestApp_PageRefusesBadFormsAndCrossSitePosts(t *testing.T) {
	e := startApp(t)
	resp, err := e.http.PostForm(e.page.URL+"/tickets", url.Values{"title": {""}, "urgency": {"9"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "a ticket needs a title") {
		t.Fatalf("an empty title: %d, want 422 naming the title; body:\n%s", resp.StatusCode, body)
	}
	req, _ := http.NewRequest(http.MethodPost, e.page.URL+"/tickets", strings.NewReader("title=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err = e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a cross-site form post: %d, want 403", resp.StatusCode)
	}
	if code, _ := e.get("/tickets/HD-0-404"); code != http.StatusNotFound {
		t.Fatalf("an unknown ticket: %d, want 404", code)
	}
	list, _ := e.app.Store().Tickets(e.ctx)
	if len(list) != 0 {
		t.Fatalf("refused forms stored %d tickets: %+v", len(list), list)
	}
}
