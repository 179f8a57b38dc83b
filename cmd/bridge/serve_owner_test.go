package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// syncOwner reads bridge_sync_owner from a served bridge's /metrics.
func syncOwner(t *testing.T, client *http.Client, b *servedBridge) string {
	t.Helper()
	resp, err := client.Get("http://" + b.addr + "/metrics")
	if err != nil {
		return "unreachable"
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "bridge_sync_owner "); ok {
			return v
		}
	}
	return "absent"
}

func logTime(t *testing.T, s string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log time %q: %v", s, err)
	}
	return ts
}

// TestServe_OneReplicaOwnsApplyAndAStandbyTakesOver runs two `bridge serve`
// replicas on one NATS server: both receive webhooks, exactly one runs apply
// (bridge_sync_owner 1), a webhook sent to the standby is applied by the
// owner, and when the owner stops the standby takes over at once and
// applies what arrives next — each version exactly once.
func TestServe_OneReplicaOwnsApplyAndAStandbyTakesOver(t *testing.T) {
	s := natstest.RunServer(t)
	secret := webhook.NewSecret([]byte("serve-owner-secret-0123456789abcd"))
	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS": secret.Encoded(),
		"BRIDGE_NATS_URL":        s.ClientURL(),
		"BRIDGE_SYNC_LEASE_TTL":  "2s",
	}
	a := startServe(t, env)
	logField(t, a.logs, "sync ownership acquired: this replica runs apply, writeback, results delivery and reconcile", "holder", a.exited)
	b := startServe(t, env)
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()

	_, js := natstest.Connect(t, s)
	applied := func() map[string]int {
		counts := map[string]int{}
		c, err := js.OrderedConsumer(t.Context(), events.StreamApply, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		for {
			batch, err := c.FetchNoWait(100)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range batch.Messages() {
				counts[m.Headers().Get(events.HeaderMsgID)]++
				n++
			}
			if n == 0 {
				return counts
			}
		}
	}
	sysID := "9d385017c611228701d22104cc95c371"
	send := func(to *servedBridge, mc int) {
		t.Helper()
		body := []byte(fmt.Sprintf(`{"table":"incident","sys_id":%q,"action":"update","sys_mod_count":"%d","sys_updated_on":"2026-11-28 10:00:0%d","record":{"state":"2","short_description":"v%d"}}`, sysID, mc, mc, mc))
		if code, answer := to.sendSigned(t, client, secret, events.MsgID("incident", sysID, int64(mc), "update"), body); code != http.StatusAccepted {
			t.Fatalf("webhook v%d: %d %s", mc, code, answer)
		}
	}
	waitApplied := func(mc int) {
		t.Helper()
		id := events.ApplyMsgID("incident", sysID, int64(mc), "update")
		deadline := time.Now().Add(15 * time.Second)
		for applied()[id] == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("version %d not applied within 15s\nA:\n%s\nB:\n%s", mc, a.logs.String(), b.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if oa, ob := syncOwner(t, client, a), syncOwner(t, client, b); oa != "1" || ob != "0" {
		t.Fatalf("bridge_sync_owner: first replica %s, second %s; want 1 and 0", oa, ob)
	}
	send(b, 1) // the standby stores it; the owner applies it
	waitApplied(1)

	a.shutdown(t)
	released := logTime(t, logField(t, a.logs, "sync ownership released", "time", nil))
	acquired := logTime(t, logField(t, b.logs, "sync ownership acquired: this replica runs apply, writeback, results delivery and reconcile", "time", b.exited))
	gap := acquired.Sub(released)
	if gap > time.Second {
		t.Errorf("the standby took over %s after the owner released the lease; a released lease should move within its poll (200ms here)", gap)
	}
	t.Logf("hand-over after the owner's clean stop: %s from release to acquisition", gap)
	if ob := syncOwner(t, client, b); ob != "1" {
		t.Fatalf("bridge_sync_owner on the remaining replica: %s, want 1", ob)
	}
	send(b, 2)
	waitApplied(2)
	for id, n := range applied() {
		if n != 1 {
			t.Errorf("%s applied %d times, want once", id, n)
		}
	}
	b.shutdown(t)
}

// TestServe_TooFewServersForTheReplicasIsAnErrorNotAPanic: a start-up
// failure after connecting to NATS (streams with 3 replicas on one server)
// exits with the error and what to do, after closing the connection.
func TestServe_TooFewServersForTheReplicasIsAnErrorNotAPanic(t *testing.T) {
	s := natstest.RunServer(t)
	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS": webhook.NewSecret([]byte("serve-owner-secret-0123456789abcd")).Encoded(),
		"BRIDGE_NATS_URL":        s.ClientURL(),
		"BRIDGE_STREAM_REPLICAS": "3",
	}
	var errb lockedBuffer
	code := run(t.Context(), []string{"serve", "--listen", "127.0.0.1:0"}, func(k string) string { return env[k] }, strings.NewReader(""), io.Discard, &errb)
	if code == 0 || !strings.Contains(errb.String(), "needs at least that many JetStream servers") {
		t.Fatalf("serve with 3 replicas on one server: exit %d, stderr:\n%s\nwant a non-zero exit naming the cause", code, errb.String())
	}
	if strings.Contains(errb.String(), "panic") {
		t.Fatalf("serve panicked:\n%s", errb.String())
	}
}
