package apply

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// receiver is the bridge's real webhook receiver (internal/inbound) on
// httptest: verified, validated, echo-checked and stored in SN_EVENTS.
func receiver(t *testing.T, e *env, secret webhook.Secret, dd *dedupe.Cache) *httptest.Server {
	t.Helper()
	rcv, err := inbound.New(inbound.Config{Conn: e.nc, Secrets: []webhook.Secret{secret}, Echoes: dd})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rcv.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func TestEndToEnd_SimulatorChangesReachTheAppLinkedAndOnce(t *testing.T) {
	e := newEnv(t)
	secret := newSecret()
	dd := dedupe.New(dedupe.Config{Tables: mapping.Default(nil)})
	recv := receiver(t, e, secret, dd)
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "sim-secret-value", Seed: 7,
		Webhooks: []snsim.WebhookTarget{{URL: recv.URL + inbound.Path, Secrets: []webhook.Secret{secret}}}})
	t.Cleanup(sim.Close)
	simSrv := httptest.NewServer(sim)
	t.Cleanup(simSrv.Close)
	sn, err := snclient.New(snclient.Config{InstanceURL: simSrv.URL, ClientID: "bridge", ClientSecret: "sim-secret-value",
		RetryInitial: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond, RetryMaxElapsed: 5 * time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sn.Close() })
	mset := mapping.Default(nil)
	writer, err := outbound.NewWriter(outbound.Deps{API: sn, Mapping: mset, States: e.states, Links: e.links, StateKV: e.states.KV(), Dedupe: dd}, outbound.Config{})
	if err != nil {
		t.Fatal(err)
	}

	// The SaaS app links every record it is sent for the first time.
	var mu sync.Mutex
	var got []Message
	app := newAppServer(t, secret, func(key string, attempt int, m Message) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, m)
		if m.ExternalID == "" {
			return http.StatusOK, `{"external_id":"TCK-77"}`
		}
		return http.StatusOK, `{}`
	})
	cfg := e.testConfig(httpApplier(t, app.URL, secret))
	cfg.LinkWriter, cfg.Applied = writer, dd
	e.start(cfg)

	rec, err := sim.Insert("incident", map[string]string{"short_description": "Printer on fire", "impact": "1", "urgency": "2"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	sys := rec["sys_id"]
	// The app's id lands on the record's correlation_id.
	deadline := time.Now().Add(15 * time.Second)
	for {
		cur, _ := sim.Get("incident", sys)
		if cur["correlation_id"] == "TCK-77" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("correlation_id = %q after 15s, want TCK-77", cur["correlation_id"])
		}
		time.Sleep(20 * time.Millisecond)
	}
	upd, err := sim.Update("incident", sys, map[string]string{"state": "2", "short_description": "Printer still on fire"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sim.WaitWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitDrained("apply", 10*time.Second)
	app.check(t)

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("the app received %d messages, want 2 (the insert and the update; the correlation write is the bridge's echo): %+v", len(got), got)
	}
	ins, up := got[0], got[1]
	if ins.Action != "insert" || ins.Version != 0 || ins.ExternalID != "" || ins.Fields["title"] != "Printer on fire" || ins.Fields["priority"] != "2" {
		t.Errorf("insert = %+v; want v0, no external_id yet, title and the computed priority 2", ins)
	}
	if up.Action != "update" || up.ExternalID != "TCK-77" || up.Fields["status"] != "in_progress" ||
		up.Fields["title"] != "Printer still on fire" || up.Number != rec["number"] || up.Version != mustInt(t, upd["sys_mod_count"]) {
		t.Errorf("update = %+v; want external_id TCK-77, status in_progress, version %s", up, upd["sys_mod_count"])
	}
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

func TestEndToEnd_SimulatorUpdateIsOneBridgeApplyMessage(t *testing.T) {
	e := newEnv(t)
	secret := newSecret()
	recv := receiver(t, e, secret, dedupe.New(dedupe.Config{Tables: mapping.Default(nil)}))
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "sim-secret-value", Seed: 8,
		Webhooks: []snsim.WebhookTarget{{URL: recv.URL + inbound.Path, Secrets: []webhook.Secret{secret}}}})
	t.Cleanup(sim.Close)
	e.start(e.testConfig(&NATSApplier{JS: e.js}))

	rec, err := sim.Insert("incident", map[string]string{"short_description": "VPN flaps", "impact": "2", "urgency": "2"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	upd, err := sim.Update("incident", rec["sys_id"], map[string]string{"state": "3"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sim.WaitWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitDrained("apply", 10*time.Second)
	var updates []applied
	for _, m := range e.waitApplied(2, 5*time.Second) {
		if m.Subject == "bridge.apply.ticket.update" {
			updates = append(updates, m)
		}
	}
	if len(updates) != 1 {
		t.Fatalf("%d bridge.apply.ticket.update messages, want 1", len(updates))
	}
	u := updates[0]
	want := events.Fields{"title": "VPN flaps", "status": "on_hold", "priority": "3", "impact": "2", "urgency": "2", "description": ""}
	if u.SysID != rec["sys_id"] || u.Number != rec["number"] || u.Version != mustInt(t, upd["sys_mod_count"]) || fmt.Sprint(u.Fields) != fmt.Sprint(want) {
		t.Errorf("update = %+v\nwant sys_id %s, number %s, version %s, fields %v", u.Message, rec["sys_id"], rec["number"], upd["sys_mod_count"], want)
	}
	if u.MsgID != events.ApplyMsgID("incident", rec["sys_id"], u.Version, "update") {
		t.Errorf("Nats-Msg-Id = %s", u.MsgID)
	}
}
