package consume

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/snclient"
)

// Action is what the engine does with a handled message.
type Action int

// Actions.
const (
	// ActionAck: the message is done.
	ActionAck Action = iota
	// ActionRetry: hand the message back to JetStream with a delay
	// (NakWithDelay): the peer may accept it later.
	ActionRetry
	// ActionDeadLetter: store it in BRIDGE_DLQ and Term it; the same
	// message will fail the same way until a person changes something.
	ActionDeadLetter
	// ActionPause: the peer is refusing every call for a while (an open
	// circuit breaker): hand the message back and stop fetching until then.
	ActionPause
)

func (a Action) String() string {
	switch a {
	case ActionAck:
		return "ack"
	case ActionRetry:
		return "retry"
	case ActionDeadLetter:
		return "dead_letter"
	case ActionPause:
		return "pause"
	}
	return "unknown"
}

// Error is a failure its handler has classified. Build it with Permanent,
// RetryAfter or Pause; Status and Response describe the peer's answer, when
// there was one, for the dead letter and the retry reason.
type Error struct {
	Err    error
	Action Action        // ActionRetry, ActionDeadLetter or ActionPause
	Delay  time.Duration // ActionRetry: the peer's Retry-After; ActionPause: how long; 0 when unknown
	Hint   string        // what a person should do (a dead letter's Bridge-Dlq-Hint)
	// Status is the HTTP status the peer answered, 0 when none.
	Status int
	// Response is the peer's response body, kept on a dead letter.
	Response string
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Action.String()
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Permanent marks err as one retrying cannot cure: the message is
// dead-lettered with hint (what a person should change before `bridge dlq
// retry`).
func Permanent(err error, hint string) *Error {
	return &Error{Err: err, Action: ActionDeadLetter, Hint: hint}
}

// RetryAfter marks err as worth retrying, not before d (the peer's
// Retry-After; 0 leaves the delay to the engine's backoff).
func RetryAfter(err error, d time.Duration) *Error {
	return &Error{Err: err, Action: ActionRetry, Delay: d}
}

// Pause marks err as the peer refusing every call for d (an open circuit
// breaker; 0: the engine's default pause): the engine stops fetching for
// that long.
func Pause(err error, d time.Duration) *Error {
	return &Error{Err: err, Action: ActionPause, Delay: d}
}

// Decision is how the engine treats a handler's error.
type Decision struct {
	Action Action
	// Delay: ActionRetry, the least wait the peer asked for (0: backoff
	// alone decides); ActionPause, how long (0: the engine's default).
	Delay time.Duration
	// Reason labels retries in the pipelines' retries_total metrics:
	// rate_limited, server_error, network, auth, breaker_open, nats,
	// canceled or other.
	Reason   string
	Hint     string // ActionDeadLetter: what a person should do
	Status   int    // the peer's HTTP status, 0 when none
	Response string // the peer's response body
}

// Retry reasons.
const (
	ReasonRateLimited = "rate_limited"
	ReasonServerError = "server_error"
	ReasonNetwork     = "network"
	ReasonAuth        = "auth"
	ReasonBreakerOpen = "breaker_open"
	ReasonNATS        = "nats"
	ReasonCanceled    = "canceled"
	ReasonOther       = "other"
	// ReasonOrdering: handed back to wait behind an earlier message of the
	// same record that is waiting for its retry (set by the engine).
	ReasonOrdering = "ordering"
	// ReasonPaused: handed back because fetching is paused (set by the
	// engine).
	ReasonPaused = "paused"
)

// HintMaxPayload is the dead letter's hint for a message NATS cannot carry.
const HintMaxPayload = "the message is larger than the NATS server's max_payload: raise max_payload (server config) or make the record smaller, then `bridge dlq retry`"

// Classify decides what a handler's error means for its message. It is the
// one place that does: both pipelines' handlers return errors that are
// either classified already (*Error) or come from snclient, NATS or the
// network, and the engine acts on the Decision alone.
//
//   - nil: ack.
//   - *Error: as its handler said; a retry's reason comes from the
//     status it carries, else from the error it wraps.
//   - ServiceNow's circuit breaker open: pause for as long as it stays open.
//   - a failed token exchange or a 401: retried (reason auth): the
//     credentials are wrong or being rotated, the change itself is fine.
//   - what snclient.IsPermanent says cannot succeed (403, 404, 400, a data
//     policy, a field the table lacks): dead letter with snclient's hint.
//   - 429: retried after its Retry-After; 5xx, 408, 409, 425: retried.
//   - a message beyond NATS's max_payload: dead letter.
//   - NATS and JetStream failures, timeouts, network errors, the context
//     ending and anything unknown: retried.
func Classify(err error) Decision {
	if err == nil {
		return Decision{Action: ActionAck}
	}
	var ce *Error
	if errors.As(err, &ce) {
		return classified(ce)
	}
	var be *snclient.BreakerOpenError
	if errors.As(err, &be) {
		return Decision{Action: ActionPause, Delay: be.OpenFor, Reason: ReasonBreakerOpen}
	}
	if errors.Is(err, snclient.ErrBreakerOpen) {
		return Decision{Action: ActionPause, Reason: ReasonBreakerOpen}
	}
	status := serviceNowStatus(err)
	if errors.Is(err, snclient.ErrTokenExchange) || errors.Is(err, snclient.ErrUnauthorized) {
		return Decision{Action: ActionRetry, Reason: ReasonAuth, Hint: snclient.Hint(err), Status: status}
	}
	if snclient.IsPermanent(err) {
		return Decision{Action: ActionDeadLetter, Hint: snclient.Hint(err), Status: status}
	}
	var ae *snclient.APIError
	if errors.As(err, &ae) {
		return Decision{Action: ActionRetry, Delay: ae.RetryAfter, Reason: statusReason(ae.Status), Hint: ae.Hint, Status: ae.Status}
	}
	if errors.Is(err, snclient.ErrRateLimited) {
		return Decision{Action: ActionRetry, Reason: ReasonRateLimited}
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return Decision{Action: ActionDeadLetter, Hint: HintMaxPayload}
	}
	return Decision{Action: ActionRetry, Reason: transientReason(err)}
}

func classified(ce *Error) Decision {
	d := Decision{Action: ce.Action, Delay: ce.Delay, Hint: ce.Hint, Status: ce.Status, Response: ce.Response}
	inner := Classify(ce.Err)
	if ce.Err == nil {
		inner = Decision{Reason: ReasonOther}
	}
	if d.Hint == "" {
		d.Hint = inner.Hint
	}
	if d.Status == 0 {
		d.Status = inner.Status
	}
	switch {
	case ce.Action == ActionPause:
		d.Reason = ReasonBreakerOpen
	case ce.Status != 0:
		d.Reason = statusReason(ce.Status)
	default:
		d.Reason = inner.Reason
	}
	if d.Action == ActionRetry && d.Delay == 0 {
		d.Delay = inner.Delay
	}
	return d
}

// statusReason names a retried HTTP answer.
func statusReason(status int) string {
	switch {
	case status == 429:
		return ReasonRateLimited
	case status >= 500:
		return ReasonServerError
	case status == 408:
		return ReasonNetwork
	}
	return ReasonOther
}

// serviceNowStatus is the status of ServiceNow's answer in err's chain; a
// token endpoint's answer is not the change's and reports 0.
func serviceNowStatus(err error) int {
	var te *snclient.TokenError
	if errors.As(err, &te) {
		return 0
	}
	var ae *snclient.APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// natsTransient are the NATS client's failures that pass with time (a
// reconnect, a leader election, a slow server).
var natsTransient = []error{
	nats.ErrTimeout, nats.ErrConnectionClosed, nats.ErrConnectionDraining, nats.ErrConnectionReconnecting,
	nats.ErrDisconnected, nats.ErrNoServers, nats.ErrNoResponders,
}

func transientReason(err error) string {
	var jsErr jetstream.JetStreamError
	if errors.As(err, &jsErr) {
		return ReasonNATS
	}
	for _, e := range natsTransient {
		if errors.Is(err, e) {
			return ReasonNATS
		}
	}
	if errors.Is(err, context.Canceled) {
		return ReasonCanceled
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) {
		return ReasonNetwork
	}
	return ReasonOther
}
