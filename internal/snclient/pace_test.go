package snclient

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// t0 is a whole second: windows in these tests start there.
var t0 = time.Unix(1_800_000_000, 0)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func dur(ns float64) time.Duration { return time.Duration(ns) }

func TestParseRateHeaders(t *testing.T) {
	reset := strconv.FormatInt(t0.Unix(), 10)
	cases := []struct {
		name    string
		headers map[string]string
		want    rateInfo
		ok      bool
	}{
		{"all three", map[string]string{"X-RateLimit-Limit": "5000", "X-RateLimit-Reset": reset, "X-RateLimit-Rule": "abc"},
			rateInfo{rule: "abc", limit: 5000, reset: t0}, true},
		{"no rule id: the limit names it", map[string]string{"X-RateLimit-Limit": " 15 ", "X-RateLimit-Reset": reset},
			rateInfo{rule: "limit:15", limit: 15, reset: t0}, true},
		{"no reset: nothing to pace by", map[string]string{"X-RateLimit-Limit": "15", "X-RateLimit-Rule": "abc"}, rateInfo{}, false},
		{"no limit", map[string]string{"X-RateLimit-Reset": reset, "X-RateLimit-Rule": "abc"}, rateInfo{}, false},
		{"zero limit", map[string]string{"X-RateLimit-Limit": "0", "X-RateLimit-Reset": reset}, rateInfo{}, false},
		{"reset in milliseconds is not Unix seconds", map[string]string{"X-RateLimit-Limit": "5", "X-RateLimit-Reset": strconv.FormatInt(t0.UnixMilli(), 10)}, rateInfo{}, false},
		{"garbage", map[string]string{"X-RateLimit-Limit": "lots", "X-RateLimit-Reset": "soon"}, rateInfo{}, false},
		{"none (a semaphore 429)", nil, rateInfo{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.headers {
				h.Set(k, v)
			}
			got, ok := parseRateHeaders(h)
			if ok != tc.ok || got.rule != tc.want.rule || got.limit != tc.want.limit || !got.reset.Equal(tc.want.reset) {
				t.Errorf("got %+v %v, want %+v %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestRule_Budget: 1 % of the count is kept back in whole requests, and
// what others spend is left to them.
func TestRule_Budget(t *testing.T) {
	for _, tc := range []struct {
		limit, others, want int
	}{
		{15, 0, 15}, {99, 0, 99}, {100, 0, 99}, {5000, 0, 4950}, {60, 40, 20}, {10, 10, 1},
	} {
		r := &rule{limit: tc.limit, others: tc.others}
		if got := r.budget(); got != tc.want {
			t.Errorf("limit %d, others %d: budget %d, want %d", tc.limit, tc.others, got, tc.want)
		}
	}
}

// TestRule_ReserveSpacesAWindowEvenly: requests asking at once get starts
// a gap apart, the first a margin after the window's start and the last a
// margin before its end — half a gap, at least edge (100 ms) — and the next
// go into the next window.
func TestRule_ReserveSpacesAWindowEvenly(t *testing.T) {
	cases := []struct {
		name   string
		limit  int
		window time.Duration
		asks   int
		want   []time.Duration // starts relative to t0 (the window's start); nil: check first, gap and last only
		margin time.Duration
		gap    time.Duration
	}{
		{"15 per second: the edge margin", 15, time.Second, 16, nil, edge, (time.Second - 2*edge) / 14},
		{"4 per second: half a gap", 4, time.Second, 6, []time.Duration{ms(125), ms(375), ms(625), ms(875), ms(1125), ms(1375)}, ms(125), ms(250)},
		{"5000 per hour keeps 50 back", 5000, time.Hour, 4951, nil, time.Hour / 9900, time.Hour / 4950},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &rule{limit: tc.limit, window: tc.window, reset: t0.Add(tc.window), seen: t0.Add(tc.window)}
			r.next = t0.Add(r.margin())
			var starts []time.Time
			for range tc.asks {
				at, probe, ok := r.reserve(t0)
				if !ok || probe {
					t.Fatalf("reserve: ok %v probe %v with the window known", ok, probe)
				}
				starts = append(starts, at)
			}
			for i, w := range tc.want {
				if got := starts[i].Sub(t0); (got - w).Abs() > time.Microsecond {
					t.Errorf("start %d at %v, want %v", i, got, w)
				}
			}
			if first := starts[0].Sub(t0); (first - tc.margin).Abs() > time.Millisecond {
				t.Errorf("first start %v into the window, want %v", first, tc.margin)
			}
			budget := r.budget()
			last := starts[budget-1]
			if left := t0.Add(tc.window).Sub(last); (left - tc.margin).Abs() > time.Millisecond {
				t.Errorf("last start of the window %v before its end, want %v", left, tc.margin)
			}
			for i := 1; i < budget; i++ {
				if d := starts[i].Sub(starts[i-1]); (d - tc.gap).Abs() > time.Millisecond {
					t.Fatalf("gap %d = %v, want %v", i, d, tc.gap)
				}
			}
			if over := starts[budget]; (over.Sub(t0) - tc.window - tc.margin).Abs() > time.Millisecond {
				t.Errorf("request %d of a window of %d starts at %v, want a margin into the next window", budget+1, budget, over.Sub(t0))
			}
		})
	}
}

// TestRule_ReserveCatchesUpAfterIdle: what is left is spread over what is
// left of the window, so after idling the client may go faster than the
// rule's average, never past the budget.
func TestRule_ReserveCatchesUpAfterIdle(t *testing.T) {
	r := &rule{limit: 10, window: 10 * time.Second, reset: t0.Add(10 * time.Second), seen: t0.Add(10 * time.Second)}
	now := t0.Add(5 * time.Second) // half the window gone, nothing sent
	var starts []time.Time
	for range 11 {
		at, _, _ := r.reserve(now)
		starts = append(starts, at)
	}
	if !starts[0].Equal(now) {
		t.Errorf("after idling the first request waits %v", starts[0].Sub(now))
	}
	if gap := starts[1].Sub(starts[0]); gap >= time.Second || gap < 400*time.Millisecond {
		t.Errorf("gap %v; want 10 requests spread over the 5 s left (≈ 0.53 s)", gap)
	}
	if starts[9].After(t0.Add(10*time.Second)) || !starts[10].After(t0.Add(10*time.Second)) {
		t.Errorf("the 10th starts at %v and the 11th at %v; want the 10th inside the window and the 11th after it", starts[9].Sub(t0), starts[10].Sub(t0))
	}
}

// TestNewRule_AssumesTheWindowSoFarWasSpentEvenly: learned mid-window, a
// rule is paced at its average rate, not at what is left over what is left.
func TestNewRule_AssumesTheWindowSoFarWasSpentEvenly(t *testing.T) {
	cases := []struct {
		name     string
		limit    int
		left     time.Duration // to the reset
		assumed  time.Duration
		wantUsed int
		wantNext time.Duration // after now
	}{
		{"half an hour left of 3600/h", 3600, 30 * time.Minute, time.Hour, 1782, dur(float64(30*time.Minute) / 1782.5)},
		{"a window just begun", 60, 20 * time.Second, 20 * time.Second, 1, dur(float64(20*time.Second) / 59.5)},
		{"0.4 s left of what may be an hour: wait for the reset", 15, 400 * time.Millisecond, time.Hour, 15, 400*time.Millisecond + edge},
		{"reset further than the window assumed", 10, 2 * time.Hour, time.Hour, 1, dur(float64(2*time.Hour) / 9.5)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now := t0
			r := newRule(rateInfo{rule: "x", limit: tc.limit, reset: now.Add(tc.left)}, tc.assumed, now)
			if r.used != tc.wantUsed {
				t.Errorf("used %d, want %d", r.used, tc.wantUsed)
			}
			if got := r.next.Sub(now); (got - tc.wantNext).Abs() > time.Millisecond {
				t.Errorf("next start in %v, want %v", got, tc.wantNext)
			}
		})
	}
}

// TestRule_ProbeFindsTheWindow: a window ends before its length is known;
// one request goes and the others wait for its answer, whose reset gives
// the window.
func TestRule_ProbeFindsTheWindow(t *testing.T) {
	reset := t0.Add(time.Second)
	r := newRule(rateInfo{rule: "x", limit: 15, reset: reset}, time.Hour, t0.Add(600*time.Millisecond))
	at, probe, ok := r.reserve(t0.Add(700 * time.Millisecond))
	if !ok || !probe || !at.Equal(reset.Add(edge)) {
		t.Fatalf("first request after the window: at %v probe %v ok %v; want the probe just after the reset", at.Sub(t0), probe, ok)
	}
	if _, _, ok := r.reserve(reset.Add(edge + ms(10))); ok {
		t.Fatal("a second request went while the probe was out")
	}
	if _, probe, ok := r.reserve(reset.Add(edge + probeWait + ms(1))); !ok || !probe {
		t.Fatalf("no answer for %v: ok %v probe %v; want another probe", probeWait, ok, probe)
	}
	r.learn(rateInfo{rule: "x", limit: 15, reset: reset.Add(time.Second)}, true, reset.Add(ms(20)))
	if r.window != time.Second || r.probing || r.used != 1 || !r.reset.Equal(reset.Add(time.Second)) {
		t.Fatalf("after the probe's answer: window %v probing %v used %d reset %v; want 1s, false, 1, the new reset", r.window, r.probing, r.used, r.reset.Sub(t0))
	}
	at, probe, ok = r.reserve(reset.Add(ms(20)))
	if !ok || probe || at.After(reset.Add(ms(100))) {
		t.Errorf("next request at %v (probe %v ok %v); want it paced in the new window", at.Sub(t0), probe, ok)
	}
}

func TestRule_Learn(t *testing.T) {
	w := 10 * time.Second
	base := func() *rule {
		return &rule{id: "x", limit: 100, window: w, reset: t0.Add(w), seen: t0.Add(w), used: 40}
	}
	cases := []struct {
		name        string
		state       func() *rule
		in          rateInfo
		counted     bool
		now         time.Time
		wantChanged bool
		check       func(*rule) string
	}{
		{"same window, booked under the rule", base, rateInfo{limit: 100, reset: t0.Add(w)}, true, t0.Add(time.Second), false,
			func(r *rule) string { return want(r.used == 40, "used %d, want 40", r.used) }},
		{"same window, booked under another rule or none: counted now", base, rateInfo{limit: 100, reset: t0.Add(w)}, false, t0.Add(time.Second), false,
			func(r *rule) string { return want(r.used == 41, "used %d, want 41", r.used) }},
		{"the count changed", base, rateInfo{limit: 50, reset: t0.Add(w)}, true, t0.Add(time.Second), true,
			func(r *rule) string {
				return want(r.limit == 50 && r.remaining(t0.Add(time.Second)) == 10, "limit %d remaining %d, want 50 and 10", r.limit, r.remaining(t0.Add(time.Second)))
			}},
		{"an answer from a window gone by", base, rateInfo{limit: 100, reset: t0}, true, t0.Add(time.Second), false,
			func(r *rule) string {
				return want(r.reset.Equal(t0.Add(w)) && r.used == 40, "reset %v used %d", r.reset.Sub(t0), r.used)
			}},
		{"the state books ahead of the instance", func() *rule { r := base(); r.reset = t0.Add(2 * w); return r },
			rateInfo{limit: 100, reset: t0.Add(w)}, true, t0.Add(9 * time.Second), false,
			func(r *rule) string {
				return want(r.reset.Equal(t0.Add(2*w)), "reset %v, want kept at 20s", r.reset.Sub(t0))
			}},
		{"the instance moved on: a request counted after the reset", base, rateInfo{limit: 100, reset: t0.Add(2 * w)}, true, t0.Add(w + ms(5)), false,
			func(r *rule) string {
				return want(r.reset.Equal(t0.Add(2*w)) && r.used == 1 && r.window == w, "reset %v used %d window %v", r.reset.Sub(t0), r.used, r.window)
			}},
		{"a window learned too long (idle windows) shrinks", func() *rule { r := base(); r.window = 4 * w; return r },
			rateInfo{limit: 100, reset: t0.Add(2 * w)}, true, t0.Add(w + ms(5)), true,
			func(r *rule) string { return want(r.window == w, "window %v, want %v", r.window, w) }},
		{"the rule now resets earlier", base, rateInfo{limit: 100, reset: t0.Add(3 * time.Second)}, true, t0.Add(time.Second), true,
			func(r *rule) string {
				return want(r.reset.Equal(t0.Add(3*time.Second)), "reset %v, want 3s", r.reset.Sub(t0))
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.state()
			tc.in.rule = "x"
			if changed := r.learn(tc.in, tc.counted, tc.now); changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			if msg := tc.check(r); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// TestRule_Rejected: a 429 blocks the rule until its Retry-After, spends
// the window, and says how much others spend; the estimate fades after
// windows without a 429.
func TestRule_Rejected(t *testing.T) {
	w := 10 * time.Second
	cases := []struct {
		name        string
		used        int
		at          time.Duration // into the window
		retryAfter  time.Duration
		wantBlocked time.Duration // after t0
		wantOthers  int
	}{
		{"others spent a third: 429 at 7.5 s with 50 of 100 ours", 50, 7500 * time.Millisecond, 3 * time.Second, 10500 * time.Millisecond, 67},
		{"our own slip at the window's end: nothing to blame on others", 100, 9900 * time.Millisecond, time.Second, 10900 * time.Millisecond, 0},
		{"too early to tell", 1, ms(200), 0, w, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &rule{id: "x", limit: 100, window: w, reset: t0.Add(w), seen: t0.Add(w), used: tc.used}
			now := t0.Add(tc.at)
			in := rateInfo{rule: "x", limit: 100, reset: t0.Add(w)}
			gen := r.gen
			r.rejected(in, tc.retryAfter, now)
			if !r.blocked.Equal(t0.Add(tc.wantBlocked)) || r.others != tc.wantOthers {
				t.Errorf("blocked until %v, others %d; want %v and %d", r.blocked.Sub(t0), r.others, tc.wantBlocked, tc.wantOthers)
			}
			if r.remaining(now) != 0 || r.gen == gen {
				t.Errorf("remaining %d, gen bumped %v; want the window spent and bookings redone", r.remaining(now), r.gen != gen)
			}
			if at, _, _ := r.reserve(now); at.Before(r.blocked) {
				t.Errorf("a request booked at %v, before the Retry-After (%v)", at.Sub(t0), r.blocked.Sub(t0))
			}
		})
	}
	r := &rule{id: "x", limit: 100, window: w, reset: t0.Add(w), seen: t0.Add(w), others: 67, limited: true}
	r.advance(t0.Add(w)) // the window of the 429 ends: no decay for it
	if r.others != 67 {
		t.Errorf("others %d after the 429's window, want 67", r.others)
	}
	r.advance(t0.Add(2 * w)) // a window without a 429
	if r.others != 33 {
		t.Errorf("others %d after a clean window, want 33", r.others)
	}
	r.advance(t0.Add(10 * w)) // idle windows
	if r.others != 0 {
		t.Errorf("others %d after idle windows, want 0", r.others)
	}
}

func TestRule_PerSecond(t *testing.T) {
	r := &rule{limit: 100, window: 10 * time.Second, reset: t0.Add(10 * time.Second), used: 49}
	if got := r.perSecond(t0.Add(5 * time.Second)); got < 9.9 || got > 10.1 {
		t.Errorf("50 left over 5 s: %v/s, want 10", got)
	}
	if got := r.perSecond(t0.Add(11 * time.Second)); got < 9.8 || got > 10 {
		t.Errorf("window over: %v/s, want the budget over the window (9.9)", got)
	}
}

func want(ok bool, format string, args ...any) string {
	if ok {
		return ""
	}
	return fmt.Sprintf(format, args...)
}
