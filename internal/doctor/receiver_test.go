package doctor_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/doctor"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// TestDoctor_WebhookCheckAgainstTheRealReceiver: the probe passes against
// the bridge's own receiver and stores nothing; with other secrets it fails.
func TestDoctor_WebhookCheckAgainstTheRealReceiver(t *testing.T) {
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	key := webhookKey(t, 1)
	rcv, err := inbound.New(inbound.Config{Conn: nc, Secrets: []webhook.Secret{key}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rcv.Handler())
	defer srv.Close()

	in := newInstance(t, nil)
	opt := in.options()
	opt.WebhookURL, opt.WebhookSecrets = srv.URL+"/webhooks/servicenow", []webhook.Secret{key}
	r := run(t, "webhook: real receiver", opt)
	expect(t, r, "webhook", doctor.Pass, "signed probe accepted (422", "")

	opt.WebhookSecrets = []webhook.Secret{webhookKey(t, 2)}
	r = run(t, "webhook: real receiver, other secret", opt)
	expect(t, r, "webhook", doctor.Fail, "got 401", "rejects our signature")

	stream, err := js.Stream(ctx, events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("the doctor's probes stored %d messages in SN_EVENTS, want 0", info.State.Msgs)
	}
}
