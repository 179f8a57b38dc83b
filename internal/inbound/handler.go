package inbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/trace"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// Accepted is the body of a 202 answer.
type Accepted struct {
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Echoes     int `json:"echoes"`
}

// ErrorBody is the body of every failure answer. SelfTest and Diagnosis
// are set only on answers to an instance self-test (see selftest.go).
type ErrorBody struct {
	Error     string `json:"error"`
	Detail    any    `json:"detail,omitempty"`
	SelfTest  bool   `json:"selftest,omitempty"`
	Diagnosis string `json:"diagnosis,omitempty"`
}

func (r *Receiver) handleWebhook(c echo.Context) error {
	req := c.Request()
	if r.closing.Load() {
		// The last moments of a shutdown: tell the sender to come back
		// (to this bridge once restarted, or another one) and let it go
		// quiet before the listener closes (see Serve).
		c.Response().Header().Set("Retry-After", r.retryAfter)
		return fail(c, http.StatusServiceUnavailable, "shutting down", "the bridge is stopping; retry the whole body later")
	}
	if events.IsSelfTestID(req.Header.Get(webhook.HeaderID)) {
		return r.handleSelfTest(c)
	}
	if !isJSON(req.Header.Get(echo.HeaderContentType)) {
		return fail(c, http.StatusUnsupportedMediaType, "unsupported content type", "send Content-Type: application/json")
	}
	body, err := r.readBody(req)
	if err != nil {
		return err
	}
	if status, e := r.verify(c, body); status != 0 {
		return fail(c, status, e.Error, e.Detail)
	}
	wh, err := r.validator.DecodeWebhook(body)
	if err != nil {
		var verr *events.ValidationError
		if errors.As(err, &verr) {
			return fail(c, http.StatusUnprocessableEntity, "invalid event", verr.Problems)
		}
		return fail(c, http.StatusBadRequest, "malformed body", err.Error())
	}
	res, err := r.publish(req.Context(), &wh, len(body))
	if err != nil {
		r.m.publishFailures.Inc()
		r.log.Warn("webhook not stored: answering 503", "webhook_id", req.Header.Get(webhook.HeaderID), "events", len(wh.Events),
			"client_ip", c.RealIP(), "err", err)
		c.Response().Header().Set("Retry-After", r.retryAfter)
		return fail(c, http.StatusServiceUnavailable, "event store unavailable",
			"JetStream did not acknowledge every event; retry the whole body later (events already stored are de-duplicated)")
	}
	return c.JSONBlob(http.StatusAccepted, res.appendJSON(make([]byte, 0, 64)))
}

// appendJSON appends a's JSON form and a newline, as c.JSON writes it,
// without encoding/json's reflection on every webhook.
func (a Accepted) appendJSON(b []byte) []byte {
	b = append(b, `{"accepted":`...)
	b = strconv.AppendInt(b, int64(a.Accepted), 10)
	b = append(b, `,"duplicates":`...)
	b = strconv.AppendInt(b, int64(a.Duplicates), 10)
	b = append(b, `,"echoes":`...)
	b = strconv.AppendInt(b, int64(a.Echoes), 10)
	return append(b, "}\n"...)
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

// readBody reads at most MaxBodyBytes. Content-Length only serves to reject
// early; the limit holds for chunked or lying bodies too.
func (r *Receiver) readBody(req *http.Request) ([]byte, error) {
	limit := r.cfg.MaxBodyBytes
	tooLarge := func() error {
		return &echo.HTTPError{Code: http.StatusRequestEntityTooLarge, Message: ErrorBody{
			Error: "body too large", Detail: fmt.Sprintf("at most %d bytes", limit)}}
	}
	if req.ContentLength > limit {
		return nil, tooLarge()
	}
	size := req.ContentLength
	if size < 0 || size > limit {
		size = 512
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+1))
	n, err := buf.ReadFrom(io.LimitReader(req.Body, limit+1))
	if err != nil {
		return nil, &echo.HTTPError{Code: http.StatusBadRequest, Message: ErrorBody{Error: "unreadable body", Detail: "the request body could not be read"}, Internal: err}
	}
	if n > limit {
		return nil, tooLarge()
	}
	return buf.Bytes(), nil
}

// verify checks the signature; a non-zero status means rejected.
func (r *Receiver) verify(c echo.Context, body []byte) (int, ErrorBody) {
	h := c.Request().Header
	err := r.verifier.Verify(h.Get(webhook.HeaderID), h.Get(webhook.HeaderTimestamp), h.Get(webhook.HeaderSignature), body)
	if err == nil {
		return 0, ErrorBody{}
	}
	return r.rejectSignature(c, err)
}

// rejectSignature counts and logs a failed verification and builds its 401.
// The log names the client as the IPExtractor sees it (see ipExtractor): by
// default the connection's address, never a header the sender wrote.
func (r *Receiver) rejectSignature(c echo.Context, err error) (int, ErrorBody) {
	h := c.Request().Header
	reason := "signature"
	switch {
	case errors.Is(err, webhook.ErrMissingHeaders):
		reason = "missing_headers"
	case errors.Is(err, webhook.ErrBadTimestamp):
		reason = "bad_timestamp"
	case errors.Is(err, webhook.ErrTimestampSkew):
		reason = "timestamp_skew"
	case errors.Is(err, webhook.ErrNoSecretsDefined):
		reason = "no_secrets"
	}
	r.m.signatureFailures.WithLabelValues(reason).Inc()
	r.log.Warn("webhook rejected", "reason", reason, "webhook_id", truncate(h.Get(webhook.HeaderID), 120), "client_ip", c.RealIP())
	// The webhook errors name what was wrong, never key material.
	return http.StatusUnauthorized, ErrorBody{Error: "invalid signature", Detail: err.Error()}
}

// echoReason is why the receiver suppressed an echo, in the decision log.
const echoReason = "the writeback wrote this version itself (the echo cache knows the write): answered 202, not stored, not sent to the app"

// publish stores every event that is not an echo and waits for all acks.
// bodySize (the webhook's) sizes the stored form's buffer.
func (r *Receiver) publish(ctx context.Context, wh *events.Webhook, bodySize int) (Accepted, error) {
	var res Accepted
	if !r.nc.IsConnected() {
		return res, fmt.Errorf("NATS is %s", r.nc.Status())
	}
	// A timer rather than a context with a deadline: a third of the cost.
	timeout := time.NewTimer(r.cfg.PublishTimeout)
	defer timeout.Stop()
	start := time.Now()
	evs := wh.Events
	futures := make([]jetstream.PubAckFuture, len(evs))
	for i := range evs {
		ev := &evs[i]
		if r.cfg.Echoes != nil && r.cfg.Echoes.IsEcho(ev) {
			res.Echoes++
			r.m.echoes.WithLabelValues(ev.Table).Inc()
			r.log.Debug("echo of our own write: not stored", "table", ev.Table, "sys_id", ev.SysID, "sys_mod_count", int64(ev.SysModCount))
			r.cfg.Trace.Record(trace.Entry{
				Stage: trace.StageIngest, Source: trace.SourceWebhook, Table: ev.Table, SysID: ev.SysID, Number: ev.Record["number"],
				Action: ev.Action, Version: int64(ev.SysModCount), Decision: trace.EchoSuppressed, Reason: echoReason,
			})
			continue
		}
		ev.Source = events.SourceWebhook
		data := wh.AppendStored(make([]byte, 0, bodySize/len(evs)+128), i)
		// No Nats-Expected-Stream: JetStream stores every header with the
		// message, and consumers that copy headers onto a republish (dead
		// letters) would be refused; streams cannot overlap anyway.
		msg := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{
			events.HeaderMsgID:  {ev.MsgID()},
			events.HeaderSource: {events.SourceWebhook},
		}}
		f, err := r.js.PublishMsgAsync(msg)
		if err != nil {
			return res, fmt.Errorf("publish %s: %w", ev.MsgID(), err)
		}
		futures[i] = f
	}
	// Building the arguments of a disabled debug line still allocates.
	debug := r.log.Enabled(ctx, slog.LevelDebug)
	for i, f := range futures {
		if f == nil {
			continue
		}
		ev := &evs[i]
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				res.Duplicates++
				r.m.duplicates.WithLabelValues(ev.Table).Inc()
			} else {
				res.Accepted++
				r.m.published.WithLabelValues(ev.Table).Inc()
			}
			if debug {
				r.log.Debug("event stored", "table", ev.Table, "sys_id", ev.SysID, "sys_mod_count", int64(ev.SysModCount),
					"subject", ev.Subject(), "seq", ack.Sequence, "duplicate", ack.Duplicate)
			}
		case err := <-f.Err():
			return res, fmt.Errorf("publish %s: %w", ev.MsgID(), err)
		case <-timeout.C:
			return res, fmt.Errorf("publish %s: no ack within %s", ev.MsgID(), r.cfg.PublishTimeout)
		case <-ctx.Done():
			return res, fmt.Errorf("publish %s: %w", ev.MsgID(), ctx.Err())
		}
	}
	r.m.publishSeconds.Observe(time.Since(start).Seconds())
	return res, nil
}

func (r *Receiver) handleHealth(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

func (r *Receiver) handleReady(c echo.Context) error {
	if r.draining.Load() {
		c.Response().Header().Set("Retry-After", r.retryAfter)
		return fail(c, http.StatusServiceUnavailable, "not ready", "shutting down")
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if err := r.Ready(ctx); err != nil {
		c.Response().Header().Set("Retry-After", r.retryAfter)
		return fail(c, http.StatusServiceUnavailable, "not ready", err.Error())
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

func fail(c echo.Context, status int, msg string, detail any) error {
	return c.JSON(status, ErrorBody{Error: msg, Detail: detail})
}

// handleError replaces Echo's default handler: every error answer has the
// JSON error shape, and internal errors say nothing of their cause.
func (r *Receiver) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, body := http.StatusInternalServerError, ErrorBody{Error: "internal error"}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		status = he.Code
		switch m := he.Message.(type) {
		case ErrorBody:
			body = m
		default:
			body = ErrorBody{Error: strings.ToLower(http.StatusText(status))}
		}
	}
	if status >= 500 {
		r.log.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "status", status, "err", err)
	}
	if c.Request().Method == http.MethodHead {
		err = c.NoContent(status)
	} else {
		err = c.JSON(status, body)
	}
	if err != nil {
		r.log.Warn("writing error response", "err", err)
	}
}

// recoverJSON turns a panic into a logged 500 with the JSON error shape. The
// log names the panic and where it happened, but carries no stack trace.
func (r *Receiver) recoverJSON(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			where := ""
			if pc, file, line, ok := runtime.Caller(2); ok {
				where = fmt.Sprintf("%s:%d", file, line)
				if fn := runtime.FuncForPC(pc); fn != nil {
					where = fn.Name() + " " + where
				}
			}
			r.log.Error("panic while handling a request", "method", c.Request().Method, "path", c.Request().URL.Path,
				"panic", truncate(fmt.Sprint(v), 200), "at", where)
			err = &echo.HTTPError{Code: http.StatusInternalServerError, Message: ErrorBody{Error: "internal error"}}
		}()
		return next(c)
	}
}

// countRequests records the status of every answer, errors included.
func (r *Receiver) countRequests(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := next(c); err != nil {
			c.Error(err)
		}
		path := c.Path()
		if path == "" {
			path = "unmatched"
		}
		if status := c.Response().Status; status == http.StatusAccepted && path == Path {
			r.m.accepted.Inc() // the usual answer, without a label lookup
		} else {
			r.m.requests.WithLabelValues(path, strconv.Itoa(status)).Inc()
		}
		return nil
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
