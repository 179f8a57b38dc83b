package outbound

import "errors"

// Temporary until internal/snclient lands: its typed errors are matched here.

func statusOf(err error) int {
	var s interface{ HTTPStatus() int }
	if errors.As(err, &s) {
		return s.HTTPStatus()
	}
	return 0
}

func hintOf(error) string       { return "" }
func isBreakerOpen(error) bool  { return false }
func isRateLimited(error) bool  { return false }
func isNotFound(err error) bool { return statusOf(err) == 404 }
