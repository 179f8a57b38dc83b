package main

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// TestServe_ClusterSurvivesLosingANode runs `bridge serve` against a
// three-node JetStream cluster with replicated streams (the "at scale"
// deployment), then shuts down one node: webhooks keep being stored, since
// a 2xx only needs the quorum's ack.
func TestServe_ClusterSurvivesLosingANode(t *testing.T) {
	nodes := natstest.RunCluster(t, 3)
	secret := webhook.NewSecret([]byte("serve-cluster-secret-0123456789ab"))
	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS": secret.Encoded(),
		"BRIDGE_NATS_URL":        natstest.ClusterURL(nodes),
		"BRIDGE_STREAM_REPLICAS": "3",
	}
	b := startServe(t, env)
	ctx := b.ctx

	client := &http.Client{Transport: &http.Transport{}, Timeout: 15 * time.Second}
	defer client.CloseIdleConnections()
	send := func(mc int) (int, string) {
		sysID := "9d385017c611228701d22104cc95c371"
		body := []byte(fmt.Sprintf(`{"table":"incident","sys_id":%q,"action":"update","sys_mod_count":"%d","sys_updated_on":"2026-11-28 10:00:00","record":{"state":"2"}}`, sysID, mc))
		return b.sendSigned(t, client, secret, events.MsgID("incident", sysID, int64(mc), "update"), body)
	}
	if code, body := send(1); code != http.StatusAccepted {
		t.Fatalf("on a healthy cluster: %d %s", code, body)
	}

	// Lose one node (possibly the stream leader); the others keep quorum.
	nodes[0].Shutdown()
	nodes[0].WaitForShutdown()
	deadline := time.Now().Add(30 * time.Second)
	for mc := 2; ; mc++ {
		code, body := send(mc)
		if code == http.StatusAccepted {
			break
		}
		// While a new stream leader is elected the receiver may say 503
		// with Retry-After; that is the documented answer, never a 5xx of
		// another kind or a 2xx without storage.
		if code != http.StatusServiceUnavailable {
			t.Fatalf("after losing a node: %d %s, want 202 or a transient 503", code, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 202 within 30s of losing one of three nodes: %s\n%s", body, b.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}

	_, js := natstest.Connect(t, nodes[1])
	st, err := js.Stream(ctx, events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.State.Msgs < 2 {
		t.Errorf("SN_EVENTS: replicas %d, %d messages; want 3 replicas holding both webhooks", info.Config.Replicas, info.State.Msgs)
	}

	b.shutdown(t)
}
