package outbound_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

func TestWriteback_RateLimitAndServerErrorStormsLoseNothing(t *testing.T) {
	// Unpaced: the client would learn the burst limit from its headers and
	// meet no 429 (snclient's TestPacing tests cover that); the storm here
	// needs the 429s.
	h := newHarness(t, opts{snCfg: func(c *snclient.Config) { c.Unpaced = true }})
	const n = 12
	ids := make([]string, n)
	for i := range n {
		ids[i] = h.linkedIncident(fmt.Sprintf("TCK-S%d", i), nil)["sys_id"]
	}
	h.sim.SetBurstLimit(8)
	if err := h.sim.SetFaults(snsim.Faults{ErrorRate: 0.25, CancelRate: 0.1}); err != nil {
		t.Fatal(err)
	}
	var last [n]int64
	for round := range 2 {
		for i := range n {
			last[i] = h.publish(events.AppUpsert, fmt.Sprintf("TCK-S%d", i), map[string]string{"title": fmt.Sprintf("storm %d/%d", i, round)}, time.Time{})
		}
	}
	for i := range n {
		h.waitWritten(fmt.Sprintf("TCK-S%d", i), last[i])
	}
	for i, id := range ids {
		if got, want := h.record(id)["short_description"], fmt.Sprintf("storm %d/1", i); got != want {
			t.Errorf("TCK-S%d: short_description %q, want %q", i, got, want)
		}
	}
	if d := h.dlq(); len(d) != 0 {
		t.Errorf("%d dead letters after a 429/5xx storm, want none: %v", len(d), d[0].Header)
	}
	if h.count("", "", 429) == 0 || h.count("", "", 503) == 0 {
		t.Errorf("the storm did not happen: %d 429s, %d 503s", h.count("", "", 429), h.count("", "", 503))
	}
}

func TestWriteback_RevokedTokenRecoversByRefresh(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-TOK", nil)
	v := h.publish(events.AppUpsert, "TCK-TOK", map[string]string{"status": "in_progress"}, time.Time{})
	h.waitWritten("TCK-TOK", v)
	issued := h.sim.TokensIssued()
	h.sim.RevokeTokens()
	v = h.publish(events.AppUpsert, "TCK-TOK", map[string]string{"status": "on_hold"}, time.Time{})
	h.waitWritten("TCK-TOK", v)
	if got := h.record(rec["sys_id"])["state"]; got != "3" {
		t.Errorf("state = %q after the token was revoked, want 3", got)
	}
	if h.sim.TokensIssued() <= issued {
		t.Error("no new token was fetched after revocation")
	}
	if len(h.dlq()) != 0 {
		t.Error("a revoked token sent the change to the DLQ")
	}
}

func TestWriteback_OpenBreakerPausesTheConsumer(t *testing.T) {
	h := newHarness(t, opts{snCfg: func(c *snclient.Config) {
		c.BreakerFailures, c.BreakerOpenFor = 2, 400*time.Millisecond
		c.RetryMaxElapsed = 100 * time.Millisecond
	}})
	rec := h.linkedIncident("TCK-BRK", nil)
	if err := h.sim.SetFaults(snsim.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	v := h.publish(events.AppUpsert, "TCK-BRK", map[string]string{"status": "in_progress"}, time.Time{})
	h.eventually("the consumer pauses", 10*time.Second, func() (bool, string) {
		p := metric(t, h, "bridge_writeback_paused", "", "")
		return p == 1, fmt.Sprint("paused=", p)
	})
	before := h.count("", pathOne, 0)
	time.Sleep(time.Second)
	during := h.count("", pathOne, 0) - before
	// Open 400 ms at a time, one trial request each: a handful, not a spin.
	if during > 8 {
		t.Errorf("%d requests in 1s with the breaker open, want the consumer paused (a few trial requests)", during)
	}
	if err := h.sim.SetFaults(snsim.Faults{}); err != nil {
		t.Fatal(err)
	}
	h.waitWritten("TCK-BRK", v)
	if got := h.record(rec["sys_id"])["state"]; got != "2" {
		t.Errorf("state = %q after the breaker closed, want 2", got)
	}
	if metric(t, h, "bridge_writeback_retries_total", "reason", "breaker_open") == 0 {
		t.Error("no retry was counted as breaker_open")
	}
	if len(h.dlq()) != 0 {
		t.Error("an open breaker sent the change to the DLQ")
	}
	// The app heard once that the change was pending, then its result.
	final := h.waitResult("TCK-BRK", v, "")
	all := h.results("TCK-BRK")
	if len(all) != 2 || all[0].Outcome != events.OutcomeRetrying || all[0].Error == nil || final.Outcome != events.OutcomeUpdated {
		t.Fatalf("results %v, want one retrying, then updated", all)
	}
	if r := all[0].Error.Reason; r != "server_error" && r != "breaker_open" {
		t.Errorf("retrying reason %q, want server_error or breaker_open", r)
	}
}

func TestWriteback_ConcurrentEditsResolveByPolicyEveryRun(t *testing.T) {
	tests := []struct {
		name   string
		policy outbound.Policy
		appAge time.Duration // app's updated_at relative to ServiceNow's sys_updated_on
		want   string
	}{
		{"servicenow_wins even when the app is newer", outbound.ServiceNowWins, 5 * time.Second, "sn-edit"},
		{"saas_wins even when the app is older", outbound.SaaSWins, -5 * time.Second, "app-edit"},
		{"newest_wins, app newer", outbound.NewestWins, 5 * time.Second, "app-edit"},
		{"newest_wins, ServiceNow newer", outbound.NewestWins, -5 * time.Second, "sn-edit"},
		{"newest_wins, same second goes to ServiceNow", outbound.NewestWins, 0, "sn-edit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, opts{cfg: outbound.Config{DefaultPolicy: tt.policy}})
			for run := range 3 {
				ext := fmt.Sprintf("TCK-C%d", run)
				// Vary when the human's webhook would arrive; the outcome must not.
				_ = h.sim.SetWebhookOptions(snsim.WebhookOptions{Delay: time.Duration(run) * 30 * time.Millisecond})
				rec := h.linkedIncident(ext, map[string]string{"short_description": "base"})
				snRec, err := h.sim.Update("incident", rec["sys_id"], map[string]string{"short_description": "sn-edit"}, "beth.anglin")
				if err != nil {
					t.Fatal(err)
				}
				snTime, _ := time.ParseInLocation(events.SNTimeLayout, snRec["sys_updated_on"], time.UTC)
				v := h.publish(events.AppUpsert, ext, map[string]string{"title": "app-edit", "status": "new"}, snTime.Add(tt.appAge))
				h.waitWritten(ext, v)
				if got := h.record(rec["sys_id"])["short_description"]; got != tt.want {
					t.Fatalf("run %d: short_description = %q, want %q by %s", run, got, tt.want, tt.policy)
				}
			}
			if c := metric(t, h, "conflicts_total", "field", "short_description"); c != 3 {
				t.Errorf("conflicts_total{field=short_description} = %v, want 3", c)
			}
		})
	}
}

func TestWriteback_RapidAppEditsWriteInOrderAndStop(t *testing.T) {
	h := newHarness(t, opts{})
	rec := h.linkedIncident("TCK-R", nil)
	var v int64
	for i := range 5 {
		v = h.publish(events.AppUpsert, "TCK-R", map[string]string{"title": fmt.Sprintf("edit %d", i), "status": "in_progress"}, time.Time{})
		time.Sleep(150 * time.Millisecond)
	}
	h.waitWritten("TCK-R", v)
	h.waitHooks()
	if got := h.record(rec["sys_id"])["short_description"]; got != "edit 4" {
		t.Fatalf("short_description = %q, want the last edit", got)
	}
	patches := h.count("PATCH", pathOne, 0)
	if patches > 5 {
		t.Errorf("%d PATCHes for 5 edits", patches)
	}
	time.Sleep(500 * time.Millisecond)
	if again := h.count("PATCH", pathOne, 0); again != patches {
		t.Errorf("writes kept coming after the edits stopped: %d then %d", patches, again)
	}
	if _, other := h.hooks.counts(rec["sys_id"]); other != 1 { // the human insert
		t.Errorf("%d webhooks of the bridge's own writes were not recognised as echoes", other-1)
	}
}

// Stopping before the consumer exists is a clean stop; a setup that cannot
// work (no APP_EVENTS stream) is an error at start, not a silent exit.
func TestConsumer_StopDuringStartIsCleanAMissingStreamIsNot(t *testing.T) {
	h := newHarness(t, opts{})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := outbound.NewConsumer(h.js, h.w).Run(cancelled); err != nil {
		t.Errorf("Run with a cancelled context = %v, want nil", err)
	}
	_, bare := natstest.Connect(t, natstest.RunServer(t)) // JetStream, no streams
	ctx, stop := context.WithTimeout(h.ctx, 10*time.Second)
	defer stop()
	if err := outbound.NewConsumer(bare, h.w).Run(ctx); err == nil || ctx.Err() != nil {
		t.Errorf("Run without the APP_EVENTS stream = %v (context: %v), want a start-up error", err, ctx.Err())
	}
}
