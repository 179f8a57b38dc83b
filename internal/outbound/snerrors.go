package outbound

import (
	"errors"
	"time"

	"github.com/nowbridge/nowbridge/internal/snclient"
)

// statusOf is the HTTP status of a ServiceNow answer in err's chain (0 when
// no answer came). A failed token exchange is not the change's fault: it
// reports 0 so it is retried, never dead-lettered.
func statusOf(err error) int {
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

func hintOf(err error) string      { return snclient.Hint(err) }
func isRateLimited(err error) bool { return errors.Is(err, snclient.ErrRateLimited) }
func isNotFound(err error) bool    { return errors.Is(err, snclient.ErrNotFound) }
func isAuth(err error) bool {
	return errors.Is(err, snclient.ErrTokenExchange) || errors.Is(err, snclient.ErrUnauthorized)
}

// breakerPause reports whether the client's circuit breaker refused the
// call, and for how long it stays open.
func breakerPause(err error) (time.Duration, bool) {
	var be *snclient.BreakerOpenError
	if errors.As(err, &be) {
		return be.OpenFor, true
	}
	return 0, errors.Is(err, snclient.ErrBreakerOpen)
}
