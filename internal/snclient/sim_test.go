package snclient

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

// newSim starts the simulator (seeded with n incidents) on httptest and
// returns a client for it with short test timings and field validation on.
func newSim(tb testing.TB, n int, simCfg snsim.Config, mod func(*Config)) (*snsim.Server, *Client) {
	tb.Helper()
	simCfg.ClientID, simCfg.ClientSecret = "bridge", "sim-secret-value"
	if simCfg.Seed == 0 {
		simCfg.Seed = 42
	}
	sim := snsim.New(simCfg)
	tb.Cleanup(sim.Close)
	// Every query the client sent must have been one the simulator fully
	// understood and that named real fields: nothing passes by accident.
	tb.Cleanup(func() {
		if probs := sim.QueryProblems(); len(probs) > 0 {
			tb.Errorf("the simulator flagged queries from the client: %+v", probs)
		}
	})
	if n > 0 {
		if err := sim.Seed(n); err != nil {
			tb.Fatal(err)
		}
	}
	hs := httptest.NewServer(sim)
	tb.Cleanup(hs.Close)
	cfg := Config{
		InstanceURL: hs.URL, ClientID: "bridge", ClientSecret: "sim-secret-value",
		RetryInitial: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond, RetryMaxElapsed: 10 * time.Second,
		RequestTimeout: 10 * time.Second, BreakerOpenFor: 200 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return sim, c
}

func TestSim_50ConcurrentCallersNearExpiryOneTokenRequest(t *testing.T) {
	sim, c := newSim(t, 10, snsim.Config{TokenTTL: 4 * time.Second}, func(c *Config) {
		c.TokenMinValidity = 1500 * time.Millisecond
		c.DisableBackgroundRefresh = true
	})
	ctx := context.Background()
	if _, err := c.List(ctx, "incident", ListOptions{Limit: 1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(c.TokenExpiry().Add(-1200 * time.Millisecond)))
	before := sim.TokenRequests()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 50 {
		wg.Go(func() {
			<-start
			if _, err := c.List(ctx, "incident", ListOptions{Limit: 1}); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if got := sim.TokenRequests() - before; got != 1 {
		t.Errorf("token requests by 50 concurrent callers with the token under its minimum validity = %d, want exactly 1", got)
	}
}

func TestSim_BackgroundRefreshAndRevocation(t *testing.T) {
	sim, c := newSim(t, 10, snsim.Config{TokenTTL: 3 * time.Second}, func(c *Config) {
		c.TokenMinValidity = time.Second
		c.RefreshLeadMin, c.RefreshLeadMax = 1200*time.Millisecond, 1500*time.Millisecond
	})
	ctx := context.Background()
	if err := c.CheckAuth(ctx); err != nil {
		t.Fatal(err)
	}
	exp := c.TokenExpiry()
	deadline := time.Now().Add(3 * time.Second)
	for sim.TokenRequests() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if sim.TokenRequests() < 2 || !time.Now().Before(exp) || !c.TokenExpiry().After(exp) {
		t.Fatalf("no renewal before expiry %v (token requests %d, expiry now %v)", exp, sim.TokenRequests(), c.TokenExpiry())
	}
	sim.RevokeTokens()
	n := sim.TokenRequests()
	if _, err := c.List(ctx, "incident", ListOptions{Limit: 1}); err != nil {
		t.Fatalf("call after revocation: %v", err)
	}
	if sim.TokenRequests() != n+1 {
		t.Errorf("revocation cost %d token requests, want 1", sim.TokenRequests()-n)
	}
}

func TestSim_FailedRefreshUsesLastGoodToken(t *testing.T) {
	sim, c := newSim(t, 10, snsim.Config{TokenTTL: 6 * time.Second}, func(c *Config) {
		c.TokenMinValidity = 2 * time.Second
		c.DisableBackgroundRefresh = true
	})
	ctx := context.Background()
	if err := c.CheckAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sim.SetFaults(snsim.Faults{TokenErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(c.TokenExpiry().Add(-1700 * time.Millisecond)))
	if _, err := c.List(ctx, "incident", ListOptions{Limit: 1}); err != nil {
		t.Fatalf("call while the refresh fails and the old token is valid: %v", err)
	}
	var te *TokenError
	if st := c.TokenStatus(); !errors.As(st.LastError, &te) || !te.Temporary() {
		t.Errorf("TokenStatus().LastError = %v, want a temporary *TokenError", st.LastError)
	}
}

// Every hint, triggered by the simulator mode that causes it.
func TestSim_Hints(t *testing.T) {
	ctx := context.Background()
	const id = "0000000000000000000000000000dead"
	t.Run("grant disabled", func(t *testing.T) {
		sim, c := newSim(t, 0, snsim.Config{}, nil)
		sim.SetOAuthMode(snsim.OAuthGrantDisabled)
		err := c.CheckAuth(ctx)
		if !errors.Is(err, ErrTokenExchange) || Hint(err) != HintTokenRejected {
			t.Errorf("err = %v", err)
		}
		if strings.Contains(err.Error(), "sim-secret-value") {
			t.Errorf("error reveals the secret: %v", err)
		}
	})
	t.Run("no application user (token request fails)", func(t *testing.T) {
		sim, c := newSim(t, 0, snsim.Config{}, nil)
		sim.SetOAuthMode(snsim.OAuthNoAppUser)
		if err := c.CheckAuth(ctx); Hint(err) != HintTokenRejected {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		_, c := newSim(t, 0, snsim.Config{}, func(c *Config) { c.ClientSecret = "nope" })
		if err := c.CheckAuth(ctx); Hint(err) != HintTokenRejected || !errors.Is(err, ErrUnauthorized) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("token issued, API rejects it", func(t *testing.T) {
		sim, c := newSim(t, 1, snsim.Config{}, nil)
		sim.SetOAuthMode(snsim.OAuthTokenNotAuthenticated)
		_, err := c.List(ctx, "incident", ListOptions{})
		if !errors.Is(err, ErrUnauthorized) || Hint(err) != HintAppUser {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("write denied", func(t *testing.T) {
		sim, c := newSim(t, 1, snsim.Config{}, nil)
		sim.SetACL(snsim.ACL{DenyWrites: true})
		_, err := c.Update(ctx, "incident", sim.IDs("incident")[0], map[string]string{"urgency": "1"})
		if !errors.Is(err, ErrForbidden) || Hint(err) != HintRoles {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("query on a hidden field, sys_dictionary granted", func(t *testing.T) {
		sim, c := newSim(t, 5, snsim.Config{Grants: snsim.Grants{Dictionary: true}}, nil)
		sim.SetACL(snsim.ACL{HiddenFields: map[string][]string{"incident": {"caller_id"}}})
		_, err := c.List(ctx, "incident", ListOptions{Query: And(Field("caller_id").IsNotEmpty())})
		if !errors.Is(err, ErrForbidden) || Hint(err) != HintQueryRights {
			t.Errorf("err = %v", err)
		}
		p, err := c.List(ctx, "incident", ListOptions{Fields: []string{"number", "caller_id"}})
		if err != nil || len(p.Warnings) == 0 || p.Warnings[0].Kind != ACLFields || p.Warnings[0].Fields[0] != "caller_id" {
			t.Errorf("fields warning: page %+v, %v", p, err)
		}
	})
	t.Run("rows hidden", func(t *testing.T) {
		sim, c := newSim(t, 200, snsim.Config{}, nil)
		sim.SetACL(snsim.ACL{HideRow: snsim.HideFraction(0.5)})
		p, err := c.List(ctx, "incident", ListOptions{Limit: 100})
		if err != nil || len(p.Warnings) == 0 || !errors.Is(p.Warnings[0], ErrACLHidden) || !strings.Contains(p.Warnings[0].Error(), "ACL may be hiding rows/fields") {
			t.Errorf("rows warning: %+v, %v", p, err)
		}
	})
	t.Run("data policy", func(t *testing.T) {
		sim, c := newSim(t, 1, snsim.Config{}, nil)
		_, err := c.Update(ctx, "incident", sim.IDs("incident")[0], map[string]string{"state": "6"})
		if !errors.Is(err, ErrForbidden) || Hint(err) != HintDataPolicy {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("unknown table", func(t *testing.T) {
		_, c := newSim(t, 0, snsim.Config{}, func(c *Config) { c.SkipFieldValidation = true })
		_, err := c.List(ctx, "incidnt", ListOptions{})
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(Hint(err), "BRIDGE_TABLES") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("unknown field, checked against sys_dictionary", func(t *testing.T) {
		sim, c := newSim(t, 5, snsim.Config{Grants: snsim.Grants{Dictionary: true}}, nil)
		_, err := c.List(ctx, "incident", ListOptions{Query: And(Field("stat").EQ(1))})
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Source != "record, sys_dictionary" || Hint(err) != HintUnknownField {
			t.Fatalf("err = %v", err)
		}
		if _, err := c.List(ctx, "incident", ListOptions{Query: And(Field("state").EQ(1), Field("caller_id").IsNotEmpty(), Field("correlation_id").IsEmpty())}); err != nil {
			t.Errorf("valid incident/task fields rejected: %v", err)
		}
		if probs := sim.QueryProblems(); len(probs) > 0 {
			t.Errorf("simulator saw query problems: %+v", probs)
		}
	})
	t.Run("record gone", func(t *testing.T) {
		_, c := newSim(t, 0, snsim.Config{}, nil)
		_, err := c.Get(ctx, "incident", id)
		if !errors.Is(err, ErrNotFound) || Hint(err) != HintNotFound {
			t.Errorf("err = %v", err)
		}
	})
}

func TestSim_TableAPIRoundTrip(t *testing.T) {
	for _, v := range []TableAPIVersion{TableAPIv1, TableAPIv2} {
		t.Run(string(v), func(t *testing.T) {
			sim, c := newSim(t, 0, snsim.Config{}, func(c *Config) {
				c.TableAPI = v
				// As bridge serve declares the mapping's fields: the table
				// starts empty and sys_dictionary is hidden.
				c.MappedFields = map[string][]string{"incident": {"number", "short_description", "impact", "urgency", "correlation_id"}}
			})
			ctx := context.Background()
			p, err := c.List(ctx, "incident", ListOptions{Query: And(Field("number").EQ("INC0000000"))})
			if err != nil || len(p.Records) != 0 {
				t.Fatalf("empty list: %+v, %v", p, err)
			}
			rec, err := c.Create(ctx, "incident", map[string]string{"short_description": "Email down", "impact": "1", "urgency": "2", "correlation_id": "TCK-1"})
			if err != nil {
				t.Fatal(err)
			}
			id := rec["sys_id"]
			if rec["number"] == "" || rec["priority"] != "2" || rec["sys_mod_count"] != "0" || rec["sys_updated_by"] != sim.AppUser() {
				t.Errorf("created = %v", rec)
			}
			if got, err := c.FindByCorrelation(ctx, "incident", "correlation_id", "TCK-1"); err != nil || got != id {
				t.Errorf("FindByCorrelation = %q, %v", got, err)
			}
			up, err := c.Update(ctx, "incident", id, map[string]string{"state": "2", "comments": "Looking into it"})
			if err != nil || up["state"] != "2" || up["sys_mod_count"] != "1" {
				t.Errorf("updated = %v, %v", up, err)
			}
			r, err := c.GetRecord(ctx, "incident", id, ReadOptions{Display: DisplayAll, Fields: []string{"state", "caller_id", "number"}})
			if err != nil || r.Get("state") != "2" || r.Display("state") != "In Progress" {
				t.Errorf("display all: %v, %v", r, err)
			}
			if err := c.Delete(ctx, "incident", id); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(ctx, "incident", id); !errors.Is(err, ErrNotFound) {
				t.Errorf("after delete: %v", err)
			}
		})
	}
}

func TestSim_429StormAllCallsSucceed(t *testing.T) {
	sim, c := newSim(t, 20, snsim.Config{}, func(c *Config) { c.RetryMaxElapsed = 30 * time.Second })
	sim.SetBurstLimit(4)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range 16 {
		wg.Go(func() {
			if _, err := c.List(context.Background(), "incident", ListOptions{Limit: 1, Offset: i}); err != nil {
				t.Errorf("call %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := sim.RequestCount("GET", "/api/now/table/incident", 429); n == 0 {
		t.Fatal("no 429: the storm did not happen")
	}
	// 16 calls at 4 per second, each 429 waited out per Retry-After: at
	// least three more windows.
	if el := time.Since(start); el < 2*time.Second {
		t.Errorf("16 calls through a 4/s limit took %v: Retry-After was not honoured", el)
	}
}

func TestSim_BreakerOpensAndHalfOpens(t *testing.T) {
	sim, c := newSim(t, 5, snsim.Config{}, func(c *Config) {
		c.BreakerFailures, c.RetryMaxElapsed, c.BreakerOpenFor = 3, 20*time.Millisecond, 300*time.Millisecond
	})
	ctx := context.Background()
	if err := c.CheckAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sim.SetFaults(snsim.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 20 && !errors.Is(err, ErrBreakerOpen); i++ {
		_, err = c.List(ctx, "incident", ListOptions{})
	}
	if !errors.Is(err, ErrBreakerOpen) {
		t.Fatalf("breaker did not open: %v", err)
	}
	_ = sim.SetFaults(snsim.Faults{})
	time.Sleep(350 * time.Millisecond)
	if c.BreakerState() != "half-open" {
		t.Errorf("state = %s, want half-open", c.BreakerState())
	}
	if _, err := c.List(ctx, "incident", ListOptions{}); err != nil || c.BreakerState() != "closed" {
		t.Errorf("trial: %v, state %s", err, c.BreakerState())
	}
}

func TestSim_FaultsAreRetried(t *testing.T) {
	sim, c := newSim(t, 3000, snsim.Config{}, func(c *Config) { c.BreakerFailures = 1000 })
	if err := sim.SetFaults(snsim.Faults{ErrorRate: 0.2, CancelRate: 0.1, DropRate: 0.1}); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, err := range c.Keyset("incident", KeysetOptions{PageSize: 200}).Records(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 3000 {
		t.Errorf("scan under faults returned %d of 3000", n)
	}
}

// Keyset over 20k seeded records, 50 sharing each second, while records
// are updated through the simulator: the documented guarantee holds.
func TestSim_Keyset20kWithUpdatesDuringScan(t *testing.T) {
	// The instance clock moves one second per page, so updates never land
	// in the second the cursor is in (the live edge, documented on
	// KeysetPager, is what the reconcile overlap window is for).
	var clock atomic.Int64
	clock.Store(time.Now().Unix())
	sim, c := newSim(t, 20000, snsim.Config{Now: func() time.Time { return time.Unix(clock.Load(), 0) }}, nil)
	ids := sim.IDs("incident")
	rng := rand.New(rand.NewPCG(7, 9))
	updated := map[string]int{}
	p := c.Keyset("incident", KeysetOptions{Fields: []string{"number", "sys_mod_count"}, PageSize: 1000})
	ctx := context.Background()
	type version struct{ id, mod string }
	seen := map[string]int{}
	versions := map[version]int{}
	for !p.Done() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Records {
			seen[r.SysID()]++
			versions[version{r.SysID(), r.Get("sys_mod_count")}]++
		}
		for range 40 {
			id := ids[rng.IntN(len(ids))]
			if _, err := sim.Update("incident", id, map[string]string{"work_notes": "touched during the scan"}, "beth.anglin"); err != nil {
				t.Fatal(err)
			}
			updated[id]++
		}
		clock.Add(1)
	}
	for v, n := range versions {
		if n > 1 {
			t.Errorf("version %v returned %d times", v, n)
		}
	}
	for _, id := range ids {
		n := seen[id]
		if updated[id] == 0 && n != 1 {
			t.Errorf("unchanged record %s returned %d times, want exactly once", id, n)
		}
		if updated[id] > 0 && (n < 1 || n > 1+updated[id]) {
			t.Errorf("record %s updated %d times returned %d times", id, updated[id], n)
		}
	}
	t.Logf("20000 records, %d updated during the scan, %d rows returned in %d requests", len(updated), len(versions), p.Requests())
}

func TestSim_ACLPagesDoNotEndScans(t *testing.T) {
	sim, c := newSim(t, 5000, snsim.Config{}, nil)
	hide := snsim.HideFraction(0.6)
	sim.SetACL(snsim.ACL{HideRow: hide})
	want := 0
	for _, id := range sim.IDs("incident") {
		r, _ := sim.Get("incident", id)
		if !hide("incident", r) {
			want++
		}
	}
	for name, it := range map[string]func() (int, int){
		"keyset": func() (int, int) {
			p := c.Keyset("incident", KeysetOptions{PageSize: 100})
			n := 0
			for _, err := range p.Records(context.Background()) {
				if err != nil {
					t.Fatal(err)
				}
				n++
			}
			return n, len(p.Warnings())
		},
		"offset": func() (int, int) {
			p := c.Offset("incident", ListOptions{Limit: 100})
			n := 0
			for _, err := range p.Records(context.Background()) {
				if err != nil {
					t.Fatal(err)
				}
				n++
			}
			return n, len(p.Warnings())
		},
	} {
		got, warns := it()
		if got != want || warns == 0 {
			t.Errorf("%s: %d visible rows of %d, %d warnings", name, got, want, warns)
		}
	}
}
