package snsim

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRateLimit_RuleAnswers429WithHeaders(t *testing.T) {
	clk := newClock()
	clk.Add(25 * time.Minute) // 10:25:00: the window resets at 11:00:00
	h := newHarness(t, Config{Now: clk.Now})
	if err := h.sim.SetRateLimitRules([]RateLimitRule{
		{SysID: "all", Count: 100},
		{SysID: "user", User: DefaultAppUser, Resource: "GET /now/v2/table/incident", Count: 2},
	}); err != nil {
		t.Fatal(err)
	}
	reset := strconv.FormatInt(fixedNow.Add(time.Hour).Unix(), 10)
	for i := range 2 {
		r := h.get("/api/now/v2/table/incident", nil)
		if r.status != 200 || r.header.Get("X-RateLimit-Limit") != "2" || r.header.Get("X-RateLimit-Reset") != reset || r.header.Get("X-RateLimit-Rule") != "user" {
			t.Fatalf("request %d: %d limit %q reset %q rule %q; want 200 with the user rule's headers", i, r.status,
				r.header.Get("X-RateLimit-Limit"), r.header.Get("X-RateLimit-Reset"), r.header.Get("X-RateLimit-Rule"))
		}
	}
	r := h.get("/api/now/v2/table/incident", nil)
	if r.status != 429 || r.header.Get("Retry-After") != "2100" || r.header.Get("X-RateLimit-Rule") != "user" || r.header.Get("X-RateLimit-Reset") != reset {
		t.Errorf("over the limit: %d Retry-After %q Rule %q Reset %q; want 429 2100 user %s", r.status, r.header.Get("Retry-After"), r.header.Get("X-RateLimit-Rule"), r.header.Get("X-RateLimit-Reset"), reset)
	}
	if msg := r.json(t)["error"].(map[string]any)["message"]; msg != "Rate limit exceeded" {
		t.Errorf("429 message %v, want Rate limit exceeded", msg)
	}
	// Another resource falls under the all-users rule, errors included.
	for _, path := range []string{"/api/now/table/sys_user", "/api/now/table/sys_user/" + strings.Repeat("0", 32)} {
		if r := h.get(path, nil); r.header.Get("X-RateLimit-Limit") != "100" || r.header.Get("X-RateLimit-Rule") != "all" || r.header.Get("X-RateLimit-Reset") != reset {
			t.Errorf("%s: %d limit %q rule %q reset %q; want the all-users rule's headers", path, r.status,
				r.header.Get("X-RateLimit-Limit"), r.header.Get("X-RateLimit-Rule"), r.header.Get("X-RateLimit-Reset"))
		}
	}
	clk.Add(time.Hour)
	h.tok = h.token() // the old one expired
	if r := h.get("/api/now/v2/table/incident", nil); r.status != 200 {
		t.Errorf("next window: %d", r.status)
	}
}

func TestRateLimit_Burst(t *testing.T) {
	clk := newClock()
	h := newHarness(t, Config{Now: clk.Now})
	h.sim.SetBurstLimit(3)
	codes := map[int]int{}
	for range 5 {
		codes[h.get("/api/now/v2/table/incident", nil).status]++
	}
	if codes[200] != 3 || codes[429] != 2 {
		t.Errorf("statuses %v, want 3×200 and 2×429", codes)
	}
	if n := h.sim.RequestCount("GET", "/api/now/v2/table/incident", 429); n != 2 {
		t.Errorf("RequestCount 429 = %d", n)
	}
	clk.Add(time.Second)
	if r := h.get("/api/now/v2/table/incident", nil); r.status != 200 {
		t.Errorf("next second: %d", r.status)
	}
}

func TestFaults_ErrorsAndDroppedConnections(t *testing.T) {
	h := newHarness(t, Config{})
	if err := h.sim.SetFaults(Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	if r := h.get("/api/now/v2/table/incident", nil); r.status != 503 {
		t.Errorf("error rate 1: %d", r.status)
	}
	_ = h.sim.SetFaults(Faults{CancelRate: 1})
	if r := h.get("/api/now/v2/table/incident", nil); r.status != 503 || r.json(t)["error"].(map[string]any)["message"] != "Transaction cancelled" {
		t.Errorf("cancel rate 1: %d %s", r.status, r.body)
	}
	_ = h.sim.SetFaults(Faults{DropRate: 1})
	req := h.srv.URL + "/api/now/v2/table/incident"
	if resp, err := h.srv.Client().Get(req); err == nil {
		resp.Body.Close()
		t.Errorf("drop rate 1: got status %d, want a closed connection", resp.StatusCode)
	}
	if err := h.sim.SetFaults(Faults{ErrorRate: 2}); err == nil {
		t.Error("SetFaults accepted a rate of 2")
	}
	if err := h.sim.SetFaults(Faults{SemaphoreRate: -1}); err == nil {
		t.Error("SetFaults accepted a semaphore rate of -1")
	}
}

// TestFaults_SemaphoreExhaustionIs429WithoutRateHeaders: even where a rate
// limit rule matches, exhausted semaphores answer 429 with no X-RateLimit-*
// and no Retry-After.
func TestFaults_SemaphoreExhaustionIs429WithoutRateHeaders(t *testing.T) {
	h := newHarness(t, Config{})
	if err := h.sim.SetRateLimitRules([]RateLimitRule{{SysID: "all", Count: 100}}); err != nil {
		t.Fatal(err)
	}
	if err := h.sim.SetFaults(Faults{SemaphoreRate: 1}); err != nil {
		t.Fatal(err)
	}
	r := h.get("/api/now/v2/table/incident", nil)
	if r.status != 429 {
		t.Fatalf("semaphore rate 1: %d %s, want 429", r.status, r.body)
	}
	for _, name := range []string{"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Reset", "X-RateLimit-Rule"} {
		if v := r.header.Get(name); v != "" {
			t.Errorf("semaphore 429 carries %s: %q; the platform sends no rate-limit headers here", name, v)
		}
	}
	if r.json(t)["status"] != "failure" {
		t.Errorf("semaphore 429 body %s, want the failure envelope", r.body)
	}
}
