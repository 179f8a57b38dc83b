package snclient

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/sync/singleflight"

	"github.com/nowbridge/nowbridge/internal/secret"
)

// token is one access token and when to stop using it.
type token struct {
	access    secret.String
	issued    time.Time
	expiry    time.Time
	refreshAt time.Time // when the background refresher renews it
}

// usable: at least minValidity left, or half the lifetime for tokens too
// short-lived for minValidity to make sense.
func (t *token) usable(now time.Time, minValidity time.Duration) bool {
	if life := t.expiry.Sub(t.issued); life < 2*minValidity {
		minValidity = life / 2
	}
	return t.expiry.Sub(now) >= minValidity
}

// valid: not expired yet, with a margin for the request's flight time.
func (t *token) valid(now time.Time) bool { return t.expiry.Sub(now) > time.Second }

// TokenStatus describes the access token, for `bridge status`.
type TokenStatus struct {
	Expiry    time.Time // zero before the first exchange
	Issued    time.Time
	RefreshAt time.Time
	// LastError is the last failed exchange since the last good one.
	LastError error
}

// tokens fetches and caches the access token. Callers share one exchange
// through singleflight; a background goroutine renews ahead of expiry.
type tokens struct {
	oauth  clientcredentials.Config
	http   *http.Client
	cfg    Config
	log    *slog.Logger
	m      *metrics
	sf     singleflight.Group
	stored chan struct{} // poked when a token is stored

	mu      sync.Mutex
	cur     *token
	lastErr error
}

func newTokens(cfg Config, m *metrics) *tokens {
	return &tokens{
		oauth: clientcredentials.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret.Reveal(),
			TokenURL:     cfg.baseURL() + "/oauth_token.do",
			// ServiceNow documents credentials in the form body, not Basic.
			AuthStyle: oauth2.AuthStyleInParams,
		},
		http:   cfg.HTTPClient,
		cfg:    cfg,
		log:    cfg.Logger,
		m:      m,
		stored: make(chan struct{}, 1),
	}
}

func (ts *tokens) current() *token {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.cur
}

func (ts *tokens) status() TokenStatus {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	st := TokenStatus{LastError: ts.lastErr}
	if ts.cur != nil {
		st.Expiry, st.Issued, st.RefreshAt = ts.cur.expiry, ts.cur.issued, ts.cur.refreshAt
	}
	return st
}

// get returns a token fit for a request, exchanging a new one when needed.
// When the exchange fails, the last good token is used while it is valid.
func (ts *tokens) get(ctx context.Context) (*token, error) {
	cur := ts.current()
	if cur != nil && cur.usable(time.Now(), ts.cfg.TokenMinValidity) {
		return cur, nil
	}
	t, err := ts.refresh(ctx, cur, false)
	if err != nil {
		if cur != nil && cur.valid(time.Now()) {
			ts.log.WarnContext(ctx, "servicenow token refresh failed; using the current token until it expires",
				"expiry", cur.expiry, "err", err)
			return cur, nil
		}
		return nil, err
	}
	return t, nil
}

// invalidate drops bad if it is still the current token, so that the next
// get exchanges a new one. Many callers failing with the same token cause
// one exchange.
func (ts *tokens) invalidate(bad *token) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.cur == bad {
		ts.cur = nil
	}
}

// refresh runs one exchange shared by all concurrent callers. seen is the
// token the caller found wanting; force renews even a usable token (the
// background refresher). A caller arriving just after an exchange finds the
// new token and does not start another.
func (ts *tokens) refresh(ctx context.Context, seen *token, force bool) (*token, error) {
	ch := ts.sf.DoChan("token", func() (any, error) {
		if cur := ts.current(); cur != nil && cur.usable(time.Now(), ts.cfg.TokenMinValidity) && (cur != seen || !force) {
			return cur, nil
		}
		// Detached from the first caller's context: the exchange serves
		// everyone waiting, and a cancelled caller must not fail the rest.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ts.cfg.RequestTimeout)
		defer cancel()
		return ts.exchange(fctx)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (ts *tokens) exchange(ctx context.Context) (*token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, ts.http)
	start := time.Now()
	ot, err := ts.oauth.Token(ctx)
	if err != nil {
		te := tokenError(err)
		ts.m.refreshes.WithLabelValues("failed").Inc()
		ts.mu.Lock()
		ts.lastErr = te
		ts.mu.Unlock()
		return nil, te
	}
	t := &token{access: secret.String(ot.AccessToken), issued: start, expiry: ot.Expiry}
	if ot.Expiry.IsZero() {
		// No expires_in: assume ServiceNow's default lifetime.
		t.expiry = start.Add(1799 * time.Second)
	}
	life := t.expiry.Sub(start)
	lead := ts.cfg.RefreshLeadMin
	if span := ts.cfg.RefreshLeadMax - ts.cfg.RefreshLeadMin; span > 0 {
		lead += rand.N(span + 1)
	}
	lead = min(lead, life/2)
	t.refreshAt = t.expiry.Add(-lead)
	ts.mu.Lock()
	ts.cur, ts.lastErr = t, nil
	ts.mu.Unlock()
	ts.m.refreshes.WithLabelValues("ok").Inc()
	ts.m.tokenExpiry.Set(float64(t.expiry.Unix()))
	select {
	case ts.stored <- struct{}{}:
	default:
	}
	ts.log.DebugContext(ctx, "servicenow token issued", "expiry", t.expiry, "refresh_at", t.refreshAt)
	return t, nil
}

// tokenError turns an exchange failure into a *TokenError, keeping the
// credentials out (oauth2's errors carry the response body, which holds
// none; the request's form is never printed).
func tokenError(err error) *TokenError {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		te := &TokenError{Code: re.ErrorCode, Description: re.ErrorDescription}
		if re.Response != nil {
			te.Status = re.Response.StatusCode
		}
		switch {
		case te.Status == 401 || te.Code == "invalid_client" || te.Code == "unauthorized_client" || te.Description == "access_denied":
			te.Hint = HintTokenRejected
		case te.Status == 429 || te.Status >= 500:
			te.transient = true
			te.Hint = HintServer
		case te.Status == 404:
			te.Hint = HintTokenEndpoint
		case te.Status == 400:
			te.Hint = "the token endpoint rejected the request: " + te.Code + " " + te.Description
		}
		if te.Code == "" && te.Status != 401 {
			te.Err = errors.New(strings.TrimSpace(firstLine(string(re.Body), 200)))
		}
		return te
	}
	var ue interface{ Timeout() bool }
	if errors.As(err, &ue) || strings.Contains(err.Error(), "connection refused") || errors.Is(err, context.DeadlineExceeded) {
		return &TokenError{Err: err, transient: true, Hint: "the instance did not answer the token request; retried"}
	}
	// e.g. a 200 without access_token: a web page, not the OAuth endpoint.
	return &TokenError{Err: err, Hint: HintTokenEndpoint}
}

func firstLine(s string, max int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > max {
		s = s[:max]
	}
	return s
}

// run renews the token ahead of expiry until ctx ends. Failed renewals are
// retried with full-jitter backoff; callers keep the last good token while
// it is valid meanwhile.
func (ts *tokens) run(ctx context.Context) {
	bo := newFullJitter(ts.cfg.RetryInitial, ts.cfg.RetryMax)
	var retryAt time.Time
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		cur := ts.current()
		var wait time.Duration
		switch {
		case !retryAt.IsZero():
			wait = time.Until(retryAt)
		case cur != nil:
			wait = time.Until(cur.refreshAt)
		default:
			// No token yet (or invalidated): the next caller exchanges.
			wait = time.Hour
		}
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return
		case <-ts.stored:
			retryAt = time.Time{}
			bo.Reset()
			continue
		case <-timer.C:
		}
		if cur == nil && retryAt.IsZero() {
			continue
		}
		if _, err := ts.refresh(ctx, cur, true); err != nil {
			if ctx.Err() != nil {
				return
			}
			retryAt = time.Now().Add(bo.NextBackOff())
			ts.log.ErrorContext(ctx, "servicenow token refresh failed; will retry", "retry_at", retryAt, "err", err)
			continue
		}
		retryAt = time.Time{}
		bo.Reset()
		// Drain the poke our own exchange caused.
		select {
		case <-ts.stored:
		default:
		}
	}
}
