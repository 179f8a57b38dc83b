package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/console/tokens"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	aliceToken = "alice:alice-0123456789abcdef"
	bobToken   = "bob:bob-fedcba9876543210fe"
)

// syncBuffer collects log output written from handler goroutines.
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

// fixture is a console over a real nats-server with the bridge's streams.
type fixture struct {
	t    *testing.T
	js   jetstream.JetStream
	c    *Console
	srv  *httptest.Server
	logs *syncBuffer
	reg  *prometheus.Registry
}

func newFixture(t *testing.T, tokenList string, mods ...func(*Config)) *fixture {
	t.Helper()
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	if err := broker.EnsureAll(t.Context(), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	set, err := tokens.Parse(tokenList)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, js: js, logs: &syncBuffer{}, reg: prometheus.NewRegistry()}
	cfg := Config{JS: js, Tables: []string{"incident"}, Tokens: set, Replica: "host-1",
		Registerer: f.reg, Logger: slog.New(slog.NewJSONHandler(f.logs, nil))}
	for _, m := range mods {
		m(&cfg)
	}
	if f.c, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(f.c)
	t.Cleanup(f.srv.Close)
	return f
}

// client is a browser-like client: a cookie jar, redirects not followed.
func (f *fixture) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	f.t.Cleanup(c.CloseIdleConnections)
	return c
}

type answer struct {
	code   int
	body   string
	header http.Header
}

func (f *fixture) do(c *http.Client, method, path string, form url.Values, header map[string]string) answer {
	f.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, f.srv.URL+path, body)
	if err != nil {
		f.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header}
}

// login logs c in with the token's value and fails unless it works.
func (f *fixture) login(c *http.Client, entry string) {
	f.t.Helper()
	_, value, _ := strings.Cut(entry, ":")
	a := f.do(c, "POST", "/login", url.Values{"token": {value}, "next": {"/dlq"}}, nil)
	if a.code != http.StatusSeeOther || a.header.Get("Location") != "/dlq" {
		f.t.Fatalf("login: %d %s, want 303 to /dlq", a.code, a.body)
	}
}

var hiddenRe = regexp.MustCompile(`<input type="hidden" name="([a-z]+)" value="([^"]*)">`)

// hidden reads the first value of each hidden form field of a page.
func hidden(page string) map[string]string {
	out := map[string]string{}
	for _, m := range hiddenRe.FindAllStringSubmatch(page, -1) {
		if _, ok := out[m[1]]; !ok {
			out[m[1]] = html.UnescapeString(m[2])
		}
	}
	return out
}

// deadLetter stores an app change in APP_EVENTS and its dead letter as the
// writeback leaves it, with the reason and hint given.
func (f *fixture) deadLetter(id, reason, hint string) uint64 {
	f.t.Helper()
	ctx := context.Background()
	body := []byte(`{"external_id":"` + id + `","version":3,"fields":{"title":"Printer jams <b>again</b>"}}`)
	orig := nats.NewMsg(events.AppSubject("ticket", "upsert"))
	orig.Data = body
	orig.Header.Set(events.HeaderMsgID, events.AppMsgID("ticket", id, 3, "upsert"))
	ack, err := f.js.PublishMsg(ctx, orig)
	if err != nil {
		f.t.Fatal(err)
	}
	dl := nats.NewMsg(events.DLQSubject("writeback"))
	dl.Data = body
	dl.Header.Set(events.HeaderMsgID, "writeback:APP_EVENTS:"+strconv.FormatUint(ack.Sequence, 10))
	dl.Header.Set(events.HeaderDLQReason, reason)
	dl.Header.Set(events.HeaderDLQHint, hint)
	dl.Header.Set(events.HeaderDLQStatus, "403")
	dl.Header.Set(events.HeaderDLQSubject, orig.Subject)
	dl.Header.Set(events.HeaderDLQStream, events.StreamApp)
	dl.Header.Set(events.HeaderDLQSeq, strconv.FormatUint(ack.Sequence, 10))
	dack, err := f.js.PublishMsg(ctx, dl)
	if err != nil {
		f.t.Fatal(err)
	}
	return dack.Sequence
}

// present reports whether the dead letter is still in BRIDGE_DLQ.
func (f *fixture) present(seq uint64) bool {
	f.t.Helper()
	_, err := dlq.Get(context.Background(), f.js, seq)
	if err != nil && !errors.Is(err, dlq.ErrNotFound) {
		f.t.Fatal(err)
	}
	return err == nil
}

func TestConsole_PagesNeedTheTokenAndNoCSRFCookieIsIssuedWithoutIt(t *testing.T) {
	f := newFixture(t, aliceToken+","+bobToken)
	c := f.client()

	a := f.do(c, "GET", "/dlq", nil, nil)
	if a.code != http.StatusUnauthorized || !strings.Contains(a.body, `name="token"`) {
		t.Fatalf("GET /dlq without a token: %d, want 401 and the login form:\n%s", a.code, a.body)
	}
	if sc := a.header.Values("Set-Cookie"); len(sc) != 0 {
		t.Errorf("an unauthenticated request got cookies %v, want none (no CSRF token before the token check)", sc)
	}
	if a := f.do(c, "GET", "/", nil, map[string]string{"Authorization": "Bearer not-a-token-at-all-0000"}); a.code != http.StatusUnauthorized {
		t.Errorf("a wrong bearer token: %d, want 401", a.code)
	}
	if a := f.do(c, "POST", "/login", url.Values{"token": {"alice-0123456789abcdeX"}}, nil); a.code != http.StatusUnauthorized || !strings.Contains(a.body, "not one of") {
		t.Errorf("login with a wrong token: %d, want 401 saying so", a.code)
	}
	if !strings.Contains(f.logs.String(), "console: login failed") {
		t.Errorf("a failed login is not logged:\n%s", f.logs.String())
	}

	f.login(c, aliceToken)
	a = f.do(c, "GET", "/dlq", nil, nil)
	if a.code != http.StatusOK || !strings.Contains(a.body, `id="who">alice<`) {
		t.Fatalf("GET /dlq after login: %d, want 200 naming alice:\n%s", a.code, a.body)
	}
	if !strings.Contains(strings.Join(a.header.Values("Set-Cookie"), "\n"), csrfCookie+"=") {
		t.Errorf("the first page after login set no CSRF cookie: %v", a.header.Values("Set-Cookie"))
	}
	// A bearer header works for scripts.
	if a := f.do(f.client(), "GET", "/", nil, map[string]string{"Authorization": "Bearer bob-fedcba9876543210fe"}); a.code != http.StatusOK {
		t.Errorf("GET / with bob's bearer token: %d, want 200", a.code)
	}
	// A forged session cookie (alice's identity, a MAC of our own) is refused.
	forged := f.client()
	u, _ := url.Parse(f.srv.URL)
	forged.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: "YWxpY2U.9999999999.AAAA"}})
	if a := f.do(forged, "GET", "/", nil, nil); a.code != http.StatusUnauthorized {
		t.Errorf("a forged session cookie: %d, want 401", a.code)
	}
	// The login page never redirects elsewhere.
	if a := f.do(f.client(), "POST", "/login", url.Values{"token": {"alice-0123456789abcdef"}, "next": {"//evil.example/"}}, nil); a.header.Get("Location") != "/" {
		t.Errorf("login with next=//evil.example/ redirects to %q, want /", a.header.Get("Location"))
	}
}

func TestConsole_ActionsAreRefusedWithoutTheTokenOrAValidCSRFToken(t *testing.T) {
	f := newFixture(t, aliceToken+","+bobToken)
	seq := f.deadLetter("TCK-1", "PATCH incident: 403 ACL denies write", "grant write")
	retry := "/dlq/" + strconv.FormatUint(seq, 10) + "/retry"

	alice := f.client()
	f.login(alice, aliceToken)
	csrf := hidden(f.do(alice, "GET", "/dlq", nil, nil).body)["csrf"]
	if csrf == "" {
		t.Fatal("the dead letters page has no CSRF field")
	}
	bob := f.client()
	f.login(bob, bobToken)
	bobCSRF := hidden(f.do(bob, "GET", "/dlq", nil, nil).body)["csrf"]
	const bobBearer = "Bearer bob-fedcba9876543210fe"

	refused := []struct {
		name   string
		client *http.Client
		form   url.Values
		header map[string]string
		code   int
	}{
		{"no token", f.client(), url.Values{"csrf": {csrf}}, nil, http.StatusUnauthorized},
		{"a token, no CSRF token", alice, url.Values{}, nil, http.StatusForbidden},
		{"a bearer token, a CSRF field but no CSRF cookie", f.client(), url.Values{"csrf": {csrf}}, map[string]string{"Authorization": bobBearer}, http.StatusForbidden},
		{"a wrong CSRF token", alice, url.Values{"csrf": {csrf[:len(csrf)-2] + "xx"}}, nil, http.StatusForbidden},
		{"bob's CSRF token in alice's session", alice, url.Values{"csrf": {bobCSRF}}, nil, http.StatusForbidden},
		{"a cross-site request with a valid CSRF token", alice, url.Values{"csrf": {csrf}}, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
	}
	for _, r := range refused {
		if a := f.do(r.client, "POST", retry, r.form, r.header); a.code != r.code {
			t.Errorf("%s: %d %s, want %d", r.name, a.code, strings.TrimSpace(a.body), r.code)
		}
		if !f.present(seq) {
			t.Fatalf("%s: the dead letter was retried", r.name)
		}
	}
	if n := strings.Count(f.logs.String(), "console: action refused"); n != len(refused) {
		t.Errorf("%d refusals logged, want %d:\n%s", n, len(refused), f.logs.String())
	}

	a := f.do(alice, "POST", retry, url.Values{"csrf": {csrf}}, map[string]string{"Sec-Fetch-Site": "same-origin"})
	if a.code != http.StatusSeeOther || a.header.Get("Location") != "/dlq" {
		t.Fatalf("retry with the token and the CSRF token: %d %s, want 303 to /dlq", a.code, a.body)
	}
	if f.present(seq) {
		t.Fatal("the retried dead letter is still in BRIDGE_DLQ")
	}
	page := f.do(alice, "GET", "/dlq", nil, nil).body
	if !strings.Contains(page, "Dead letter "+strconv.FormatUint(seq, 10)+" retried") || strings.Contains(page, `data-seq="`+strconv.FormatUint(seq, 10)+`"`) {
		t.Errorf("after the retry the list should say so and not list it:\n%s", page)
	}
	var logged map[string]any
	for line := range strings.SplitSeq(f.logs.String(), "\n") {
		if strings.Contains(line, `"msg":"console action"`) {
			_ = json.Unmarshal([]byte(line), &logged)
		}
	}
	if logged["who"] != "alice" || logged["action"] != "dlq.retry" || logged["seq"] != float64(seq) || logged["client"] == "" || logged["time"] == "" {
		t.Errorf("the action's log line = %v, want who alice, action dlq.retry, seq %d, the client and the time", logged, seq)
	}
}

func TestConsole_WithoutTokensActionsStillNeedCSRFAndLogTheClientAddress(t *testing.T) {
	f := newFixture(t, "")
	seq := f.deadLetter("TCK-2", "403", "")
	c := f.client()
	if a := f.do(c, "GET", "/", nil, nil); a.code != http.StatusOK {
		t.Fatalf("GET / without tokens configured: %d, want 200", a.code)
	}
	retry := "/dlq/" + strconv.FormatUint(seq, 10) + "/retry"
	if a := f.do(c, "POST", retry, url.Values{}, nil); a.code != http.StatusForbidden || !f.present(seq) {
		t.Fatalf("a retry without a CSRF token: %d, want 403 and the dead letter kept", a.code)
	}
	csrf := hidden(f.do(c, "GET", "/dlq", nil, nil).body)["csrf"]
	if a := f.do(c, "POST", retry, url.Values{"csrf": {csrf}}, nil); a.code != http.StatusSeeOther || f.present(seq) {
		t.Fatalf("a retry with the CSRF token: %d, want 303 and the dead letter gone", a.code)
	}
	if !regexp.MustCompile(`"msg":"console action","who":"127\.0\.0\.1:\d+","client":"127\.0\.0\.1:\d+","action":"dlq.retry"`).MatchString(f.logs.String()) {
		t.Errorf("the action's log line should name the client address as who:\n%s", f.logs.String())
	}
}

func TestConsole_PurgeNeedsTheConfirmationStep(t *testing.T) {
	f := newFixture(t, aliceToken+","+bobToken)
	first := f.deadLetter("TCK-1", "403", "")
	second := f.deadLetter("TCK-2", "403", "")
	c := f.client()
	f.login(c, aliceToken)
	csrf := hidden(f.do(c, "GET", "/dlq", nil, nil).body)["csrf"]

	// The list's purge is a link to the confirmation page, not an action.
	for _, form := range []url.Values{
		{"csrf": {csrf}},
		{"csrf": {csrf}, "last": {strconv.FormatUint(second, 10)}},
		{"csrf": {csrf}, "last": {strconv.FormatUint(second, 10)}, "confirm": {"made-up"}},
	} {
		a := f.do(c, "POST", "/dlq/purge", form, nil)
		if a.code != http.StatusBadRequest || !strings.Contains(a.body, "confirmation step") {
			t.Errorf("purge with %v: %d %s, want 400 asking for the confirmation step", form, a.code, a.body)
		}
	}
	if !f.present(first) || !f.present(second) {
		t.Fatal("an unconfirmed purge removed dead letters")
	}

	confirmPage := f.do(c, "GET", "/dlq/purge", nil, nil)
	if !strings.Contains(confirmPage.body, "Delete <b>2</b> dead letters of all pipelines for good") {
		t.Fatalf("the confirmation page should say what goes:\n%s", confirmPage.body)
	}
	fields := hidden(confirmPage.body)
	later := f.deadLetter("TCK-3", "403", "") // arrives after the page was drawn
	// The confirmation is alice's: bob cannot replay it.
	bob := f.client()
	f.login(bob, bobToken)
	bobCSRF := hidden(f.do(bob, "GET", "/dlq", nil, nil).body)["csrf"]
	replayed := url.Values{"csrf": {bobCSRF}, "pipeline": {fields["pipeline"]}, "last": {fields["last"]}, "confirm": {fields["confirm"]}}
	if a := f.do(bob, "POST", "/dlq/purge", replayed, nil); a.code != http.StatusBadRequest || !f.present(first) {
		t.Fatalf("bob replaying alice's confirmation: %d, want 400 and nothing purged", a.code)
	}
	form := url.Values{"csrf": {fields["csrf"]}, "pipeline": {fields["pipeline"]}, "last": {fields["last"]}, "confirm": {fields["confirm"]}}
	a := f.do(c, "POST", "/dlq/purge", form, nil)
	if a.code != http.StatusSeeOther {
		t.Fatalf("the confirmed purge: %d %s, want 303", a.code, a.body)
	}
	if f.present(first) || f.present(second) || !f.present(later) {
		t.Fatalf("after the confirmed purge: first %v second %v later %v, want only the later one left", f.present(first), f.present(second), f.present(later))
	}
	if !strings.Contains(f.do(c, "GET", "/dlq", nil, nil).body, "2 dead letters purged") {
		t.Error("the list does not say what was purged")
	}
	if !strings.Contains(f.logs.String(), `"who":"alice"`) || !strings.Contains(f.logs.String(), `"action":"dlq.purge"`) || !strings.Contains(f.logs.String(), `"purged":2`) {
		t.Errorf("the purge is not logged with who and how many:\n%s", f.logs.String())
	}
}

func TestConsole_DeadLetterTextIsRenderedEscaped(t *testing.T) {
	f := newFixture(t, "")
	const evil = `<script>alert("dlq")</script>`
	seq := f.deadLetter("TCK-<script>", "PATCH refused: "+evil, "hint "+evil)
	c := f.client()
	for _, path := range []string{"/dlq", "/dlq/" + strconv.FormatUint(seq, 10)} {
		a := f.do(c, "GET", path, nil, nil)
		if a.code != http.StatusOK {
			t.Fatalf("GET %s: %d", path, a.code)
		}
		if strings.Contains(a.body, "<script>alert") || strings.Contains(a.body, "<b>again</b>") {
			t.Errorf("GET %s renders the dead letter's markup as HTML:\n%s", path, a.body)
		}
		if !strings.Contains(a.body, "&lt;script&gt;alert(&#34;dlq&#34;)&lt;/script&gt;") {
			t.Errorf("GET %s does not show the reason as escaped text:\n%s", path, a.body)
		}
	}
}

func TestConsole_SecureHeadersAndNoCachingOfPages(t *testing.T) {
	f := newFixture(t, aliceToken)
	c := f.client()
	for _, path := range []string{"/", "/login", "/static/console.css"} {
		h := f.do(c, "GET", path, nil, nil).header
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q, want self-only scripts, no unsafe-inline, no framing", path, csp)
		}
		if h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: X-Frame-Options %q, X-Content-Type-Options %q", path, h.Get("X-Frame-Options"), h.Get("X-Content-Type-Options"))
		}
	}
	f.login(c, aliceToken)
	if cc := f.do(c, "GET", "/dlq", nil, nil).header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("a page with data: Cache-Control %q, want no-store", cc)
	}
	if a := f.do(f.client(), "GET", "/static/console.js", nil, nil); a.code != http.StatusOK || !strings.Contains(a.body, "data-refresh") {
		t.Errorf("the embedded script without a token: %d, want 200 (assets hold no data)", a.code)
	}
}

func TestConsole_TracePageSaysWhenTheTraceIsNotAvailable(t *testing.T) {
	f := newFixture(t, "")
	a := f.do(f.client(), "GET", "/trace?q=INC0010006", nil, nil)
	if a.code != http.StatusOK || !strings.Contains(a.body, `id="trace-unavailable"`) || !strings.Contains(a.body, `value="INC0010006"`) {
		t.Fatalf("GET /trace without a tracer: %d, want the search box and the not-available note:\n%s", a.code, a.body)
	}
}

func TestConsole_OverviewShowsEveryReplicaAndTheSamplerExportsLagAndDeadLetters(t *testing.T) {
	f := newFixture(t, "", func(c *Config) { c.SampleEvery = 100 * time.Millisecond })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.c.Run(ctx, nil, time.Second) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	f.deadLetter("TCK-1", "403", "")
	st, err := f.js.Stream(ctx, events.StreamApp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "writeback", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	conflicts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "conflicts_total"}, []string{"field"})
	reg.MustRegister(conflicts)
	conflicts.WithLabelValues("state").Add(3)
	for _, id := range []string{"host-1", "host-2"} {
		rp := &status.Reporter{JS: f.js, ID: id, Gatherer: reg, Snapshot: func() status.Process {
			return status.Process{Breaker: "closed", TokenExpiry: time.Now().Add(20 * time.Minute),
				Extra: map[string]string{"sync_owner": strconv.FormatBool(id == "host-2")}}
		}}
		if err := rp.Publish(ctx); err != nil {
			t.Fatal(err)
		}
	}

	deadline := time.Now().Add(10 * time.Second)
	var lag, dead float64
	for {
		lag, dead = -1, -1
		families, err := f.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, fam := range families {
			for _, m := range fam.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				switch {
				case fam.GetName() == "bridge_consumer_pending" && labels["consumer"] == "writeback":
					lag = m.GetGauge().GetValue()
				case fam.GetName() == "bridge_dlq_messages" && labels["pipeline"] == "writeback":
					dead = m.GetGauge().GetValue()
				}
			}
		}
		if lag == 1 && dead == 1 && len(f.c.sampler.samples()) >= 2 { // two samples draw a sparkline
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sampled gauges: writeback consumer pending %v, writeback dead letters %v; want 1 and 1", lag, dead)
		}
		time.Sleep(50 * time.Millisecond)
	}

	a := f.do(f.client(), "GET", "/", nil, nil)
	for _, want := range []string{
		`id="sync-owner">host-2<`, `data-process="host-1"`, `host-1 <span class="tag">this</span>`, `<span class="tag ok">sync owner</span>`,
		`id="conflicts">6<`, `data-consumer="writeback"`, `id="dlq-total"><a href="/dlq">1<`, `<polyline points=`,
	} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the overview lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("overview:\n%s", a.body)
	}
	frag := f.do(f.client(), "GET", "/overview/fragment", nil, nil)
	if frag.code != http.StatusOK || strings.Contains(frag.body, "<html") || !strings.Contains(frag.body, `data-consumer="writeback"`) {
		t.Errorf("the overview fragment: %d, want the body alone:\n%s", frag.code, frag.body)
	}
}

func TestConsole_RetryAllRetriesEveryDeadLetterOfThePipeline(t *testing.T) {
	f := newFixture(t, aliceToken)
	a, b := f.deadLetter("TCK-1", "403", ""), f.deadLetter("TCK-2", "403", "")
	c := f.client()
	f.login(c, aliceToken)
	csrf := hidden(f.do(c, "GET", "/dlq?pipeline=writeback", nil, nil).body)["csrf"]
	if r := f.do(c, "POST", "/dlq/retry", url.Values{"pipeline": {"writeback"}}, nil); r.code != http.StatusForbidden {
		t.Fatalf("retry all without the CSRF token: %d, want 403", r.code)
	}
	r := f.do(c, "POST", "/dlq/retry", url.Values{"csrf": {csrf}, "pipeline": {"writeback"}}, nil)
	if r.code != http.StatusSeeOther || r.header.Get("Location") != "/dlq?pipeline=writeback" {
		t.Fatalf("retry all: %d to %q, want 303 back to the pipeline's list", r.code, r.header.Get("Location"))
	}
	if f.present(a) || f.present(b) {
		t.Fatal("retry all left dead letters behind")
	}
	if page := f.do(c, "GET", "/dlq", nil, nil).body; !strings.Contains(page, "2 dead letters retried.") || !strings.Contains(page, `id="no-dead-letters"`) {
		t.Errorf("after retry all the list should say 2 retried and be empty:\n%s", page)
	}
}
