package nowbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// ReceiverConfig configures the HTTP receivers, for a bridge running the
// HTTP applier (BRIDGE_APPLIER=http, BRIDGE_APPLY_URL) or posting results
// (BRIDGE_RESULTS_URL).
type ReceiverConfig struct {
	// Secrets verify the Standard Webhooks signature of each request: the
	// whsec_ secret the bridge signs with (BRIDGE_APPLY_SECRET, else the
	// first of BRIDGE_WEBHOOK_SECRETS). Any one matching passes, so during a
	// rotation list the old and the new. Required.
	Secrets []string
	// Tolerance is how far a request's webhook-timestamp may be from now
	// (default 5m): a captured request cannot be replayed later than that.
	Tolerance time.Duration
	// MaxBodyBytes bounds a request body (default 4 MiB; the bridge's
	// messages are at most 2 MiB).
	MaxBodyBytes int64
	// Store is the apply receiver's version guard (default
	// NewMemoryStore(0)); the results receiver has none.
	Store VersionStore
	// Logger receives rejected requests (default slog.Default()); never a
	// secret or a field value.
	Logger *slog.Logger
}

func (c ReceiverConfig) build() (*receiver, error) {
	if len(c.Secrets) == 0 {
		return nil, errors.New("nowbridge: the receiver needs the secret the bridge signs with (ReceiverConfig.Secrets: BRIDGE_APPLY_SECRET's whsec_ value)")
	}
	r := &receiver{verifier: webhook.Verifier{Tolerance: c.Tolerance}, max: c.MaxBodyBytes, store: c.Store, log: c.Logger, seed: maphash.MakeSeed()}
	for i, s := range c.Secrets {
		sec, err := webhook.ParseSecret(s)
		if err != nil {
			return nil, fmt.Errorf("nowbridge: receiver secret #%d: %w", i+1, err)
		}
		r.verifier.Secrets = append(r.verifier.Secrets, sec)
	}
	if r.verifier.Tolerance <= 0 {
		r.verifier.Tolerance = 5 * time.Minute
	}
	if r.max <= 0 {
		r.max = 4 << 20
	}
	if r.store == nil {
		r.store = NewMemoryStore(0)
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	return r, nil
}

type receiver struct {
	verifier webhook.Verifier
	max      int64
	store    VersionStore
	log      *slog.Logger
	seed     maphash.Seed
	stripes  [256]sync.Mutex // one record at a time: by a hash of its key
}

// NewApplyReceiver returns an http.Handler for the bridge's HTTP applier:
// mount it at the path BRIDGE_APPLY_URL names. Each POST carries one
// ApplyMessage, signed with the Standard Webhooks scheme (webhook-id is the
// message id, also in Idempotency-Key). The receiver verifies the
// signature, decodes the message, applies the version guard and calls h,
// one request of a record at a time, and answers as the bridge expects:
//
//	200  h returned nil (body {"external_id": m.ExternalID}: set
//	     m.ExternalID in h to link a record created in ServiceNow), or
//	     this version was already handled (a redelivery)
//	409  the app already handled a newer version (the bridge counts it
//	     applied)
//	401  signature or timestamp invalid; 400 not an apply message; 413
//	     body too large; 405 not a POST
//	422  h returned Permanent(err) (the bridge dead-letters it with the
//	     error in the response)
//	503  h returned another error (the bridge retries with backoff, after
//	     Retry-After when h returned RetryAfter)
//
// A 4xx other than 409 makes the bridge dead-letter the message, so a wrong
// secret shows up in `bridge dlq ls`; fix it and `bridge dlq retry`.
func NewApplyReceiver(cfg ReceiverConfig, h ApplyHandler) (http.Handler, error) {
	if h == nil {
		return nil, errors.New("nowbridge: NewApplyReceiver needs a handler")
	}
	r, err := cfg.build()
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, id, ok := r.read(w, req)
		if !ok {
			return
		}
		m := &ApplyMessage{}
		if err := json.Unmarshal(body, m); err != nil {
			r.refuse(w, http.StatusBadRequest, "body is not an apply message: "+err.Error(), id)
			return
		}
		if m.Entity == "" {
			m.Entity = req.Header.Get(wire.HeaderEntity)
		}
		if m.Action == "" {
			m.Action = req.Header.Get(wire.HeaderAction)
		}
		m.MsgID = id
		key := m.RecordKey()
		if key != "" {
			mu := &r.stripes[maphash.String(r.seed, key)%uint64(len(r.stripes))]
			mu.Lock()
			defer mu.Unlock()
			last, ok, err := r.store.Get(req.Context(), key)
			if err != nil {
				r.fail(w, fmt.Errorf("version guard: %w", err), id)
				return
			}
			if ok && !last.Supersedes(m.Version, m.Action) {
				if m.Version < last.Version {
					writeJSON(w, http.StatusConflict, map[string]any{"error": "the app already handled a newer version", "version": last.Version})
					return
				}
				writeJSON(w, http.StatusOK, map[string]string{}) // a redelivery of what the app holds
				return
			}
		}
		if err := callHTTP(req.Context(), r.log, func(ctx context.Context) error { return h(ctx, m) }); err != nil {
			r.fail(w, err, id)
			return
		}
		if key != "" {
			if err := r.store.Put(req.Context(), key, Handled{Version: m.Version, Deleted: m.Action == wire.ActionDelete}); err != nil {
				r.log.Warn("nowbridge: version guard not updated; answering 200 anyway", "msg_id", id, "key", key, "err", err)
			}
		}
		out := map[string]string{}
		if m.ExternalID != "" {
			out["external_id"] = m.ExternalID
		}
		writeJSON(w, http.StatusOK, out)
	}), nil
}

// NewResultsReceiver returns an http.Handler for the results the bridge
// POSTs to BRIDGE_RESULTS_URL: each request carries one Result, signed as
// the apply requests are. It answers 200 when h returned nil, 422 for
// Permanent, 503 (with Retry-After for RetryAfter) for another error, and
// 401/400/413/405 as NewApplyReceiver.
func NewResultsReceiver(cfg ReceiverConfig, h ResultHandler) (http.Handler, error) {
	if h == nil {
		return nil, errors.New("nowbridge: NewResultsReceiver needs a handler")
	}
	r, err := cfg.build()
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, id, ok := r.read(w, req)
		if !ok {
			return
		}
		res := &Result{}
		if err := json.Unmarshal(body, res); err != nil {
			r.refuse(w, http.StatusBadRequest, "body is not a result: "+err.Error(), id)
			return
		}
		if err := callHTTP(req.Context(), r.log, func(ctx context.Context) error { return h(ctx, res) }); err != nil {
			r.fail(w, err, id)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{})
	}), nil
}

// read checks the method, reads the body and verifies its signature.
func (r *receiver) read(w http.ResponseWriter, req *http.Request) (body []byte, id string, ok bool) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		r.refuse(w, http.StatusMethodNotAllowed, "POST only", "")
		return nil, "", false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, r.max))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			r.refuse(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", r.max), req.Header.Get(webhook.HeaderID))
			return nil, "", false
		}
		r.refuse(w, http.StatusBadRequest, "reading the body: "+err.Error(), req.Header.Get(webhook.HeaderID))
		return nil, "", false
	}
	id = req.Header.Get(webhook.HeaderID)
	if err := r.verifier.Verify(id, req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body); err != nil {
		r.refuse(w, http.StatusUnauthorized, err.Error()+" (is the receiver's secret the bridge's BRIDGE_APPLY_SECRET? are both clocks right?)", id)
		return nil, "", false
	}
	return body, id, true
}

func (r *receiver) refuse(w http.ResponseWriter, status int, msg, id string) {
	r.log.Warn("nowbridge: request refused", "status", status, "msg_id", id, "reason", msg)
	writeJSON(w, status, map[string]string{"error": msg})
}

// fail answers a handler's error: 422 for Permanent, else 503.
func (r *receiver) fail(w http.ResponseWriter, err error, id string) {
	msg := truncate(err.Error(), 1024)
	if IsPermanent(err) {
		r.log.Error("nowbridge: handler refused the message for good; answering 422", "msg_id", id, "err", err)
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": msg})
		return
	}
	if d, ok := retryAfterOf(err); ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(d, 0).Seconds()))))
	}
	r.log.Warn("nowbridge: handler failed; answering 503 for the bridge to retry", "msg_id", id, "err", err)
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": msg})
}

// callHTTP runs a handler, turning a panic into an error to retry.
func callHTTP(ctx context.Context, log *slog.Logger, f func(context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("nowbridge: handler panicked", "panic", p)
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return f(ctx)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
