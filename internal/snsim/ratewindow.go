package snsim

import (
	"fmt"
	"time"
)

// SetRateLimitWindow makes the rate limit rules count per window of d
// instead of per hour (0 restores the hour), with windows aligned to
// multiples of d and X-RateLimit-Reset and Retry-After following. A test can
// then live through many windows in seconds, e.g. a rule of 15 per 1 s
// window is a "15 requests per second" rule with every header a real
// hourly rule sends. X-RateLimit-Reset is whole seconds, so d must be too.
// The counters restart.
func (s *Server) SetRateLimitWindow(d time.Duration) error {
	if d < 0 || d%time.Second != 0 {
		return fmt.Errorf("snsim: rate limit window %s: want a positive whole number of seconds (or 0 for an hour)", d)
	}
	s.knobMu.Lock()
	s.limits.window = d
	s.limits.counts = map[string]int{}
	s.knobMu.Unlock()
	return nil
}

// period is the rules' counting window.
func (l *limiter) period() time.Duration {
	if l.window > 0 {
		return l.window
	}
	return time.Hour
}
