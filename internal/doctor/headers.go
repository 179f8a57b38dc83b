package doctor

// What every answer of the instance says in its headers: its clock (Date)
// and the rate-limit rule that applies to the integration user.

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

func (d *run) clock() {
	c := Check{ID: "clock", Title: "Clock skew (instance Date header)"}
	skew, n := d.rec.skew()
	switch {
	case n == 0:
		c.Status, c.Detail = Skip, "no answer from the instance carried a Date header"
	case abs(skew) > d.opt.MaxClockSkew:
		c.Status, c.Fix = Fail, FixClock
		c.Detail = fmt.Sprintf("the instance's clock is %s %s this host's (limit %s)", abs(skew).Round(time.Second), aheadBehind(skew), d.opt.MaxClockSkew)
	default:
		c.Status = Pass
		c.Detail = fmt.Sprintf("the instance's clock is %s %s this host's (limit %s)", abs(skew).Round(time.Second), aheadBehind(skew), d.opt.MaxClockSkew)
	}
	d.add(c)
}

func (d *run) rateLimit() {
	c := Check{ID: "rate_limit", Title: "Rate limit headers"}
	rl := d.rec.rateLimit()
	switch {
	case rl.responses == 0:
		c.Status, c.Detail = Skip, "no answer from the instance"
	case rl.limited > 0:
		c.Status, c.Fix = Fail, FixRateLimited
		c.Detail = fmt.Sprintf("%d answer(s) were 429 Too Many Requests%s", rl.limited, rl.describe())
	case rl.limit != "":
		c.Status = Pass
		c.Detail = "a rate limit rule applies" + rl.describe() + rl.suggest()
	default:
		c.Status, c.Detail = Pass, "none seen: no rate limit rule applies to this user"
	}
	d.add(c)
}

// recorder sees every answer from the instance: the Date header against the
// local clock, and the rate-limit headers.
type recorder struct {
	next http.RoundTripper
	now  func() time.Time

	mu        sync.Mutex
	skews     []time.Duration
	responses int
	limited   int
	limit     string
	reset     string
	rule      string
	retry     string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	local := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.responses++
	if t, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		r.skews = append(r.skews, t.Sub(local.Truncate(time.Second)))
	}
	if v := resp.Header.Get("X-RateLimit-Limit"); v != "" {
		r.limit = v
	}
	if v := resp.Header.Get("X-RateLimit-Reset"); v != "" {
		r.reset = v
	}
	if v := resp.Header.Get("X-RateLimit-Rule"); v != "" {
		r.rule = v
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		r.limited++
		r.retry = resp.Header.Get("Retry-After")
	}
	return resp, nil
}

// CloseIdleConnections lets snclient's Close reach the real transport.
func (r *recorder) CloseIdleConnections() {
	if c, ok := r.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// skew is the median of instance minus local time over all answers.
func (r *recorder) skew() (time.Duration, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.skews) == 0 {
		return 0, 0
	}
	s := slices.Clone(r.skews)
	slices.Sort(s)
	return s[len(s)/2], len(s)
}

type rateSeen struct {
	responses, limited        int
	limit, reset, rule, retry string
}

func (r *recorder) rateLimit() rateSeen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return rateSeen{r.responses, r.limited, r.limit, r.reset, r.rule, r.retry}
}

func (s rateSeen) describe() string {
	var parts []string
	if s.limit != "" {
		parts = append(parts, "X-RateLimit-Limit "+s.limit)
	}
	if n, err := strconv.ParseInt(s.reset, 10, 64); err == nil {
		parts = append(parts, "resets "+time.Unix(n, 0).UTC().Format(time.RFC3339))
	}
	if s.rule != "" {
		parts = append(parts, "rule "+s.rule)
	}
	if s.retry != "" {
		parts = append(parts, "Retry-After "+s.retry+"s")
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func (s rateSeen) suggest() string {
	n, err := strconv.ParseFloat(s.limit, 64)
	if err != nil || n <= 0 {
		return ""
	}
	return fmt.Sprintf("; keep BRIDGE_SN_RATE_LIMIT at or below %.3g requests/s (the rule's hourly count / 3600)", n/3600)
}
