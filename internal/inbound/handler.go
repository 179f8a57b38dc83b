package inbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

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

// ServeHTTP answers webhooks itself and hands every other request (the
// instance self-test, health, readiness, metrics, unknown routes) to Echo.
// The webhook route is the receiver's hot path: it skips Echo's router,
// context and middleware chain and keeps their effects (drain header,
// request count, panic recovery, the JSON error shape) in serveWebhook.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != Path ||
		events.IsSelfTestID(webhook.ID(req.Header)) && !r.closing.Load() {
		r.e.ServeHTTP(w, req)
		return
	}
	status := http.StatusInternalServerError
	defer func() {
		if status == http.StatusAccepted {
			r.m.accepted.Inc() // the usual answer, without a label lookup
		} else {
			r.m.requests.WithLabelValues(Path, strconv.Itoa(status)).Inc()
		}
	}()
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			r.logPanic(req, v)
			status = http.StatusInternalServerError
			writeJSON(w, status, ErrorBody{Error: "internal error"})
		}
	}()
	if r.draining.Load() {
		w.Header().Set(echo.HeaderConnection, "close")
	}
	status = r.serveWebhook(w, req)
}

// serveWebhook stores a webhook's events and answers; it returns the status
// it answered.
func (r *Receiver) serveWebhook(w http.ResponseWriter, req *http.Request) int {
	if r.closing.Load() {
		// The last moments of a shutdown: tell the sender to come back
		// (to this bridge once restarted, or another one) and let it go
		// quiet before the listener closes (see Serve).
		w.Header().Set("Retry-After", r.retryAfter)
		return writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: "shutting down", Detail: "the bridge is stopping; retry the whole body later"})
	}
	if !isJSON(req.Header.Get(echo.HeaderContentType)) {
		return writeJSON(w, http.StatusUnsupportedMediaType, ErrorBody{Error: "unsupported content type", Detail: "send Content-Type: application/json"})
	}
	pooled := bodies.Get().(*[]byte)
	body, err := r.readBody(req, (*pooled)[:0])
	defer func() {
		if cap(body) <= maxPooledBody {
			*pooled = body[:0]
			bodies.Put(pooled)
		}
	}()
	if err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			if eb, ok := he.Message.(ErrorBody); ok {
				return writeJSON(w, he.Code, eb)
			}
		}
		return writeJSON(w, http.StatusBadRequest, ErrorBody{Error: "unreadable body"})
	}
	if status, e := r.verify(req, body); status != 0 {
		return writeJSON(w, status, e)
	}
	wh, err := r.validator.DecodeWebhook(body)
	if err != nil {
		var verr *events.ValidationError
		if errors.As(err, &verr) {
			return writeJSON(w, http.StatusUnprocessableEntity, ErrorBody{Error: "invalid event", Detail: verr.Problems})
		}
		return writeJSON(w, http.StatusBadRequest, ErrorBody{Error: "malformed body", Detail: err.Error()})
	}
	res, err := r.publish(req.Context(), &wh)
	if err != nil {
		r.m.publishFailures.Inc()
		r.log.Warn("webhook not stored: answering 503", "webhook_id", webhook.ID(req.Header), "events", len(wh.Events),
			"client_ip", r.clientIP(req), "err", err)
		w.Header().Set("Retry-After", r.retryAfter)
		return writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: "event store unavailable",
			Detail: "JetStream did not acknowledge every event; retry the whole body later (events already stored are de-duplicated)"})
	}
	w.Header()[echo.HeaderContentType] = jsonContentType
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(res.appendJSON(make([]byte, 0, 64)))
	return http.StatusAccepted
}

// jsonContentType is the Content-Type of every answer; net/http only reads
// a header's values, so one slice serves every request.
var jsonContentType = []string{echo.MIMEApplicationJSON}

// writeJSON answers v as Echo's c.JSON would (the same header and bytes)
// and returns status.
func writeJSON(w http.ResponseWriter, status int, v any) int {
	w.Header()[echo.HeaderContentType] = jsonContentType
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
	return status
}

// clientIP is the request's client as the IPExtractor sees it (see
// ipExtractor): by default the connection's address, never a header the
// sender wrote.
func (r *Receiver) clientIP(req *http.Request) string { return r.e.IPExtractor(req) }

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
	// The forms senders use, without parsing (and allocating) per request.
	if strings.EqualFold(contentType, "application/json") || strings.EqualFold(contentType, "application/json; charset=utf-8") {
		return true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

// readBody reads at most MaxBodyBytes into buf (grown as needed).
// Content-Length only serves to reject early and to size buf; the limit
// holds for chunked or lying bodies too.
func (r *Receiver) readBody(req *http.Request, buf []byte) ([]byte, error) {
	limit := r.cfg.MaxBodyBytes
	tooLarge := func() error {
		return &echo.HTTPError{Code: http.StatusRequestEntityTooLarge, Message: ErrorBody{
			Error: "body too large", Detail: fmt.Sprintf("at most %d bytes", limit)}}
	}
	if req.ContentLength > limit {
		return nil, tooLarge()
	}
	if n := int(req.ContentLength) + 1; req.ContentLength >= 0 && cap(buf) < n {
		buf = make([]byte, 0, n)
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, 512)
		}
		n, err := req.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, tooLarge()
		}
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, &echo.HTTPError{Code: http.StatusBadRequest, Message: ErrorBody{Error: "unreadable body", Detail: "the request body could not be read"}, Internal: err}
		}
	}
}

// bodies keeps webhook body buffers for reuse: a body is read, verified,
// decoded and stored within its request, and nothing keeps its bytes after
// (decoded strings are copies).
var bodies = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// maxPooledBody bounds the buffers bodies keeps.
const maxPooledBody = 64 << 10

// verify checks the signature; a non-zero status means rejected.
func (r *Receiver) verify(req *http.Request, body []byte) (int, ErrorBody) {
	h := req.Header
	id, ts, sig := webhook.Headers(h)
	err := r.verifier.Verify(id, ts, sig, body)
	if err == nil {
		return 0, ErrorBody{}
	}
	return r.rejectSignature(req, err)
}

// rejectSignature counts and logs a failed verification and builds its 401.
// The log names the client as clientIP sees it.
func (r *Receiver) rejectSignature(req *http.Request, err error) (int, ErrorBody) {
	h := req.Header
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
	r.log.Warn("webhook rejected", "reason", reason, "webhook_id", truncate(webhook.ID(h), 120), "client_ip", r.clientIP(req))
	// The webhook errors name what was wrong, never key material.
	return http.StatusUnauthorized, ErrorBody{Error: "invalid signature", Detail: err.Error()}
}

// echoReason is why the receiver suppressed an echo, in the decision log.
const echoReason = "the writeback wrote this version itself (the echo cache knows the write): answered 202, not stored, not sent to the app"

// publish stores every event that is not an echo and waits for all acks
// (see store.go).
func (r *Receiver) publish(ctx context.Context, wh *events.Webhook) (res Accepted, err error) {
	// down first: a drop after this load closes it (see acker.watchStatus).
	down := r.acks.downSignal()
	if !r.nc.IsConnected() {
		return res, fmt.Errorf("NATS is %s", r.nc.Status())
	}
	slot, err := r.acks.get(ctx)
	if err != nil {
		return res, err
	}
	outstanding := 0
	defer func() { r.acks.put(slot, outstanding == 0) }()
	// The slot's timer rather than a context with a deadline: a third of
	// the cost. The request's context is not watched: a sender that hung
	// up is not waited for longer than this, and its events are stored
	// all the same.
	timeout := slot.startTimer(r.cfg.PublishTimeout)
	start := time.Now()
	// Building the arguments of a disabled debug line still allocates.
	debug := r.log.Enabled(ctx, slog.LevelDebug)
	evs := wh.Events
	for next := 0; next < len(evs) || outstanding > 0; {
		// Publish while the slot has room, then take one ack.
		for ; next < len(evs) && outstanding < ackWindow; next++ {
			i := next
			ev := &evs[i]
			if r.cfg.Echoes != nil && r.cfg.Echoes.IsEchoOf(ev, func() events.Fields { return wh.Record(i) }) {
				res.Echoes++
				r.m.echoes.WithLabelValues(ev.Table).Inc()
				r.log.Debug("echo of our own write: not stored", "table", ev.Table, "sys_id", ev.SysID, "sys_mod_count", int64(ev.SysModCount))
				r.cfg.Trace.Record(trace.Entry{
					Stage: trace.StageIngest, Source: trace.SourceWebhook, Table: ev.Table, SysID: ev.SysID, Number: wh.Record(i)["number"],
					Action: ev.Action, Version: int64(ev.SysModCount), Decision: trace.EchoSuppressed, Reason: echoReason,
				})
				continue
			}
			ev.Source = events.SourceWebhook
			// No Nats-Expected-Stream: JetStream stores every header with the
			// message, and consumers that copy headers onto a republish (dead
			// letters) would be refused; streams cannot overlap anyway.
			msg := slot.message(ev.Subject(), slot.reply(i), ev.MsgID(), func(b []byte) []byte { return wh.AppendStored(b, i) })
			if err := r.nc.PublishMsg(msg); err != nil {
				return res, fmt.Errorf("publish %s: %w", ev.MsgID(), err)
			}
			outstanding++
		}
		if outstanding == 0 {
			break // the rest were echoes
		}
		select {
		case m := <-slot.ch:
			outstanding--
			i := slot.eventIndex(m.Subject)
			if i < 0 || i >= len(evs) {
				return res, fmt.Errorf("an ack arrived on %q, which names no event of this webhook", m.Subject)
			}
			ev := &evs[i]
			ack, err := parseAck(m)
			if err != nil {
				return res, fmt.Errorf("publish %s: %w", ev.MsgID(), err)
			}
			if ack.Duplicate {
				res.Duplicates++
				r.m.duplicates.WithLabelValues(ev.Table).Inc()
			} else {
				res.Accepted++
				r.m.published.WithLabelValues(ev.Table).Inc()
			}
			if debug {
				r.log.Debug("event stored", "table", ev.Table, "sys_id", ev.SysID, "sys_mod_count", int64(ev.SysModCount),
					"subject", ev.Subject(), "stream", ack.Stream, "seq", ack.Seq, "duplicate", ack.Duplicate)
			}
		case <-down:
			return res, errDisconnected
		case <-timeout:
			return res, fmt.Errorf("no ack for %d of %d events within %s", outstanding, len(evs), r.cfg.PublishTimeout)
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
			r.logPanic(c.Request(), v)
			err = &echo.HTTPError{Code: http.StatusInternalServerError, Message: ErrorBody{Error: "internal error"}}
		}()
		return next(c)
	}
}

// logPanic logs a recovered panic: what and where, no stack trace. It is
// called from the deferred function that recovered v.
func (r *Receiver) logPanic(req *http.Request, v any) {
	where := ""
	// 0 is logPanic, 1 the deferred function, 2 the runtime's panic, 3
	// the function that panicked.
	if pc, file, line, ok := runtime.Caller(3); ok {
		where = fmt.Sprintf("%s:%d", file, line)
		if fn := runtime.FuncForPC(pc); fn != nil {
			where = fn.Name() + " " + where
		}
	}
	r.log.Error("panic while handling a request", "method", req.Method, "path", req.URL.Path,
		"panic", truncate(fmt.Sprint(v), 200), "at", where)
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
