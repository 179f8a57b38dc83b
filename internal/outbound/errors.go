package outbound

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/nowbridge/nowbridge/internal/snclient"
)

// errClass is how the consumer treats a failed change.
type errClass struct {
	permanent   bool          // dead letter
	breakerOpen bool          // pause the consumer
	pause       time.Duration // how long the breaker stays open, when known
	reason      string        // retry metric label
}

// classify: ServiceNow's 400/403/404/422 and undecodable or unmappable
// changes are permanent; 429, 5xx, network errors, an open breaker and
// NATS trouble are retried with backoff, the message staying in JetStream.
func classify(err error) errClass {
	var pe *permanentError
	if errors.As(err, &pe) {
		return errClass{permanent: true}
	}
	if d, ok := breakerPause(err); ok {
		return errClass{breakerOpen: true, pause: d, reason: "breaker_open"}
	}
	if errors.Is(err, snclient.ErrInvalidQuery) {
		return errClass{permanent: true} // a field ServiceNow would silently drop
	}
	if isAuth(err) && statusOf(err) != 403 {
		// Credentials or the token endpoint: an operator fixes them, the
		// change itself is fine.
		return errClass{reason: "auth"}
	}
	status := statusOf(err)
	switch {
	case status == 429 || isRateLimited(err):
		return errClass{reason: "rate_limited"}
	case status >= 500:
		return errClass{reason: "server_error"}
	case status == 400 || status == 403 || status == 404 || status == 422:
		return errClass{permanent: true}
	case status != 0:
		// 401 (credentials being fixed), 409 and the like: worth a retry.
		return errClass{reason: "other"}
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
		return errClass{reason: "network"}
	}
	return errClass{reason: "other"}
}

type dlqInfo struct {
	status int
	reason string
	hint   string
}

func describe(err error) dlqInfo {
	info := dlqInfo{status: statusOf(err), reason: err.Error(), hint: hintOf(err)}
	return info
}
