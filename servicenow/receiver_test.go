package servicenow_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/servicenow"
)

// TestContract_RealReceiverStoresWhatTheRuleSends posts what the real
// scripts send to the bridge's real receiver (internal/inbound on an
// in-process JetStream): every vector is accepted and stored once under its
// webhook-id; the receiver answers a rule signing with a secret it does not
// know with 401.
func TestContract_RealReceiverStoresWhatTheRuleSends(t *testing.T) {
	nodePath(t)
	vf := loadVectors(t)
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	rcv, err := inbound.New(inbound.Config{Conn: nc, Secrets: mustSecrets(t, newSecret, vf.Secret), Tables: servicenow.ShippedTables()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rcv.Handler())
	defer srv.Close()

	now := time.Now().Unix()
	var scs []scenario
	for _, v := range vf.Vectors {
		sc := scenarioFor(decodeEvent(t, v.Event), vf.Secret, now)
		sc.Name = v.Name
		scs = append(scs, sc)
	}
	stranger := scenarioFor(decodeEvent(t, vf.Vectors[0].Event), "whsec_"+webhook.NewSecret(bytes.Repeat([]byte{9}, 32)).KeyBase64(), now)
	stranger.Name = "unknown secret"
	scs = append(scs, stranger)
	res := runNode(t, scs)

	post := func(req shimRequest) int {
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/webhooks/servicenow", bytes.NewReader([]byte(req.Body)))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range req.Headers {
			r.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for _, r := range res[:len(res)-1] {
		req := onlyRequest(t, r)
		if st := post(req); st != http.StatusAccepted {
			t.Errorf("%s: the receiver answered %d, want 202", r.Name, st)
		}
		if st := post(req); st != http.StatusAccepted { // ServiceNow re-sending is harmless
			t.Errorf("%s: the repeat got %d, want 202", r.Name, st)
		}
	}
	if st := post(onlyRequest(t, res[len(res)-1])); st != http.StatusUnauthorized {
		t.Errorf("a rule signing with an unknown secret got %d, want 401", st)
	}

	stream, err := js.Stream(ctx, events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Msgs; got != uint64(len(vf.Vectors)) {
		t.Fatalf("SN_EVENTS holds %d messages, want %d (one per vector, repeats de-duplicated)", got, len(vf.Vectors))
	}
	for i, v := range vf.Vectors {
		msg, err := stream.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if id := msg.Header.Get("Nats-Msg-Id"); id != v.WebhookID {
			t.Errorf("message %d: Nats-Msg-Id %q, want the webhook-id %q", i+1, id, v.WebhookID)
		}
	}
}
