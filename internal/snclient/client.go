package snclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"
)

// maxBody bounds a response body: 10,000 wide rows fit, a runaway does not.
const maxBody = 256 << 20

// Client talks to one ServiceNow instance. It is safe for concurrent use.
// Close stops its token refresher.
type Client struct {
	cfg     Config
	base    string
	http    *http.Client
	tok     *tokens
	breaker *gobreaker.CircuitBreaker[*response]
	pace    *pacer
	m       *metrics
	log     *slog.Logger
	schema  *schemaCache

	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// New validates cfg and builds a client. It makes no request: the first
// call exchanges the token (CheckAuth does it eagerly).
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("servicenow client config: %w", err)
	}
	cfg = cfg.withDefaults()
	u, _ := url.Parse(cfg.InstanceURL) // validated
	m, err := newMetrics(cfg.Registerer, u.Host)
	if err != nil {
		return nil, fmt.Errorf("servicenow client metrics: %w", err)
	}
	c := &Client{
		cfg:    cfg,
		base:   cfg.baseURL(),
		http:   cfg.HTTPClient,
		m:      m,
		log:    cfg.Logger.With("instance", u.Host),
		schema: newSchemaCache(),
	}
	c.pace = newPacer(cfg, m, c.log)
	c.cfg.Logger = c.log
	c.tok = newTokens(c.cfg, m)
	c.breaker = gobreaker.NewCircuitBreaker[*response](gobreaker.Settings{
		Name:        u.Host,
		MaxRequests: cfg.BreakerHalfOpenRequests,
		Timeout:     cfg.BreakerOpenFor,
		ReadyToTrip: func(cn gobreaker.Counts) bool {
			return cn.ConsecutiveFailures >= cfg.BreakerFailures
		},
		IsExcluded: breakerExcluded,
		OnStateChange: func(_ string, from, to gobreaker.State) {
			m.breaker.Set(float64(breakerGauge(to)))
			c.log.Warn("servicenow circuit breaker", "from", from.String(), "to", to.String())
		},
	})
	ctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	if !cfg.DisableBackgroundRefresh {
		c.wg.Go(func() { c.tok.run(ctx) })
	}
	return c, nil
}

// Close stops the background refresher and waits for it.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.stop()
	c.wg.Wait()
	c.http.CloseIdleConnections()
	return nil
}

// TokenStatus reports the access token's expiry and the last refresh error.
func (c *Client) TokenStatus() TokenStatus { return c.tok.status() }

// TokenExpiry is when the current access token expires (zero before the
// first exchange).
func (c *Client) TokenExpiry() time.Time { return c.tok.status().Expiry }

// CheckAuth exchanges a token now if there is no usable one, so a
// misconfigured client fails at start rather than on its first write.
func (c *Client) CheckAuth(ctx context.Context) error {
	_, err := c.tok.get(ctx)
	return err
}

// SetRateLimit sets the cap on the client's request rate (requests per
// second, 0 for none; Config.RateLimit). The rules the client learns from
// the instance's answers pace it whatever the cap.
func (c *Client) SetRateLimit(perSecond float64, burst int) {
	if perSecond <= 0 {
		c.pace.cap.SetLimit(rate.Inf)
		return
	}
	c.pace.cap.SetLimit(rate.Limit(perSecond))
	c.pace.cap.SetBurst(max(burst, 1))
}

// BreakerState is the circuit breaker's state: "closed", "half-open", "open".
func (c *Client) BreakerState() string { return c.breaker.State().String() }

func breakerGauge(s gobreaker.State) int {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	}
	return 0
}

// breakerExcluded keeps answers that say nothing about the instance's
// health out of the breaker's counts: 4xx (our request or our rights are
// wrong; 429 included, since Retry-After already tells us when to come
// back, and a breaker would only stack its own pause on top) and callers
// giving up. 5xx, timeouts and network errors count as failures.
// halfOpenWait is how long a call refused by the half-open breaker waits:
// the trial request in flight closes or reopens it within a request's time.
const halfOpenWait = time.Second

// breakerWait is how long a call the breaker refused should wait before
// the next: the open period while it is open; while it is half-open and its
// trial request is in flight, a moment (halfOpenWait) -- the trial decides
// soon, and a whole open period would idle every caller for 30 s after a
// trial that succeeds.
func (c *Client) breakerWait(err error) time.Duration {
	if errors.Is(err, gobreaker.ErrTooManyRequests) {
		return min(halfOpenWait, c.cfg.BreakerOpenFor)
	}
	return c.cfg.BreakerOpenFor
}

func breakerExcluded(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status < 500
	}
	var gone *callerGone
	var src *sourceError
	return errors.As(err, &gone) || errors.As(err, &src)
}

// call is one logical request, retried as a whole.
type call struct {
	method string
	table  string
	sysID  string
	path   string
	query  url.Values
	body   []byte

	// A streamed request body (attachment uploads): open is called once
	// per attempt, so a retry re-sends from the start; size is its
	// Content-Length and contentType its Content-Type.
	open        func() (io.ReadCloser, error)
	size        int64
	contentType string
	// accept replaces "application/json" (downloads send */*).
	accept string
	// stream hands a successful answer's body to the caller unread
	// (response.stream); the caller closes it.
	stream bool
}

type response struct {
	status int
	header http.Header
	body   []byte
	stream io.ReadCloser // set for call.stream
}

// sourceError is a streamed request body that could not be opened or read:
// the caller's source failed, not ServiceNow, so it is neither retried nor
// counted by the breaker.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "reading the file to upload: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// callerGone marks an attempt ended by the caller's context.
type callerGone struct{ err error }

func (e *callerGone) Error() string { return e.err.Error() }
func (e *callerGone) Unwrap() error { return e.err }

// transportError is a failed attempt without an HTTP answer.
type transportError struct {
	err  error
	sent bool // a connection was obtained: the server may have seen the request
}

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

func idempotent(method string) bool { return method != http.MethodPost }

// do sends a call with pacing, the breaker and retries:
//   - pacing: the cap (Config.RateLimit) and the rate limit rule the
//     resource's answers name, learned from their headers (see pacer);
//   - 429: wait what Retry-After or X-RateLimit-Reset says (else backoff);
//   - 5xx and network errors: backoff with full jitter, for GET, PATCH,
//     PUT and DELETE, which are idempotent. POST is retried only when the
//     request surely did not reach ServiceNow (no connection, a 429, a 401
//     before the token refresh): a retried POST that had arrived would
//     create a second record. The caller (writeback) can look the record
//     up by correlation_id before trying again.
//   - 401: the token is dropped, a new one exchanged and the call retried
//     once; a 401 with that fresh token gets HintAppUser.
//
// The whole is bounded by ctx and RetryMaxElapsed. These are retries within
// one call; what a consumer does with the error a call finally returns
// (retry the message later, dead-letter it, pause) is consume.Classify's
// decision, from IsPermanent and the error's type.
func (c *Client) do(ctx context.Context, cl *call) (*response, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	var last error
	reason := ""
	refreshed := false
	// last is the latest failure ServiceNow (or the network) gave; the
	// caller's context ending does not replace it, so a deadline reports
	// what kept failing until then.
	keep := func(err error) {
		if last == nil || ctx.Err() == nil {
			last = err
		}
	}
	// The pacer fails a request it would start after the caller's
	// deadline or the retry budget at once, as the 429 it avoids.
	deadline := time.Now().Add(c.cfg.RetryMaxElapsed)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	op := func() (*response, error) {
		reason = ""
		tk, err := c.pace.wait(ctx, resourceOf(cl), deadline)
		if err != nil {
			var hb *heldBack
			if errors.As(err, &hb) {
				last = hb.apiError(cl, time.Now())
				return nil, backoff.Permanent(last)
			}
			keep(err)
			return nil, backoff.Permanent(err)
		}
		defer c.pace.finish(tk)
		tok, err := c.tok.get(ctx)
		if err != nil {
			keep(err)
			var te *TokenError
			if errors.As(err, &te) && !te.Permanent() { // the token endpoint failed or shed load
				reason = "token"
				return nil, err
			}
			return nil, backoff.Permanent(err)
		}
		resp, err := c.breaker.Execute(func() (*response, error) { return c.attempt(ctx, cl, tok, tk) })
		if err == nil {
			return resp, nil
		}
		var gone *callerGone
		var src *sourceError
		if errors.As(err, &gone) || errors.As(err, &src) {
			keep(err)
			return nil, backoff.Permanent(err)
		}
		last = err
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			last = &BreakerOpenError{OpenFor: c.breakerWait(err)}
			return nil, backoff.Permanent(last)
		}
		var ae *APIError
		if errors.As(err, &ae) {
			switch {
			case ae.Status == 401 && !refreshed:
				refreshed = true
				c.tok.invalidate(tok)
				reason = "unauthorized"
				return nil, &backoff.RetryAfterError{}
			case ae.Status == 401:
				ae.Hint = HintAppUser
				return nil, backoff.Permanent(err)
			case ae.Status == 429:
				c.m.rateLimited.WithLabelValues(cl.table).Inc()
				reason = "rate_limited"
				if ae.RetryAfter > 0 {
					if dl, ok := ctx.Deadline(); ok && time.Until(dl) < ae.RetryAfter {
						// Waiting would only end in a context error.
						return nil, backoff.Permanent(err)
					}
					return nil, &backoff.RetryAfterError{Duration: ae.RetryAfter}
				}
				return nil, err
			case ae.Status >= 500 && idempotent(cl.method):
				reason = "server_error"
				return nil, err
			}
			return nil, backoff.Permanent(err)
		}
		var te *transportError
		if errors.As(err, &te) && (idempotent(cl.method) || !te.sent) {
			reason = "network"
			return nil, err
		}
		return nil, backoff.Permanent(err)
	}
	resp, err := backoff.Retry(ctx, op,
		backoff.WithBackOff(newFullJitter(c.cfg.RetryInitial, c.cfg.RetryMax)),
		backoff.WithMaxElapsedTime(c.cfg.RetryMaxElapsed),
		backoff.WithNotify(func(_ error, wait time.Duration) {
			c.m.retries.WithLabelValues(cl.table, cl.method, reason).Inc()
			c.log.Debug("servicenow retry", "table", cl.table, "method", cl.method, "reason", reason, "wait", wait, "err", last)
		}))
	if err == nil {
		return resp, nil
	}
	if last == nil {
		last = err
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(last, ctxErr) {
		return nil, fmt.Errorf("%s %s: %w (last attempt: %w)", cl.method, cl.table, ctxErr, last)
	}
	return nil, last
}

// attempt sends one HTTP request and tells the pacer what the answer said.
func (c *Client) attempt(ctx context.Context, cl *call, tok *token, tk *ticket) (*response, error) {
	if cl.open != nil || cl.stream {
		return c.attemptStream(ctx, cl, tok, tk)
	}
	actx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	var gotConn atomic.Bool
	actx = httptrace.WithClientTrace(actx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { gotConn.Store(true) },
	})
	target := c.base + cl.path
	if len(cl.query) > 0 {
		target += "?" + cl.query.Encode()
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(actx, cl.method, target, body)
	if err != nil {
		return nil, &APIError{Method: cl.method, Table: cl.table, Message: err.Error()}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok.access.Reveal())
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.m.requests.WithLabelValues(cl.table, cl.method, "error").Inc()
		if ctx.Err() != nil {
			return nil, &callerGone{err}
		}
		return nil, &transportError{err: fmt.Errorf("%s %s: %w", cl.method, cl.table, err), sent: gotConn.Load()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	c.m.duration.WithLabelValues(cl.table, cl.method).Observe(time.Since(start).Seconds())
	c.m.requests.WithLabelValues(cl.table, cl.method, strconv.Itoa(resp.StatusCode)).Inc()
	if err != nil {
		if ctx.Err() != nil {
			return nil, &callerGone{err}
		}
		return nil, &transportError{err: fmt.Errorf("%s %s: reading body: %w", cl.method, cl.table, err), sent: true}
	}
	if len(b) > maxBody {
		return nil, &APIError{Status: resp.StatusCode, Method: cl.method, Table: cl.table,
			Message: fmt.Sprintf("response body over %d bytes", maxBody), Hint: "ask for fewer rows (sysparm_limit) or fields"}
	}
	return c.answered(cl, tk, resp, b)
}

// answered turns a read answer into the call's result and tells the pacer.
func (c *Client) answered(cl *call, tk *ticket, resp *http.Response, b []byte) (*response, error) {
	if resp.StatusCode >= 400 {
		e := c.apiError(cl, resp, b)
		c.pace.answer(tk, resp.StatusCode, resp.Header, e.RetryAfter)
		return nil, e
	}
	c.pace.answer(tk, resp.StatusCode, resp.Header, 0)
	return &response{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// apiError decodes ServiceNow's {"error":{"message","detail"},"status":"failure"}.
func (c *Client) apiError(cl *call, resp *http.Response, body []byte) *APIError {
	e := &APIError{Status: resp.StatusCode, Method: cl.method, Table: cl.table, SysID: cl.sysID}
	var env struct {
		Error *struct {
			Message json.RawMessage `json:"message"`
			Detail  json.RawMessage `json:"detail"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error != nil {
		e.Message = jsonText(env.Error.Message)
		e.Detail = jsonText(env.Error.Detail)
	} else {
		e.Message = http.StatusText(resp.StatusCode)
		if s := strings.TrimSpace(firstLine(string(body), 200)); s != "" && !strings.HasPrefix(s, "<") {
			e.Detail = s
		}
	}
	if resp.StatusCode == 429 {
		e.RetryAfter = retryAfter(resp.Header, time.Now())
		e.RateLimitRule = resp.Header.Get("X-RateLimit-Rule")
	}
	e.Hint = hintFor(e.Status, e.Message, e.Detail)
	if cl.table == attachmentTable && e.Status == 403 && e.Hint == HintRoles {
		e.Hint = HintAttachmentRights
	}
	if e.Status == 401 {
		e.Hint = "the access token was rejected; the client exchanged a new one and retried"
	}
	return e
}

// jsonText renders a message or detail that is normally a string but may
// be null or an object on some releases.
func jsonText(v json.RawMessage) string {
	if len(v) == 0 || string(v) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	return firstLine(string(v), 200)
}

// retryAfter reads how long a 429 asks to wait: Retry-After (seconds or
// an HTTP date), else X-RateLimit-Reset (Unix seconds when the window
// resets). 0 when neither says.
func retryAfter(h http.Header, now time.Time) time.Duration {
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 && n < 1e6 {
			return time.Duration(n * float64(time.Second))
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0)
		}
	}
	if v := strings.TrimSpace(h.Get("X-RateLimit-Reset")); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 && n < 1e11 {
			return max(time.Unix(n, 0).Sub(now), 0)
		}
	}
	return 0
}
