package nowbridge

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidChange is wrapped by every error Publish returns for a change
// the bridge could never write back; the message says what is wrong.
var ErrInvalidChange = errors.New("invalid app change")

// ErrVersionNotNewer is wrapped by Publish's error for an app-supplied
// version lower than one this client already published for the same
// record, or equal to it with other content. The bridge would answer it with
// a stale result and write nothing.
var ErrVersionNotNewer = errors.New("version is not newer than the one already published")

// permanentError is a handler failure no retry can cure.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks a handler's error as one no retry can cure (the message
// can never be applied as it is). Consume and Results then terminate the
// message (JetStream Term) instead of retrying it, and log it; the HTTP
// receiver answers 422, which makes the bridge dead-letter it. Any other
// error is retried with backoff.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// retryAfterError asks for the next attempt after a given delay.
type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter marks a handler's error as temporary with a known wait (the
// app's database is in maintenance for a minute): the message comes back
// after d (at most the consumer's RetryMax) instead of the backoff's delay,
// and the HTTP receiver answers 503 with Retry-After, which the bridge
// honours up to its own retry cap.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{err: err, after: d}
}

func retryAfterOf(err error) (time.Duration, bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.after, true
	}
	return 0, false
}

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidChange, fmt.Sprintf(format, a...))
}
