package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// TestServe_BothDirectionsThroughTheWiredBinary runs `bridge serve` exactly as
// an operator would (embedded JetStream, ServiceNow settings pointing at the
// simulator) and checks that every part is wired: a human change in
// ServiceNow reaches the app on bridge.apply, an app change is written back
// with PATCH, and that write's webhook comes back as an echo, not as a
// second apply message.
func TestServe_BothDirectionsThroughTheWiredBinary(t *testing.T) {
	secret := webhook.NewSecret([]byte("serve-sync-secret-0123456789abcd"))
	sim := snsim.New(snsim.Config{ClientID: "cid", ClientSecret: "csecret"})
	defer sim.Close()
	simSrv := httptest.NewServer(sim)
	defer simSrv.Close()
	rec, err := sim.Insert("incident", map[string]string{"short_description": "Email down", "urgency": "2", "impact": "2"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	sysID := rec["sys_id"]

	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS":    secret.Encoded(),
		"BRIDGE_DATA_DIR":           t.TempDir(),
		"BRIDGE_SN_INSTANCE_URL":    simSrv.URL,
		"BRIDGE_SN_CLIENT_ID":       "cid",
		"BRIDGE_SN_CLIENT_SECRET":   "csecret",
		"BRIDGE_RECONCILE_INTERVAL": "0",
	}
	b := startServe(t, env, "--embedded-nats-listen", "127.0.0.1:0")
	ctx, logs, addr := b.ctx, b.logs, b.addr
	natsURL := logField(t, logs, "embedded NATS JetStream started", "url", b.exited)
	if strings.Contains(logs.String(), "writeback and reconcile are off") {
		t.Fatalf("ServiceNow is configured, yet serve says writeback is off:\n%s", logs.String())
	}
	if err := sim.SetWebhooks(snsim.WebhookTarget{URL: "http://" + addr + "/webhooks/servicenow", Secrets: []webhook.Secret{secret}}); err != nil {
		t.Fatal(err)
	}

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	applied := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe("bridge.apply.>", applied)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// ServiceNow -> app.
	if _, err := sim.Update("incident", sysID, map[string]string{"state": "2"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	var change events.AppChange
	select {
	case m := <-applied:
		if m.Subject != "bridge.apply.ticket.update" {
			t.Fatalf("apply subject %q, want bridge.apply.ticket.update", m.Subject)
		}
		if err := json.Unmarshal(m.Data, &change); err != nil {
			t.Fatal(err)
		}
		if change.SysID != sysID || change.Fields["status"] != "in_progress" || change.Version != 1 {
			t.Fatalf("apply message = %+v, want sys_id %s, status in_progress, version 1", change, sysID)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no bridge.apply message within 15s of a human change:\n%s", logs.String())
	}

	// The app answers once the bridge is done with that version (its state
	// written): a change crossing an unfinished hand-over is rightly not
	// claimed as an echo, and this test wants the claimed case.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	idle := time.Now().Add(15 * time.Second)
	for {
		busy := "not found"
		if ci, err := js.Consumer(ctx, events.StreamSN, "apply"); err == nil {
			if info, err := ci.Info(ctx); err == nil {
				if info.NumPending == 0 && info.NumAckPending == 0 {
					break
				}
				busy = fmt.Sprintf("%d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
			}
		}
		if time.Now().After(idle) {
			t.Fatalf("the apply consumer did not finish the human change within 15s (%s):\n%s", busy, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// App -> ServiceNow: the app links its ticket by sys_id and retitles it.
	up, _ := json.Marshal(events.AppChange{ExternalID: "TCK-7", SysID: sysID, Version: 2, UpdatedAt: time.Now().UTC(),
		Fields: events.Fields{"title": "Email down for everyone", "status": "in_progress"}})
	if err := nc.Publish("app.ticket.upsert", up); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, _ := sim.Get("incident", sysID)
		if r["short_description"] == "Email down for everyone" && r["correlation_id"] == "TCK-7" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writeback did not reach ServiceNow within 15s: %v\n%s", r, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = sim.WaitWebhooks(wctx)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-applied:
		t.Fatalf("the bridge's own write came back to the app as %s: %s", m.Subject, m.Data)
	case <-time.After(time.Second):
	}

	b.shutdown(t)
	if strings.Contains(logs.String(), "csecret") || strings.Contains(logs.String(), secret.KeyBase64()) {
		t.Error("a secret appears in the logs")
	}
}
