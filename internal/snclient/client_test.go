package snclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func newTestClient(t testing.TB, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func incidentRows(n int) []map[string]string {
	return seedRows(n, 50, time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC))
}

// assertNoSecret fails when an error or log line reveals a credential.
func assertNoSecret(t *testing.T, f *fakeSN, texts ...string) {
	t.Helper()
	for _, s := range texts {
		if strings.Contains(s, f.sec) || strings.Contains(s, "tok-") {
			t.Errorf("text reveals a secret or token: %s", s)
		}
	}
}

func TestToken_ConcurrentCallersShareOneRefresh(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(3)
	f.ttl.Store(4)
	cfg := f.config()
	cfg.TokenMinValidity = 1500 * time.Millisecond
	cfg.DisableBackgroundRefresh = true
	c := newTestClient(t, cfg)
	ctx := context.Background()
	if _, err := c.List(ctx, "incident", ListOptions{Limit: 1}); err != nil {
		t.Fatal(err)
	}
	if n := f.tokenReq.Load(); n != 1 {
		t.Fatalf("token requests after the first call = %d, want 1", n)
	}
	// Let the token fall under its minimum validity (4s lifetime: 1.5s
	// floor), without letting it expire.
	time.Sleep(time.Until(c.TokenExpiry().Add(-1200 * time.Millisecond)))
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := make(chan struct{})
	for range 50 {
		wg.Go(func() {
			<-start
			if _, err := c.List(ctx, "incident", ListOptions{Limit: 1}); err != nil {
				failed.Add(1)
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := f.tokenReq.Load(); n != 2 {
		t.Errorf("token requests after 50 concurrent callers found the token near expiry = %d, want exactly 2 (one refresh)", n)
	}
	if failed.Load() > 0 {
		t.Errorf("%d of 50 calls failed", failed.Load())
	}
}

func TestToken_BackgroundRefresherRenewsBeforeExpiry(t *testing.T) {
	f := newFakeSN(t)
	f.ttl.Store(3)
	cfg := f.config()
	cfg.TokenMinValidity = time.Second
	cfg.RefreshLeadMin, cfg.RefreshLeadMax = 1200*time.Millisecond, 1400*time.Millisecond
	c := newTestClient(t, cfg)
	if err := c.CheckAuth(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := c.TokenStatus()
	if first.Expiry.IsZero() || !first.RefreshAt.Before(first.Expiry.Add(-1100*time.Millisecond)) {
		t.Fatalf("status %+v: want refresh planned 1.2–1.4s before expiry", first)
	}
	deadline := time.Now().Add(4 * time.Second)
	for f.tokenReq.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if f.tokenReq.Load() < 2 {
		t.Fatal("the background refresher did not renew the token")
	}
	renewedAt := time.Now()
	if !renewedAt.Before(first.Expiry) {
		t.Errorf("renewed at %v, not before expiry %v", renewedAt, first.Expiry)
	}
	if got := c.TokenExpiry(); !got.After(first.Expiry) {
		t.Errorf("expiry after renewal = %v, want later than %v", got, first.Expiry)
	}
}

func TestToken_FailedRefreshKeepsLastGoodTokenAndRecovers(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(3)
	f.ttl.Store(6)
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	cfg := f.config()
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.TokenMinValidity = 2 * time.Second
	cfg.RefreshLeadMin, cfg.RefreshLeadMax = 3*time.Second, 3*time.Second
	cfg.RetryInitial, cfg.RetryMax = 100*time.Millisecond, 300*time.Millisecond
	c := newTestClient(t, cfg)
	ctx := context.Background()
	if err := c.CheckAuth(ctx); err != nil {
		t.Fatal(err)
	}
	exp := c.TokenExpiry()
	f.set(func(f *fakeSN) { f.rejectTokens = true })
	// Under the 2s floor, the refresh fails: the call still succeeds with
	// the old, still valid token.
	time.Sleep(time.Until(exp.Add(-1700 * time.Millisecond)))
	if _, err := c.List(ctx, "incident", ListOptions{Limit: 1}); err != nil {
		t.Fatalf("call with a valid last good token failed: %v", err)
	}
	st := c.TokenStatus()
	var te *TokenError
	if !errors.As(st.LastError, &te) || te.Hint != HintTokenRejected {
		t.Errorf("TokenStatus().LastError = %v, want a *TokenError with the credentials hint", st.LastError)
	}
	if got := testutil.ToFloat64(c.m.refreshes.WithLabelValues("failed")); got < 1 {
		t.Errorf("failed refresh metric = %v, want ≥ 1", got)
	}
	f.set(func(f *fakeSN) { f.rejectTokens = false })
	deadline := time.Now().Add(3 * time.Second)
	for c.TokenExpiry().Equal(exp) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.TokenExpiry().Equal(exp) || c.TokenStatus().LastError != nil {
		t.Errorf("refresher did not recover: %+v", c.TokenStatus())
	}
	assertNoSecret(t, f, logs.String(), fmt.Sprint(st.LastError))
}

func TestToken_ExchangeRejectedHint(t *testing.T) {
	f := newFakeSN(t)
	cfg := f.config()
	cfg.ClientSecret = "wrong-secret-value"
	c := newTestClient(t, cfg)
	_, err := c.List(context.Background(), "incident", ListOptions{})
	if !errors.Is(err, ErrTokenExchange) || !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want ErrTokenExchange and ErrUnauthorized", err)
	}
	if Hint(err) != HintTokenRejected || !strings.Contains(err.Error(), "glide.oauth.inbound.client.credential.grant_type.enabled") {
		t.Errorf("hint = %q (error %v)", Hint(err), err)
	}
	if strings.Contains(err.Error(), "wrong-secret-value") {
		t.Errorf("error reveals the secret: %v", err)
	}
	if n := f.tokenReq.Load(); n != 1 {
		t.Errorf("a rejected exchange was retried %d times; it cannot succeed", n)
	}
}

func TestAPI_401WithFreshTokenHintsApplicationUser(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(1)
	f.appUserUnset = true
	c := newTestClient(t, f.config())
	_, err := c.Get(context.Background(), "incident", "9d385017c611228701d22104cc95c371")
	if !errors.Is(err, ErrUnauthorized) || Hint(err) != HintAppUser {
		t.Fatalf("err = %v, hint %q; want ErrUnauthorized with %q", err, Hint(err), HintAppUser)
	}
	if n := f.tokenReq.Load(); n != 2 {
		t.Errorf("token requests = %d, want 2 (first, then one fresh token to rule out revocation)", n)
	}
	assertNoSecret(t, f, err.Error())
}

func TestAPI_RevokedTokenIsReplacedOnce(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(2)
	c := newTestClient(t, f.config())
	ctx := context.Background()
	if _, err := c.List(ctx, "incident", ListOptions{}); err != nil {
		t.Fatal(err)
	}
	f.revokeAll()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := c.List(ctx, "incident", ListOptions{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := f.tokenReq.Load(); n != 2 {
		t.Errorf("token requests = %d, want 2: 20 callers hitting a revoked token share one exchange", n)
	}
}

func TestAPI_ErrorHints(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		msg, det string
		do       func(c *Client) error
		sentinel error
		hint     string
		contains []string
	}{
		{"write ACL", 403, "Operation Failed", "ACL Exception Update Failed due to security constraints",
			func(c *Client) error {
				_, err := c.Update(context.Background(), "incident", "9d385017c611228701d22104cc95c371", map[string]string{"state": "2"})
				return err
			}, ErrForbidden, HintRoles, []string{"snc_platform_rest_api_access", "itil"}},
		{"query rights", 403, "Insufficient rights to query records", "Field(s) present in the query do not have permission to be read",
			func(c *Client) error { _, err := c.List(context.Background(), "incident", ListOptions{}); return err },
			ErrForbidden, HintQueryRights, []string{"itil"}},
		{"data policy", 403, "Operation Failed", "Data Policy Exception: The following fields are mandatory: Resolution code, Resolution notes",
			func(c *Client) error {
				_, err := c.Update(context.Background(), "incident", "9d385017c611228701d22104cc95c371", map[string]string{"state": "6"})
				return err
			}, ErrForbidden, HintDataPolicy, []string{"close_code"}},
		{"record gone", 404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval",
			func(c *Client) error {
				_, err := c.Get(context.Background(), "incident", "9d385017c611228701d22104cc95c371")
				return err
			}, ErrNotFound, HintNotFound, nil},
		{"unknown table", 400, "Invalid table incidnt", "",
			func(c *Client) error { _, err := c.List(context.Background(), "incidnt", ListOptions{}); return err },
			ErrBadRequest, "", []string{"BRIDGE_TABLES"}},
		{"bad json", 400, "Exception while reading request", "The payload is not valid JSON.",
			func(c *Client) error {
				_, err := c.Create(context.Background(), "incident", map[string]string{"short_description": "x"})
				return err
			}, ErrBadRequest, "", []string{"JSON"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSN(t)
			f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
				snError(w, tt.status, tt.msg, tt.det)
				return true
			}
			c := newTestClient(t, f.config())
			err := tt.do(c)
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("err = %v, want %v", err, tt.sentinel)
			}
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != tt.status || ae.Message != tt.msg || ae.Detail != tt.det {
				t.Fatalf("APIError = %+v", ae)
			}
			if tt.hint != "" && ae.Hint != tt.hint {
				t.Errorf("hint = %q, want %q", ae.Hint, tt.hint)
			}
			for _, s := range tt.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if n := f.apiReq.Load(); n != 1 {
				t.Errorf("API requests = %d: a 4xx must not be retried", n)
			}
			if c.BreakerState() != "closed" {
				t.Errorf("breaker %s after a 4xx", c.BreakerState())
			}
		})
	}
}

func TestList_EmptyResultIsAnEmptyList(t *testing.T) {
	for _, v := range []TableAPIVersion{TableAPIv1, TableAPIv2} {
		t.Run(string(v), func(t *testing.T) {
			f := newFakeSN(t)
			f.tables["incident"] = incidentRows(5)
			cfg := f.config()
			cfg.TableAPI = v
			c := newTestClient(t, cfg)
			p, err := c.List(context.Background(), "incident", ListOptions{Query: And(Field("number").EQ("INC9999999"))})
			if err != nil {
				t.Fatalf("empty result: %v (v1 answers 404 No Record found; that is an empty list)", err)
			}
			if len(p.Records) != 0 || p.HasNext || len(p.Warnings) != 0 {
				t.Errorf("page = %+v, want empty, last, no warnings", p)
			}
			p, err = c.List(context.Background(), "incident", ListOptions{Limit: 2})
			if err != nil || len(p.Records) != 2 || p.Total != 5 || !p.HasNext || p.NextOffset != 2 {
				t.Errorf("first page = %+v, %v; want 2 of 5 with next at 2", p, err)
			}
		})
	}
}

func TestList_ACLWarnings(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(5)
	f.hidden = func(map[string]string) bool { return true }
	reg := prometheus.NewRegistry()
	cfg := f.config()
	cfg.Registerer = reg
	c := newTestClient(t, cfg)
	p, err := c.List(context.Background(), "incident", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 1 || p.Warnings[0].Kind != ACLRows || p.Warnings[0].Total != 5 || !errors.Is(p.Warnings[0], ErrACLHidden) {
		t.Fatalf("warnings = %v, want one rows warning (0 of 5)", p.Warnings)
	}
	if !strings.Contains(p.Warnings[0].Error(), "ACL may be hiding rows/fields") {
		t.Errorf("warning %q lacks the hint", p.Warnings[0])
	}
	f.set(func(f *fakeSN) { f.hidden = nil; f.hideFields = []string{"short_description"} })
	p, err = c.List(context.Background(), "incident", ListOptions{Fields: []string{"number", "short_description"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 1 || p.Warnings[0].Kind != ACLFields || p.Warnings[0].Fields[0] != "short_description" {
		t.Fatalf("warnings = %v, want a fields warning naming short_description", p.Warnings)
	}
	if got := testutil.ToFloat64(c.m.aclWarnings.WithLabelValues("incident", ACLRows)) + testutil.ToFloat64(c.m.aclWarnings.WithLabelValues("incident", ACLFields)); got != 2 {
		t.Errorf("ACL warning metric = %v, want 2", got)
	}
}

func TestRateLimit_429StormAllCallsSucceedAfterRetryAfter(t *testing.T) {
	for _, header := range []string{"Retry-After", "X-RateLimit-Reset"} {
		t.Run(header, func(t *testing.T) {
			f := newFakeSN(t)
			f.tables["incident"] = incidentRows(3)
			// A window of 5 requests per second; over it, 429 with the
			// wait until the window's end.
			var mu sync.Mutex
			window, used := time.Now().Truncate(time.Second), 0
			last429 := map[string]time.Time{}
			var early atomic.Int64
			f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
				mu.Lock()
				defer mu.Unlock()
				now := time.Now()
				key := r.URL.Query().Get("sysparm_query")
				if until, ok := last429[key]; ok && now.Before(until.Add(-20*time.Millisecond)) {
					early.Add(1)
				}
				if w0 := now.Truncate(time.Second); !w0.Equal(window) {
					window, used = w0, 0
				}
				used++
				if used <= 5 {
					w.Header().Set("X-RateLimit-Limit", "5")
					return false
				}
				reset := window.Add(time.Second)
				w.Header().Set("X-RateLimit-Limit", "5")
				w.Header().Set("X-RateLimit-Rule", "d1c1e4a2c3e11110a4c0f6b0c9a2b3c4")
				if header == "Retry-After" {
					w.Header().Set("Retry-After", "1")
					last429[key] = now.Add(time.Second)
				} else {
					w.Header().Set("X-RateLimit-Reset", fmt.Sprint(reset.Unix()+1))
					last429[key] = reset.Add(time.Second)
				}
				snError(w, 429, "Too Many Requests", "Rate limit exceeded")
				return true
			}
			reg := prometheus.NewRegistry()
			cfg := f.config()
			cfg.Registerer = reg
			cfg.RetryMaxElapsed = 30 * time.Second
			c := newTestClient(t, cfg)
			var wg sync.WaitGroup
			for i := range 15 {
				wg.Go(func() {
					_, err := c.List(context.Background(), "incident", ListOptions{Query: And(Field("number").EQ(fmt.Sprintf("INC%07d", 10001+i%3)), Field("short_description").NEQ(i))})
					if err != nil {
						t.Errorf("call %d: %v", i, err)
					}
				})
			}
			wg.Wait()
			if n := early.Load(); n > 0 {
				t.Errorf("%d retries came before the server's Retry-After/X-RateLimit-Reset", n)
			}
			if got := testutil.ToFloat64(c.m.rateLimited.WithLabelValues("incident")); got < 1 {
				t.Errorf("429 metric = %v; the storm did not happen", got)
			}
			if c.BreakerState() != "closed" {
				t.Errorf("a 429 storm opened the breaker")
			}
		})
	}
}

func TestRateLimit_GivesUpWhenTheWaitOutlastsTheBudget(t *testing.T) {
	f := newFakeSN(t)
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "3600")
		snError(w, 429, "Too Many Requests", "")
		return true
	}
	c := newTestClient(t, f.config())
	start := time.Now()
	_, err := c.List(context.Background(), "incident", ListOptions{})
	if !errors.Is(err, ErrRateLimited) || time.Since(start) > 2*time.Second {
		t.Fatalf("err = %v after %v; want ErrRateLimited at once", err, time.Since(start))
	}
	var ae *APIError
	if errors.As(err, &ae); ae == nil || ae.RetryAfter != time.Hour || ae.Hint != HintRateLimited {
		t.Errorf("APIError = %+v", ae)
	}
}

func TestRateLimit_ClientSideLimiter(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(1)
	cfg := f.config()
	cfg.RateLimit, cfg.RateBurst = 20, 1
	c := newTestClient(t, cfg)
	start := time.Now()
	for range 6 {
		if _, err := c.List(context.Background(), "incident", ListOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el < 230*time.Millisecond {
		t.Errorf("6 calls at 20/s took %v, want ≥ 250ms", el)
	}
	c.SetRateLimit(0, 0)
	start = time.Now()
	for range 6 {
		_, _ = c.List(context.Background(), "incident", ListOptions{})
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("unlimited calls took %v", el)
	}
}

func TestRetry_5xxRetriesReadsNotCreates(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(2)
	var fails atomic.Int64
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if fails.Add(-1) >= 0 {
			snError(w, 503, "Transaction cancelled", "maximum execution time exceeded")
			return true
		}
		if r.Method == http.MethodPost {
			w.WriteHeader(201)
			_ = json.NewEncoder(w).Encode(map[string]any{"result": map[string]string{"sys_id": "9d385017c611228701d22104cc95c371"}})
			return true
		}
		return false
	}
	c := newTestClient(t, f.config())
	fails.Store(2)
	if _, err := c.List(context.Background(), "incident", ListOptions{}); err != nil {
		t.Fatalf("GET after two 503s: %v", err)
	}
	if n := f.apiReq.Load(); n != 3 {
		t.Errorf("GET attempts = %d, want 3", n)
	}
	fails.Store(1)
	f.apiReq.Store(0)
	_, err := c.Create(context.Background(), "incident", map[string]string{"short_description": "x"})
	if !errors.Is(err, ErrServer) || Hint(err) != HintServer {
		t.Errorf("POST after a 503: err = %v, want ErrServer unretried", err)
	}
	if n := f.apiReq.Load(); n != 1 {
		t.Errorf("POST attempts = %d, want 1: the 503 may have come after the insert", n)
	}
	fails.Store(0)
	out, err := c.Create(context.Background(), "incident", map[string]string{"short_description": "x"})
	if err != nil || out["sys_id"] != "9d385017c611228701d22104cc95c371" {
		t.Errorf("POST = %v, %v", out, err)
	}
}

func TestRetry_DroppedConnection(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(2)
	var drops atomic.Int64
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if drops.Add(-1) >= 0 {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_ = conn.Close()
			}
			return true
		}
		return false
	}
	c := newTestClient(t, f.config())
	drops.Store(2)
	if _, err := c.List(context.Background(), "incident", ListOptions{}); err != nil {
		t.Fatalf("GET after dropped connections: %v", err)
	}
	drops.Store(1)
	f.apiReq.Store(0)
	if _, err := c.Create(context.Background(), "incident", map[string]string{"short_description": "x"}); err == nil {
		t.Error("POST whose connection dropped after sending succeeded; want the error (it may have been inserted)")
	}
	if n := f.apiReq.Load(); n != 1 {
		t.Errorf("POST attempts = %d, want 1", n)
	}
}

func TestRetry_BoundedByContext(t *testing.T) {
	f := newFakeSN(t)
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		snError(w, 500, "boom", "")
		return true
	}
	cfg := f.config()
	cfg.BreakerFailures = 1000
	cfg.RetryMaxElapsed = time.Minute
	c := newTestClient(t, cfg)
	// A token first, so that the deadline is all retries of the 500.
	if _, err := c.tok.get(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.List(ctx, "incident", ListOptions{})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrServer) {
		t.Errorf("err = %v, want the deadline and the last 500", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v past a 500ms deadline", el)
	}
	if n := f.apiReq.Load(); n < 2 {
		t.Errorf("%d attempts before the deadline, want retries", n)
	}
}

func TestBreaker_OpensOnFailuresHalfOpensAndCloses(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(2)
	var broken atomic.Bool
	broken.Store(true)
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.RawQuery, "INC404") {
			snError(w, 404, "No Record found", "")
			return true
		}
		if broken.Load() {
			snError(w, 502, "Bad Gateway", "")
			return true
		}
		return false
	}
	reg := prometheus.NewRegistry()
	cfg := f.config()
	cfg.Registerer = reg
	cfg.BreakerFailures = 3
	cfg.RetryMaxElapsed = 10 * time.Millisecond
	cfg.RetryInitial = time.Millisecond
	cfg.BreakerOpenFor = 300 * time.Millisecond
	c := newTestClient(t, cfg)
	ctx := context.Background()
	// 4xx answers never trip it.
	for range 10 {
		if _, err := c.List(ctx, "incident", ListOptions{Query: And(Field("number").EQ("INC404"))}); err != nil {
			t.Fatal(err)
		}
	}
	if c.BreakerState() != "closed" {
		t.Fatalf("breaker %s after 4xx answers", c.BreakerState())
	}
	var err error
	for i := 0; i < 10 && !errors.Is(err, ErrBreakerOpen); i++ {
		_, err = c.List(ctx, "incident", ListOptions{})
	}
	if !errors.Is(err, ErrBreakerOpen) || c.BreakerState() != "open" {
		t.Fatalf("err = %v, state %s; want the breaker open", err, c.BreakerState())
	}
	if got := testutil.ToFloat64(c.m.breaker); got != 2 {
		t.Errorf("breaker gauge = %v, want 2 (open)", got)
	}
	before := f.apiReq.Load()
	if _, err := c.List(ctx, "incident", ListOptions{}); !errors.Is(err, ErrBreakerOpen) {
		t.Errorf("err = %v while open", err)
	}
	if f.apiReq.Load() != before {
		t.Error("a request reached the instance while the breaker was open")
	}
	broken.Store(false)
	time.Sleep(350 * time.Millisecond)
	if c.BreakerState() != "half-open" {
		t.Errorf("state after the open period = %s, want half-open", c.BreakerState())
	}
	if _, err := c.List(ctx, "incident", ListOptions{}); err != nil {
		t.Fatalf("trial request: %v", err)
	}
	if c.BreakerState() != "closed" || testutil.ToFloat64(c.m.breaker) != 0 {
		t.Errorf("state after a good trial = %s", c.BreakerState())
	}
}

// TestBreaker_HalfOpenRefusalWaitsForTheTrialNotAnOpenPeriod: while the
// half-open breaker's trial request is in flight, another call is refused
// without sending and told to come back in a second -- the trial decides
// by then -- not after a whole open period (the writeback paused 30 s after
// a trial that succeeded, and handed each refused change back for 30 s).
func TestBreaker_HalfOpenRefusalWaitsForTheTrialNotAnOpenPeriod(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(2)
	var broken atomic.Bool
	broken.Store(true)
	trialIn, release := make(chan struct{}, 1), make(chan struct{})
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if broken.Load() {
			snError(w, 502, "Bad Gateway", "")
			return true
		}
		trialIn <- struct{}{}
		<-release // the trial is slow
		return false
	}
	cfg := f.config()
	cfg.BreakerFailures = 3
	cfg.RetryMaxElapsed = 10 * time.Millisecond
	cfg.RetryInitial = time.Millisecond
	cfg.BreakerOpenFor = 1500 * time.Millisecond
	c := newTestClient(t, cfg)
	ctx := context.Background()
	var err error
	for i := 0; i < 10 && !errors.Is(err, ErrBreakerOpen); i++ {
		_, err = c.List(ctx, "incident", ListOptions{})
	}
	var be *BreakerOpenError
	if !errors.As(err, &be) || be.OpenFor != cfg.BreakerOpenFor {
		t.Fatalf("err = %v; want a BreakerOpenError asking to wait the open period %s", err, cfg.BreakerOpenFor)
	}
	broken.Store(false)
	time.Sleep(cfg.BreakerOpenFor + 100*time.Millisecond)
	trial := make(chan error, 1)
	go func() {
		_, err := c.List(ctx, "incident", ListOptions{})
		trial <- err
	}()
	select {
	case <-trialIn:
	case <-time.After(5 * time.Second):
		t.Fatal("the half-open breaker let no trial request through")
	}
	before := f.apiReq.Load()
	_, err = c.List(ctx, "incident", ListOptions{})
	if !errors.As(err, &be) || be.OpenFor != time.Second {
		t.Errorf("a call during the trial: err %v; want a BreakerOpenError asking to wait 1s (the trial's outcome), not the %s open period", err, cfg.BreakerOpenFor)
	}
	if f.apiReq.Load() != before {
		t.Error("a second request reached the instance while the trial was in flight")
	}
	close(release)
	if err := <-trial; err != nil {
		t.Fatalf("trial request: %v", err)
	}
	if c.BreakerState() != "closed" {
		t.Errorf("state after a good trial = %s, want closed", c.BreakerState())
	}
}

func TestValidation_UnknownFieldsAreOurError(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(2)
	f.dictionary = map[string][]string{"incident": {"caller_id", "close_code"}, "task": {"number", "short_description", "state", "active", "correlation_id", "comments"}}
	cfg := f.config()
	cfg.SkipFieldValidation = false
	c := newTestClient(t, cfg)
	ctx := context.Background()
	_, err := c.List(ctx, "incident", ListOptions{Query: And(Field("stat").EQ(1)), Fields: []string{"number", "short_desc"}})
	var fe *FieldError
	if !errors.As(err, &fe) || !errors.Is(err, ErrInvalidQuery) || strings.Join(fe.Unknown, ",") != "stat,short_desc" {
		t.Fatalf("err = %v, want a FieldError naming stat and short_desc", err)
	}
	if !strings.Contains(err.Error(), "silently drops") {
		t.Errorf("error %q does not say why", err)
	}
	if n := f.apiReq.Load(); n != 2 {
		t.Errorf("API requests = %d, want 2 (one record and sys_dictionary; the bad query is not sent)", n)
	}
	if _, err := c.List(ctx, "incident", ListOptions{Query: And(Field("state").EQ(1), Field("caller_id.name").EQ("x")).OrderBy("sys_updated_on"), Fields: []string{"number"}}); err != nil {
		t.Errorf("valid query (inherited, dot-walked, system fields): %v", err)
	}
	if _, err := c.Update(ctx, "incident", "9d385017c611228701d22104cc95c371", map[string]string{"short_descripton": "x"}); !errors.Is(err, ErrInvalidQuery) {
		t.Errorf("write with a misspelt field: %v", err)
	}
	if n := f.dictRequests.Load(); n != 1 {
		t.Errorf("sys_dictionary requests = %d, want 1 (cached)", n)
	}
	// Configured known fields add to the learned ones.
	cfg.KnownFields = map[string][]string{"incident": {"u_legacy_code"}}
	c2 := newTestClient(t, cfg)
	if _, err := c2.List(ctx, "incident", ListOptions{Query: And(Field("u_legacy_code").EQ("x"), Field("caller_id").EQ("y"))}); err != nil {
		t.Errorf("a known field and a learned one refused: %v", err)
	}
	if _, err := c2.List(ctx, "incident", ListOptions{Query: And(Field("nmber").EQ(1))}); !errors.Is(err, ErrInvalidQuery) {
		t.Errorf("known-fields check: %v", err)
	}
}

func TestBadInputNeverSent(t *testing.T) {
	f := newFakeSN(t)
	c := newTestClient(t, f.config())
	ctx := context.Background()
	errs := []error{
		func() error { _, err := c.Get(ctx, "incident", "../../x"); return err }(),
		func() error { _, err := c.Get(ctx, "Incident;drop", "9d385017c611228701d22104cc95c371"); return err }(),
		func() error {
			_, err := c.List(ctx, "incident", ListOptions{Query: And(Field("a").In("x,y"))})
			return err
		}(),
		func() error { _, err := c.List(ctx, "incident", ListOptions{Fields: []string{"a,b"}}); return err }(),
		func() error { _, err := c.List(ctx, "incident", ListOptions{Display: "maybe"}); return err }(),
		c.Delete(ctx, "incident", ""),
		func() error { _, err := c.Create(ctx, "incident", map[string]string{"a^b": "x"}); return err }(),
	}
	for i, err := range errs {
		if !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("case %d: err = %v, want ErrInvalidQuery", i, err)
		}
	}
	if f.apiReq.Load()+f.tokenReq.Load() != 0 {
		t.Error("bad input reached the instance")
	}
}

func TestClose_StopsCalls(t *testing.T) {
	f := newFakeSN(t)
	c, err := New(f.config())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	_ = c.Close()
	if _, err := c.List(context.Background(), "incident", ListOptions{}); !errors.Is(err, ErrClosed) {
		t.Errorf("err = %v, want ErrClosed", err)
	}
}

// *Client satisfies the writeback's interface (internal/outbound.TableAPI,
// restated here to keep the import graph one-way) without an adapter.
var _ interface {
	Get(ctx context.Context, table, sysID string) (events.Fields, error)
	Create(ctx context.Context, table string, fields map[string]string) (events.Fields, error)
	Update(ctx context.Context, table, sysID string, fields map[string]string) (events.Fields, error)
	Delete(ctx context.Context, table, sysID string) error
	FindByCorrelation(ctx context.Context, table, field, id string) (string, error)
} = (*Client)(nil)

// The deadline ending while a retry is in flight still reports the failure
// that kept the call retrying, not only the deadline.
func TestRetry_DeadlineMidAttemptKeepsTheLastFailure(t *testing.T) {
	f := newFakeSN(t)
	var n atomic.Int32
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if n.Add(1) == 1 {
			snError(w, 503, "maintenance", "")
			return true
		}
		<-r.Context().Done() // the retry hangs until the caller gives up
		return true
	}
	cfg := f.config()
	cfg.BreakerFailures = 1000
	cfg.RetryMaxElapsed = time.Minute
	c := newTestClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := c.Get(ctx, "incident", strings.Repeat("a", 32))
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrServer) || !strings.Contains(err.Error(), "maintenance") {
		t.Errorf("err = %v, want the deadline and the 503 before it", err)
	}
	if got := n.Load(); got != 2 {
		t.Errorf("%d attempts, want 2 (the 503, then the one the deadline cut)", got)
	}
}
