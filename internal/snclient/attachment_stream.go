package snclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"
)

// attemptStream sends one attempt of a call with a streamed request body
// (call.open) or a streamed answer (call.stream). RequestTimeout does not
// bound the whole attempt, which a large file would outlast, but each wait:
// for the file's next bytes to be taken by the connection, for the answer's
// headers, for an error or JSON answer's body. A streamed answer's body is
// then bounded by the caller's ctx alone.
func (c *Client) attemptStream(ctx context.Context, cl *call, tok *token, tk *ticket) (*response, error) {
	actx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(c.cfg.RequestTimeout, cancel)
	fail := func() { wd.stop(); cancel() }
	var gotConn atomic.Bool
	tctx := httptrace.WithClientTrace(actx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { gotConn.Store(true) },
	})
	target := c.base + cl.path
	if len(cl.query) > 0 {
		target += "?" + cl.query.Encode()
	}
	req, err := http.NewRequestWithContext(tctx, cl.method, target, nil)
	if err != nil {
		fail()
		return nil, &APIError{Method: cl.method, Table: cl.table, Message: err.Error()}
	}
	var body *watchedBody
	if cl.open != nil {
		rc, err := cl.open()
		if err != nil {
			fail()
			return nil, &sourceError{err}
		}
		if cl.size == 0 {
			_ = rc.Close()
			req.Body = http.NoBody
		} else {
			body = &watchedBody{rc: rc, wd: wd}
			req.Body = body
		}
		req.ContentLength = cl.size
		req.Header.Set("Content-Type", cl.contentType)
	}
	accept := cl.accept
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("Authorization", "Bearer "+tok.access.Reveal())
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		fail()
		c.m.requests.WithLabelValues(cl.table, cl.method, "error").Inc()
		if body != nil {
			if serr := body.sourceErr(cl.size); serr != nil {
				return nil, serr
			}
		}
		if ctx.Err() != nil {
			return nil, &callerGone{err}
		}
		if wd.fired.Load() {
			err = fmt.Errorf("no progress for %s (request timeout): %w", c.cfg.RequestTimeout, err)
		}
		return nil, &transportError{err: fmt.Errorf("%s %s: %w", cl.method, cl.table, err), sent: gotConn.Load()}
	}
	c.m.duration.WithLabelValues(cl.table, cl.method).Observe(time.Since(start).Seconds())
	c.m.requests.WithLabelValues(cl.table, cl.method, strconv.Itoa(resp.StatusCode)).Inc()
	if cl.stream && resp.StatusCode < 400 {
		wd.stop()
		c.pace.answer(tk, resp.StatusCode, resp.Header, 0)
		return &response{status: resp.StatusCode, header: resp.Header, stream: &streamBody{rc: resp.Body, cancel: cancel}}, nil
	}
	wd.kick()
	defer fail()
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, &callerGone{err}
		}
		return nil, &transportError{err: fmt.Errorf("%s %s: reading body: %w", cl.method, cl.table, err), sent: true}
	}
	if len(b) > maxBody {
		return nil, &APIError{Status: resp.StatusCode, Method: cl.method, Table: cl.table, Message: fmt.Sprintf("response body over %d bytes", maxBody)}
	}
	return c.answered(cl, tk, resp, b)
}

// watchdog cancels an attempt that makes no progress for d.
type watchdog struct {
	d     time.Duration
	t     *time.Timer
	fired atomic.Bool
}

func newWatchdog(d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d}
	w.t = time.AfterFunc(d, func() { w.fired.Store(true); cancel() })
	return w
}

func (w *watchdog) kick() { w.t.Reset(w.d) }
func (w *watchdog) stop() { w.t.Stop() }

// watchedBody is an upload's body: every read is progress; a failed read
// is the source's fault, not the network's.
type watchedBody struct {
	rc  io.ReadCloser
	wd  *watchdog
	n   atomic.Int64
	eof atomic.Bool
	err atomic.Pointer[error]
}

func (b *watchedBody) Read(p []byte) (int, error) {
	b.wd.kick()
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	switch {
	case errors.Is(err, io.EOF):
		b.eof.Store(true)
	case err != nil:
		b.err.Store(&err)
	}
	return n, err
}

func (b *watchedBody) Close() error { return b.rc.Close() }

// sourceErr is the error the file itself caused, if any: a failed read, or
// fewer or more bytes than announced (the transport then fails the request).
func (b *watchedBody) sourceErr(size int64) error {
	if p := b.err.Load(); p != nil {
		return &sourceError{*p}
	}
	if n := b.n.Load(); n > size || (b.eof.Load() && n != size) {
		return &sourceError{fmt.Errorf("the file gave %d bytes, not the %d announced as its size", n, size)}
	}
	return nil
}

// streamBody is a streamed answer's body; closing it ends the attempt.
type streamBody struct {
	rc     io.ReadCloser
	cancel context.CancelFunc
}

func (s *streamBody) Read(p []byte) (int, error) { return s.rc.Read(p) }

func (s *streamBody) Close() error {
	err := s.rc.Close()
	s.cancel()
	return err
}
