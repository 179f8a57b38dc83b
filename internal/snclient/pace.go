package snclient

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ServiceNow's rate limit rules (sys_rate_limit_rules) allow a user a count
// of requests per hour on a REST resource, and every answer a rule matches
// names the rule (X-RateLimit-Rule), its count (X-RateLimit-Limit) and the
// Unix second its window resets (X-RateLimit-Reset). The instance does not
// say how much of the count is left, so the client counts what it sends.
// The pacer learns each rule from those headers and spends what is left of
// the window evenly until the reset: requests are spaced so that the last
// one of a window leaves half a gap before the reset and the first of the
// next comes half a gap after it, which absorbs network delay and small
// clock differences at both ends. A client idle for a while may catch up
// (what is left is spread over less time); a busy one sends at the rule's
// rate, not faster. Config.RateLimit (BRIDGE_SN_RATE_LIMIT) caps the whole
// on top.
const (
	// headroom is the part of a rule's count left unspent, in whole
	// requests: none under 100 requests per window, 1 % above.
	headroom = 0.01
	// probeWait: when a window ended before its length was known, one
	// request (the probe) finds the next reset while the others wait for
	// its answer; if none comes within probeWait another request probes.
	probeWait = time.Second
	// permitTTL: a Share permit not used by a request within this long is
	// dropped.
	permitTTL = 2 * time.Second
	// edge is the least time kept between a reset and the requests on
	// either side of it (at most an eighth of the window): a request sent
	// just before the reset but counted after it (network delay, a timer
	// late on a busy host) would take one of the next window's count.
	edge = 100 * time.Millisecond
)

// rateInfo is what one answer's headers say about the rule it fell under.
type rateInfo struct {
	rule  string // X-RateLimit-Rule; "limit:<n>" when the header is absent
	limit int
	reset time.Time
}

// parseRateHeaders reads X-RateLimit-Limit, -Reset and -Rule. ok is false
// unless both the limit and the reset are there and sane.
func parseRateHeaders(h http.Header) (rateInfo, bool) {
	limit, err := strconv.Atoi(strings.TrimSpace(h.Get("X-RateLimit-Limit")))
	if err != nil || limit <= 0 {
		return rateInfo{}, false
	}
	reset, err := strconv.ParseInt(strings.TrimSpace(h.Get("X-RateLimit-Reset")), 10, 64)
	if err != nil || reset <= 0 || reset > 1e11 {
		return rateInfo{}, false
	}
	id := strings.TrimSpace(h.Get("X-RateLimit-Rule"))
	if id == "" {
		id = "limit:" + strconv.Itoa(limit)
	}
	return rateInfo{rule: id, limit: limit, reset: time.Unix(reset, 0)}, true
}

// rule is what the client knows of one rate limit rule. Its methods are
// the pacing decisions, pure functions of the state and the time given.
type rule struct {
	id     string
	limit  int           // requests per window
	reset  time.Time     // end of the window used counts
	window time.Duration // the shortest step between resets seen; 0 until two were
	seen   time.Time     // the latest reset an answer gave
	// assumed is the window until one is learned (Config.RateWindow).
	assumed time.Duration
	used    int // requests counted in the window
	// next is the earliest start of the next request (even spacing).
	next time.Time
	// blocked: a 429 asked for no request before this.
	blocked time.Time
	// others estimates requests per window others (another process with
	// the same user) spend under the rule, from a 429's timing; it halves
	// after each window without a 429.
	others  int
	limited bool // a 429 came in the current window
	// probing: the window ended while its length was unknown and one
	// request (sent at probeAt) is finding the next reset.
	probing bool
	probeAt time.Time
	gen     uint64 // bumped by a 429: bookings made before are redone
}

// newRule learns a rule from its first answer. The client may start in the
// middle of a window that others (an earlier run, another replica) have
// spent from; not knowing how much, it assumes the rule's even rate so far
// over assumed (Config.RateWindow, an hour on ServiceNow) and so paces at
// that rate from the start.
func newRule(in rateInfo, assumed time.Duration, now time.Time) *rule {
	r := &rule{id: in.rule, limit: in.limit, reset: in.reset, seen: in.reset, assumed: assumed}
	left := min(max(float64(in.reset.Sub(now))/float64(assumed), 0), 1)
	r.used = max(int(math.Ceil(float64(r.budget())*(1-left))), 1) // the answer's own request counts
	r.next = r.after(now, r.budget()-r.used+1)
	return r
}

// budget is what the client may spend per window.
func (r *rule) budget() int {
	return max(r.limit-int(float64(r.limit)*headroom)-r.others, 1)
}

// margin is the time kept between the reset and the requests on either
// side of it: half a gap of an evenly spent window, at least edge.
func (r *rule) margin() time.Duration {
	if r.window <= 0 {
		return edge
	}
	return min(max(r.window/time.Duration(2*r.budget()), edge), r.window/8)
}

// after is the next start once a request started at t with rem requests of
// the window left, that one included: the rem-1 others spread evenly over
// the rest of the window, the last a margin before its end; after the
// last, a margin into the next window.
func (r *rule) after(t time.Time, rem int) time.Time {
	m := r.margin()
	end := r.reset.Add(m)
	last := r.reset.Add(-m)
	if rem <= 1 || !t.Before(last) {
		return end
	}
	gap := time.Duration(float64(r.reset.Sub(t)) / (float64(rem) - 0.5)) // half a gap before the reset
	if gap/2 < m {
		gap = last.Sub(t) / time.Duration(rem-1)
	}
	return t.Add(gap)
}

// advance moves the state to the window holding t (the window's length is
// known and t is at or past the reset).
func (r *rule) advance(t time.Time) {
	n := int(t.Sub(r.reset)/r.window) + 1
	r.reset = r.reset.Add(time.Duration(n) * r.window)
	r.used = 0
	if r.limited {
		n-- // the window with the 429 does not count towards the decay
	}
	r.others >>= min(n, 16)
	r.limited = false
}

// reserve books the start of one request not before now. probe: the
// window ended with its length unknown; the request finds the next reset.
// ok is false while another request probes: try again when that one is
// answered.
func (r *rule) reserve(now time.Time) (start time.Time, probe, ok bool) {
	t := latest(now, r.next, r.blocked)
	for {
		if !t.Before(r.reset) {
			if r.window <= 0 {
				if r.probing && now.Sub(r.probeAt) < probeWait {
					return time.Time{}, false, false
				}
				r.probing, r.probeAt = true, t
				return t, true, true
			}
			r.advance(t)
		}
		rem := r.budget() - r.used
		if rem <= 0 {
			t = latest(t, r.reset.Add(r.margin()))
			continue
		}
		r.used++
		r.next = r.after(t, rem)
		return t, false, true
	}
}

// unbook takes back a booking of the window ending at window that was not
// sent.
func (r *rule) unbook(window time.Time, probe bool) {
	if probe {
		r.probing = false
	}
	if r.reset.Equal(window) && r.used > 0 {
		r.used--
	}
}

// learn folds in an answer's headers for this rule. counted says whether
// its request was booked under this rule; if not, it is counted now.
// changed reports a new count or window.
func (r *rule) learn(in rateInfo, counted bool, now time.Time) (changed bool) {
	if in.limit != r.limit {
		r.limit, changed = in.limit, true
	}
	if in.reset.After(r.seen) {
		// Windows follow each other, so the shortest step between two
		// resets is the window (a longer one spans idle windows).
		if d := in.reset.Sub(r.seen); !r.seen.IsZero() && (r.window <= 0 || d < r.window) {
			r.window, changed = d, true
		}
		r.seen = in.reset
	}
	switch {
	case in.reset.After(r.reset):
		// The instance is in a later window than the state: a window ended
		// with its length unknown (the probe's answer), a request sent
		// before the reset was counted after it, or the state's window was
		// too long.
		r.reset, r.used, r.probing = in.reset, 1, false
		if !r.limited {
			r.others >>= 1
		}
		r.limited = false
		r.next = latest(r.next, r.after(now, r.budget()))
		return changed
	case in.reset.Before(r.reset):
		// An answer from a window the state has left behind (the request
		// was sent before the reset, or the state books ahead), or the rule
		// was changed to another window: only the latter moves the state.
		if !in.reset.After(now) || r.window > 0 && r.reset.Sub(in.reset)%r.window == 0 {
			return changed
		}
		r.reset, changed = in.reset, true
	}
	if !counted {
		r.used++
	}
	return changed
}

// rejected handles a 429 under this rule (after learn): no request before
// the Retry-After (else the reset), the window is spent, and what others
// spend is estimated from how early in the window it came: the instance
// counted limit requests, the client sent used of them.
func (r *rule) rejected(in rateInfo, retryAfter time.Duration, now time.Time) {
	until := in.reset
	if retryAfter > 0 {
		until = now.Add(retryAfter)
	}
	r.blocked = latest(r.blocked, until)
	r.next = r.blocked
	r.gen++
	if !in.reset.Equal(r.reset) {
		return // a window the state has left: nothing to learn about this one
	}
	if r.window > 0 && !r.limited {
		if f := 1 - float64(r.reset.Sub(now))/float64(r.window); f >= 0.05 {
			est := int(math.Round(float64(r.limit-r.used) / f))
			r.others = min(max(r.others, est), r.limit-1)
		}
	}
	r.used = max(r.used, r.budget())
	r.limited = true
}

// remaining is the client's estimate of what is left of the window.
func (r *rule) remaining(now time.Time) int {
	if !now.Before(r.reset) {
		return r.budget()
	}
	return max(r.budget()-r.used, 0)
}

// perSecond is the rate the rule allows from now: what is left spread to
// the reset, or a full window's budget when the window is over.
func (r *rule) perSecond(now time.Time) float64 {
	if rem := r.remaining(now); now.Before(r.reset) && rem > 0 {
		return float64(rem) / r.reset.Sub(now).Seconds()
	}
	w := r.window
	if w <= 0 {
		w = r.assumed
	}
	return float64(r.budget()) / w.Seconds()
}

func latest(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if t.After(m) {
			m = t
		}
	}
	return m
}

// pacer paces the client's requests: the cap (Config.RateLimit) for all,
// and for each resource the rule its answers name.
type pacer struct {
	cap    *rate.Limiter
	off    bool          // Config.Unpaced: only the cap and Retry-After
	window time.Duration // Config.RateWindow
	m      *metrics
	log    *slog.Logger

	mu        sync.Mutex
	rules     map[string]*rule
	turns     map[string]chan struct{} // by rule: held by the request booking
	resources map[string]string        // "GET /now/table/incident" -> rule id; "" when its answers name none
	latest    string                   // the rule learned last: a resource not yet answered is paced under it
	changed   chan struct{}            // closed (and replaced) when a probe is answered

	permits   []time.Time // Share.Wait calls not yet used by a request
	fgWaiting int         // other requests waiting for the budget now
	lastFG    time.Time   // when one last started
}

func newPacer(cfg Config, m *metrics, log *slog.Logger) *pacer {
	p := &pacer{
		cap: rate.NewLimiter(rate.Inf, 0), off: cfg.Unpaced, window: cfg.RateWindow, m: m, log: log,
		rules: map[string]*rule{}, turns: map[string]chan struct{}{}, resources: map[string]string{}, changed: make(chan struct{}),
	}
	if cfg.RateLimit > 0 {
		p.cap = rate.NewLimiter(rate.Limit(cfg.RateLimit), cfg.RateBurst)
	}
	return p
}

// ticket is one request's booking.
type ticket struct {
	resource   string
	rule       string    // the rule it was booked under; "" unpaced
	window     time.Time // the reset of the window it was counted in
	probe      bool
	gen        uint64
	background bool
	answered   bool
}

// resourceOf names a call as rate limit rules do: "PATCH /now/table/incident".
func resourceOf(cl *call) string {
	if strings.HasPrefix(cl.path, attachmentPath) {
		// One resource for the Attachment API's paths, whatever the sys_id.
		return cl.method + " /now/attachment"
	}
	p := strings.TrimPrefix(cl.path, "/api")
	if cl.sysID != "" {
		p = strings.TrimSuffix(p, "/"+cl.sysID)
	}
	return cl.method + " " + p
}

// heldBack is a request the pacer would start only after the caller's
// deadline (or the call's RetryMaxElapsed): it fails at once instead.
type heldBack struct {
	rule         string
	limit        int
	start, reset time.Time
}

func (e *heldBack) Error() string {
	return fmt.Sprintf("rate limit rule %s (%d requests per window) allows the next request at %s",
		e.rule, e.limit, e.start.UTC().Format(time.RFC3339))
}

// apiError presents it as the 429 it avoids, so callers retry it as one,
// after the wait.
func (e *heldBack) apiError(cl *call, now time.Time) *APIError {
	return &APIError{Status: http.StatusTooManyRequests, Method: cl.method, Table: cl.table, SysID: cl.sysID,
		Message: "Rate limit exceeded (held back by the client, not sent)",
		Detail: fmt.Sprintf("%s, later than the caller can wait; the rule's window resets at %s",
			e.Error(), e.reset.UTC().Format(time.RFC3339)),
		Hint: HintRateLimitHeld, RetryAfter: max(e.start.Sub(now), time.Second), RateLimitRule: e.rule}
}

// wait blocks until the request may start: the cap, then the rule its
// resource falls under (or, for a resource not yet answered, the rule
// learned last). A start after deadline is a *heldBack at once.
func (p *pacer) wait(ctx context.Context, resource string, deadline time.Time) (*ticket, error) {
	began := time.Now()
	tk := &ticket{resource: resource}
	p.mu.Lock()
	tk.background = p.takePermit(began)
	if !tk.background {
		p.fgWaiting++
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		if !tk.background {
			p.fgWaiting--
			p.lastFG = time.Now()
		}
		p.mu.Unlock()
		p.m.pacing.Observe(time.Since(began).Seconds())
	}()
	if err := p.cap.Wait(ctx); err != nil {
		return nil, err
	}
	if p.off {
		return tk, nil
	}
	for {
		p.mu.Lock()
		id, known := p.resources[resource]
		if !known {
			id = p.latest
		}
		r, turn := p.rules[id], p.turns[id]
		p.mu.Unlock()
		if r == nil {
			tk.rule = ""
			return tk, nil
		}
		// One request of a rule at a time books and waits for its start, so
		// each booking sees what the answers before it gave back (a 503 or
		// a 401 was not counted) and what a 429 took.
		select {
		case turn <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		done, err := p.book(ctx, tk, id, r, deadline)
		<-turn
		if err != nil {
			return nil, err
		}
		if done {
			return tk, nil
		}
	}
}

// book books tk under rule r and waits for its start, holding r's turn.
// done is false when tk must book again: another request probes (its
// answer is waited for), or a 429 came meanwhile.
func (p *pacer) book(ctx context.Context, tk *ticket, id string, r *rule, deadline time.Time) (done bool, err error) {
	p.mu.Lock()
	now := time.Now()
	at, probe, ok := r.reserve(now)
	tk.rule, tk.window, tk.probe, tk.gen = id, r.reset, probe, r.gen
	changed := p.changed
	p.m.rateRemaining.WithLabelValues(id).Set(float64(r.remaining(now)))
	if ok && !deadline.IsZero() && at.After(deadline) {
		r.unbook(tk.window, tk.probe)
		p.mu.Unlock()
		return false, &heldBack{rule: id, limit: r.limit, start: at, reset: r.reset}
	}
	p.mu.Unlock()
	if !ok { // another request probes: wait for its answer
		return false, sleepOr(ctx, probeWait, changed)
	}
	if err := sleepOr(ctx, at.Sub(now), nil); err != nil {
		p.mu.Lock()
		r.unbook(tk.window, tk.probe)
		p.mu.Unlock()
		return false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.gen != tk.gen { // a 429 came meanwhile: book again after its wait
		r.unbook(tk.window, tk.probe)
		return false, nil
	}
	if cutoff := tk.window.Add(-edge / 2); at.Before(cutoff) && !time.Now().Before(cutoff) {
		// Woken too late (a busy host): sent now, it would be counted in
		// the next window. Book it there.
		r.unbook(tk.window, tk.probe)
		return false, nil
	}
	return true, nil
}

// sleepOr waits d, or until wake is closed, or ctx ends.
func sleepOr(ctx context.Context, d time.Duration, wake <-chan struct{}) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// answer learns from the answer to a booked request: its status and
// headers, and for a 429 how long it asked to wait.
func (p *pacer) answer(tk *ticket, status int, h http.Header, retryAfter time.Duration) {
	if tk == nil || p.off {
		return
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	tk.answered = true
	in, ok := parseRateHeaders(h)
	if !ok {
		// An answer without rate limit headers was not counted under a
		// rule (a 401, a request shed with 503 or a semaphore 429 comes
		// before the rules are looked at): the booking goes back to the
		// budget. A success without them says no rule matches the resource
		// (a deleted rule, or one guessed from another resource).
		if r := p.rules[tk.rule]; r != nil {
			r.unbook(tk.window, false)
		}
		if status >= 200 && status < 300 && h.Get("X-RateLimit-Limit") == "" {
			if id := p.resources[tk.resource]; id != "" || tk.rule != "" {
				p.log.Debug("servicenow rate limit: no rule on this resource", "resource", tk.resource)
			}
			p.resources[tk.resource] = ""
		}
		p.endProbe(tk)
		return
	}
	r := p.rules[in.rule]
	counted := tk.rule == in.rule
	if !counted && tk.rule != "" {
		if old := p.rules[tk.rule]; old != nil {
			old.unbook(tk.window, tk.probe)
		}
	}
	learned := r == nil
	if learned {
		r = newRule(in, p.window, now)
		p.rules[in.rule] = r
		p.turns[in.rule] = make(chan struct{}, 1)
	}
	if p.resources[tk.resource] != in.rule {
		p.log.Info("servicenow rate limit rule", "resource", tk.resource, "rule", in.rule, "limit", in.limit,
			"resets", in.reset.UTC().Format(time.RFC3339), "new", learned)
		p.resources[tk.resource] = in.rule
	}
	p.latest = in.rule
	wasProbing, changed := r.probing, false
	if !learned {
		if changed = r.learn(in, counted, now); changed {
			p.log.Info("servicenow rate limit rule changed", "rule", in.rule, "limit", r.limit, "window", r.window,
				"resets", r.reset.UTC().Format(time.RFC3339))
		}
	}
	if status == http.StatusTooManyRequests {
		r.rejected(in, retryAfter, now)
		p.log.Warn("servicenow rate limit rule exhausted: pausing until it allows again", "rule", in.rule,
			"resource", tk.resource, "limit", r.limit, "until", r.blocked.UTC().Format(time.RFC3339Nano), "others_per_window", r.others)
	}
	p.m.rateLimit.WithLabelValues(in.rule).Set(float64(r.limit))
	p.m.rateWindow.WithLabelValues(in.rule).Set(r.window.Seconds())
	p.m.rateRemaining.WithLabelValues(in.rule).Set(float64(r.remaining(now)))
	if tk.probe {
		r.probing = false
	}
	// Wake requests waiting for a probe's answer, or booked under what
	// this answer changed.
	if wasProbing || tk.probe || learned || changed || status == http.StatusTooManyRequests {
		p.signal()
	}
}

// finish closes a booking whatever happened; one never answered (network
// error, open breaker, caller gone) keeps its count: it may have reached
// the instance.
func (p *pacer) finish(tk *ticket) {
	if tk == nil || tk.answered || !tk.probe {
		return
	}
	p.mu.Lock()
	p.endProbe(tk)
	p.mu.Unlock()
}

func (p *pacer) endProbe(tk *ticket) {
	if !tk.probe {
		return
	}
	if r := p.rules[tk.rule]; r != nil {
		r.probing = false
	}
	p.signal()
}

func (p *pacer) signal() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// takePermit uses a Share permit for the request starting now.
func (p *pacer) takePermit(now time.Time) bool {
	for len(p.permits) > 0 {
		at := p.permits[0]
		p.permits = p.permits[1:]
		if now.Sub(at) < permitTTL {
			return true
		}
	}
	return false
}

// load is the rate the client may send at from now (the cap and the
// tightest rule learned; +Inf when neither limits it) and whether callers
// other than the shares are busy: waiting for the budget now, or one
// started within the last second (or two gaps at that rate).
func (p *pacer) load(now time.Time) (perSecond float64, busy bool) {
	perSecond = math.Inf(1)
	if l := p.cap.Limit(); l != rate.Inf {
		perSecond = float64(l)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.off {
		for _, r := range p.rules {
			perSecond = min(perSecond, r.perSecond(now))
		}
	}
	recent := time.Second
	if perSecond > 0 && !math.IsInf(perSecond, 1) {
		recent = max(recent, time.Duration(2*float64(time.Second)/perSecond))
	}
	return perSecond, p.fgWaiting > 0 || now.Sub(p.lastFG) < recent
}

func (p *pacer) addPermit(now time.Time) {
	p.mu.Lock()
	p.permits = append(p.permits, now)
	p.mu.Unlock()
}

// Share is a Limiter for a background caller of the client, such as
// reconcile: while the client's other callers (the writeback) are busy it
// lets its caller take at most its fraction of the rate the client may
// send at (the learned rules and the cap); while they are idle, all of it.
// Wait before each request; the request is then paced with the others.
type Share struct {
	p        *pacer
	fraction float64
	lim      *rate.Limiter
}

// Share returns a Limiter giving its caller at most fraction (0 < fraction
// ≤ 1) of the client's rate while other callers are busy.
func (c *Client) Share(fraction float64) *Share {
	fraction = min(max(fraction, 0.01), 1)
	return &Share{p: c.pace, fraction: fraction, lim: rate.NewLimiter(rate.Inf, 1)}
}

// Wait blocks until the share allows one more request.
func (s *Share) Wait(ctx context.Context) error {
	perSecond, busy := s.p.load(time.Now())
	if busy && !math.IsInf(perSecond, 1) {
		s.lim.SetLimit(rate.Limit(max(perSecond*s.fraction, 1e-3)))
		if err := s.lim.Wait(ctx); err != nil {
			return err
		}
	} else {
		s.lim.SetLimit(rate.Inf)
	}
	s.p.addPermit(time.Now())
	return nil
}
