package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// Headers of an HTTP apply request besides the Standard Webhooks ones.
const (
	HeaderIdempotencyKey = events.HeaderIdempotencyKey
	HeaderEntity         = events.HeaderEntity
	HeaderAction         = events.HeaderAction
)

// maxResponse bounds how much of the app's response is read and kept.
const maxResponse = 64 << 10

// HTTPApplier POSTs each message as JSON to the app, signed with the
// Standard Webhooks scheme (webhook-id = Idempotency-Key = the message id,
// stable across redeliveries). The app's answer decides:
//
//	2xx            applied; a JSON body {"external_id": "..."} links the record
//	409            the app already holds a newer version: applied
//	408, 425, 429  retried with backoff (Retry-After honoured)
//	other 4xx      dead letter, with the response body
//	5xx, timeouts  retried with backoff
type HTTPApplier struct {
	URL     string
	Secret  webhook.Secret
	Client  *http.Client // default: a client with Timeout
	Timeout time.Duration
	// UserAgent identifies the bridge (default "nowbridge").
	UserAgent string
}

// NewHTTPApplier returns an applier posting to url with its own connection
// pool sized for the pipeline's workers.
func NewHTTPApplier(url string, secret webhook.Secret, timeout time.Duration, workers int) *HTTPApplier {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = max(workers, 2)
	return &HTTPApplier{URL: url, Secret: secret, Timeout: timeout, Client: &http.Client{Transport: tr}}
}

// Name implements Applier.
func (a *HTTPApplier) Name() string { return "http" }

// CloseIdleConnections releases pooled connections (at shutdown).
func (a *HTTPApplier) CloseIdleConnections() {
	if a.Client != nil {
		a.Client.CloseIdleConnections()
	}
}

// Apply implements Applier.
func (a *HTTPApplier) Apply(ctx context.Context, m *Message) (Result, error) {
	body, err := m.Body()
	if err != nil {
		return Result{}, permanentf("encode %s: %v", m.MsgID, err)
	}
	s, respBody, err := a.post(ctx, a.URL, m.MsgID, body, map[string]string{HeaderEntity: m.Entity, HeaderAction: m.Action})
	if err != nil {
		return Result{}, err
	}
	switch {
	case s >= 200 && s < 300:
		var out struct {
			ExternalID string `json:"external_id"`
		}
		if len(bytes.TrimSpace(respBody)) > 0 {
			_ = json.Unmarshal(respBody, &out) // a body that is not this shape links nothing
		}
		return Result{ExternalID: strings.TrimSpace(out.ExternalID)}, nil
	case s == http.StatusConflict:
		return Result{AlreadyNewer: true}, nil
	}
	return Result{}, answerError(a.URL, m.MsgID, s, respBody, HintAppRejected)
}

// post sends body to url signed with the Standard Webhooks scheme under id
// (also the Idempotency-Key), with extra headers, and returns the app's
// status and (bounded) response body. An error is the request failing
// before an answer: the network, a timeout (consume.Classify retries it).
func (a *HTTPApplier) post(ctx context.Context, url, id string, body []byte, extra map[string]string) (int, []byte, error) {
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, permanentf("request to %s: %v", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	ua := a.UserAgent
	if ua == "" {
		ua = "nowbridge"
	}
	req.Header.Set("User-Agent", ua)
	req.Header.Set(HeaderIdempotencyKey, id)
	for k, v := range extra {
		req.Header.Set(k, v)
	}
	webhook.SetHeaders(req.Header, a.Secret, id, time.Now(), body)
	client := a.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("POST %s: %w", url, err) // network: consume.Classify retries it
	}
	defer resp.Body.Close()
	respBody, rerr := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // let the connection be reused
	if rerr != nil {
		respBody = nil
	}
	if s := resp.StatusCode; s == http.StatusRequestTimeout || s == http.StatusTooEarly || s == http.StatusTooManyRequests || s >= 500 {
		e := consume.RetryAfter(fmt.Errorf("POST %s: app answered %d %s", url, s, http.StatusText(s)), retryAfter(resp.Header.Get("Retry-After")))
		e.Status, e.Response = s, string(respBody)
		return 0, nil, e
	}
	return resp.StatusCode, respBody, nil
}

// answerError is the dead letter of an answer that is not a success: the
// app refused the request and will refuse it again.
func answerError(url, id string, s int, respBody []byte, hint string) error {
	e := consume.Permanent(fmt.Errorf("POST %s rejected %s: app answered %d %s", url, id, s, http.StatusText(s)), hint)
	e.Status, e.Response = s, string(respBody)
	return e
}

func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

var errNoURL = errors.New("BRIDGE_APPLY_URL is required with BRIDGE_APPLIER=http")
