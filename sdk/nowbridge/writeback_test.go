package nowbridge_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

// writeback runs the bridge's ServiceNow writeback (APP_EVENTS -> the
// simulator, results on BRIDGE_RESULTS) beside e's NATS server.
type writeback struct {
	sim    *snsim.Server
	simURL string
	w      *outbound.Writer
}

func startWriteback(t *testing.T, e *env) *writeback {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, ok := mapping.ShippedFile("incident")
	if !ok {
		t.Fatal("no shipped incident mapping")
	}
	tbl, err := mapping.Parse("incident.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := mapping.NewSet(nil, tbl)
	if err != nil {
		t.Fatal(err)
	}
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 7})
	srv := httptest.NewServer(sim)
	t.Cleanup(func() { sim.Close(); srv.Close() })
	sn, err := snclient.New(snclient.Config{
		InstanceURL: srv.URL, ClientID: "bridge", ClientSecret: "s3cret",
		RetryInitial: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, RetryMaxElapsed: time.Second,
		BreakerFailures: 1000, DisableBackgroundRefresh: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sn.Close() })
	st, ln, err := state.Open(ctx, e.js)
	if err != nil {
		t.Fatal(err)
	}
	w, err := outbound.NewWriter(outbound.Deps{API: sn, Mapping: maps, States: st, Links: ln, StateKV: st.KV(), Dedupe: dedupe.New(dedupe.Config{Tables: maps})},
		outbound.Config{Workers: 2, AckWait: 10 * time.Second, RetryBase: 50 * time.Millisecond, RetryMax: 400 * time.Millisecond, InstanceURL: srv.URL, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e.run(outbound.NewConsumer(e.js, w).Run)
	return &writeback{sim: sim, simURL: srv.URL, w: w}
}

// The whole loop through the SDK and the bridge's own writeback: an app
// creates a ticket with Publish, ServiceNow gets an incident, and Results
// tells the app its number and link within a second; a change ServiceNow's
// data policy refuses comes back rejected with ServiceNow's message and the
// hint.
func TestPublishAndResults_ThroughTheBridgesWriteback(t *testing.T) {
	e := newEnv(t)
	wb := startWriteback(t, e)
	var res results
	e.run(func(ctx context.Context) error {
		return e.client.Results(ctx, res.handler, nowbridge.ResultsOptions{Durable: "helpdesk-results", RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	})
	ctx := context.Background()

	sent := time.Now()
	p, err := e.client.Publish(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-SDK1", Fields: nowbridge.Fields{"title": "Printer on fire", "status": "new", "impact": "1", "urgency": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	created := res.wait(t, "TCK-SDK1", p.Version)
	took := time.Since(sent)
	rec, ok := wb.sim.Get("incident", created.SysID)
	if created.Outcome != nowbridge.OutcomeCreated || !ok || created.Number != rec["number"] || !strings.HasPrefix(created.Number, "INC") {
		t.Fatalf("result %+v; want created with the new incident's number", created)
	}
	if want := wb.simURL + "/nav_to.do?uri=incident.do?sys_id=" + created.SysID; created.URL != want {
		t.Errorf("url %q, want %q", created.URL, want)
	}
	if got := rec; got["short_description"] != "Printer on fire" || got["correlation_id"] != "TCK-SDK1" {
		t.Errorf("incident %v; want the title and the app's id as correlation_id", got)
	}
	t.Logf("created result with %s %v after Publish", created.Number, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the created result took %v", took)
	}

	// Pin the close code the bridge picks, then retire it: ServiceNow drops
	// the retired value and its data policy refuses the resolve.
	if _, err := wb.w.CheckCloseCodes(ctx, []string{"incident"}); err != nil {
		t.Fatal(err)
	}
	if err := wb.sim.SetChoiceInactive("incident", "close_code", "Solution provided", true); err != nil {
		t.Fatal(err)
	}
	p, err = e.client.Publish(ctx, "ticket", nowbridge.AppChange{ExternalID: "TCK-SDK1", Fields: nowbridge.Fields{"status": "resolved"}})
	if err != nil {
		t.Fatal(err)
	}
	rejected := res.wait(t, "TCK-SDK1", p.Version)
	if rejected.Outcome != nowbridge.OutcomeRejected || rejected.Error == nil || rejected.Error.Message == "" || rejected.Error.Hint != snclient.HintDataPolicy || rejected.Number != created.Number {
		t.Fatalf("result %+v (error %+v); want rejected with ServiceNow's message, the data policy hint and the number", rejected, rejected.Error)
	}
	if !strings.Contains(rejected.Error.Detail, "Data Policy") {
		t.Errorf("error detail %q, want ServiceNow's data policy detail", rejected.Error.Detail)
	}
	if got, _ := wb.sim.Get("incident", created.SysID); got["state"] == "6" {
		t.Errorf("the incident was resolved despite the rejection")
	}
}
