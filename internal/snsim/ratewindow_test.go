package snsim

import (
	"strconv"
	"testing"
	"time"
)

// TestRateLimitWindow_RulesCountPerWindow: with a 10 s window a rule's
// count, reset and Retry-After follow the window, not the hour.
func TestRateLimitWindow_RulesCountPerWindow(t *testing.T) {
	clk := newClock()
	clk.Add(3 * time.Second) // 10:00:03: the window resets at 10:00:10
	h := newHarness(t, Config{Now: clk.Now})
	if err := h.sim.SetRateLimitRules([]RateLimitRule{{SysID: "all", Count: 2}}); err != nil {
		t.Fatal(err)
	}
	if err := h.sim.SetRateLimitWindow(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	reset := strconv.FormatInt(fixedNow.Add(10*time.Second).Unix(), 10)
	for i := range 2 {
		r := h.get("/api/now/v2/table/incident", nil)
		if r.status != 200 || r.header.Get("X-RateLimit-Reset") != reset || r.header.Get("X-RateLimit-Limit") != "2" {
			t.Fatalf("request %d: %d reset %q limit %q; want 200, reset %s, limit 2", i, r.status, r.header.Get("X-RateLimit-Reset"), r.header.Get("X-RateLimit-Limit"), reset)
		}
	}
	r := h.get("/api/now/v2/table/incident", nil)
	if r.status != 429 || r.header.Get("Retry-After") != "7" || r.header.Get("X-RateLimit-Reset") != reset {
		t.Errorf("over the limit: %d Retry-After %q reset %q; want 429, 7, %s", r.status, r.header.Get("Retry-After"), r.header.Get("X-RateLimit-Reset"), reset)
	}
	clk.Add(7 * time.Second)
	r = h.get("/api/now/v2/table/incident", nil)
	if next := strconv.FormatInt(fixedNow.Add(20*time.Second).Unix(), 10); r.status != 200 || r.header.Get("X-RateLimit-Reset") != next {
		t.Errorf("next window: %d reset %q; want 200 and reset %s", r.status, r.header.Get("X-RateLimit-Reset"), next)
	}
	for _, d := range []time.Duration{-time.Second, 1500 * time.Millisecond} {
		if err := h.sim.SetRateLimitWindow(d); err == nil {
			t.Errorf("SetRateLimitWindow(%s) accepted", d)
		}
	}
}

// TestRateLimit_BurstHeadersOnEveryAnswer: the per-second knob behaves as a
// rule, so its headers come on answers under the limit too.
func TestRateLimit_BurstHeadersOnEveryAnswer(t *testing.T) {
	clk := newClock()
	h := newHarness(t, Config{Now: clk.Now})
	h.sim.SetBurstLimit(3)
	r := h.get("/api/now/v2/table/incident", nil)
	if r.status != 200 || r.header.Get("X-RateLimit-Limit") != "3" || r.header.Get("X-RateLimit-Rule") != BurstRule ||
		r.header.Get("X-RateLimit-Reset") != strconv.FormatInt(fixedNow.Unix()+1, 10) {
		t.Errorf("%d limit %q rule %q reset %q; want 200 with the burst rule's headers", r.status,
			r.header.Get("X-RateLimit-Limit"), r.header.Get("X-RateLimit-Rule"), r.header.Get("X-RateLimit-Reset"))
	}
	h.sim.SetBurstLimit(0)
	if r := h.get("/api/now/v2/table/incident", nil); r.header.Get("X-RateLimit-Limit") != "" {
		t.Errorf("no limit, no rule: X-RateLimit-Limit %q", r.header.Get("X-RateLimit-Limit"))
	}
}
