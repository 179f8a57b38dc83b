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

	"github.com/nowbridge/nowbridge/internal/doctor"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// agreement is one instance configuration that `bridge doctor` and `bridge
// serve` both meet: the doctor's verdict must predict what serve does.
type agreement struct {
	name string
	// setup turns the simulator's least-privilege defaults into the case and
	// may change the bridge's environment; it returns the secret the
	// instance's nowbridge.webhook_secret property holds.
	setup func(sim *snsim.Server, env map[string]string, bridgeSecret webhook.Secret) webhook.Secret
	// The doctor's verdict: exit status, and the status of one check.
	doctorExit   int
	doctorCheck  string
	doctorStatus doctor.Status
	doctorSays   string
	// serve's behaviour, and what its start-up error says when it refuses.
	serve      serveOutcome
	startError string
}

type serveOutcome int

const (
	serveSyncs          serveOutcome = iota // both directions, a resolve included, no dead letter
	serveRefusesToStart                     // exit 1 at start, naming the setting
	serveDeadLetters                        // webhooks applied; app writes refused and dead-lettered once
	serveRejectsHooks                       // every webhook 401: nothing reaches the app
)

func (o serveOutcome) String() string {
	return [...]string{"syncs", "refuses to start", "dead-letters app writes", "rejects webhooks"}[o]
}

// TestDoctorAndServe_AgreeOnEveryFailureMode runs the doctor and then serve
// against the same simulated instance for each failure mode of issue 10,
// and checks that doctor passes exactly when serve works.
func TestDoctorAndServe_AgreeOnEveryFailureMode(t *testing.T) {
	cases := []agreement{
		{name: "healthy (every optional grant)", setup: func(sim *snsim.Server, _ map[string]string, s webhook.Secret) webhook.Secret {
			sim.SetGrants(snsim.Grants{Dictionary: true, AuditDelete: true})
			return s
		}, doctorExit: 0, doctorCheck: "selftest", doctorStatus: doctor.Pass, serve: serveSyncs},
		{name: "sys_dictionary hidden (documented roles)", setup: keep,
			doctorExit: 0, doctorCheck: "dictionary", doctorStatus: doctor.Pass, doctorSays: "not needed", serve: serveSyncs},
		{name: "sys_audit_delete hidden (documented roles)", setup: keep,
			doctorExit: 0, doctorCheck: "audit_delete:incident", doctorStatus: doctor.Warn, doctorSays: "presence scan", serve: serveSyncs},
		{name: "retired close code configured", setup: func(_ *snsim.Server, env map[string]string, s webhook.Secret) webhook.Secret {
			env["BRIDGE_CLOSE_CODE"] = "Solved (Permanently)"
			return s
		}, doctorExit: 1, doctorCheck: "close_code:incident", doctorStatus: doctor.Fail, doctorSays: "valid: ", serve: serveRefusesToStart,
			startError: `BRIDGE_CLOSE_CODE "Solved (Permanently)" is not an active choice of incident.close_code on this instance`},
		{name: "webhook secret property not the bridge's", setup: func(_ *snsim.Server, _ map[string]string, _ webhook.Secret) webhook.Secret {
			return webhook.NewSecret([]byte("another-secret-0123456789abcdef!"))
		}, doctorExit: 1, doctorCheck: "selftest", doctorStatus: doctor.Fail, doctorSays: "secret mismatch: nowbridge.webhook_secret is not one of the bridge's secrets", serve: serveRejectsHooks},
		{name: "no itil", setup: func(sim *snsim.Server, _ map[string]string, s webhook.Secret) webhook.Secret {
			sim.SetACL(snsim.ACL{NoRoles: true})
			return s
		}, doctorExit: 1, doctorCheck: "table:incident", doctorStatus: doctor.Fail, doctorSays: "itil", serve: serveDeadLetters},
		{name: "no OAuth application user", setup: func(sim *snsim.Server, _ map[string]string, s webhook.Secret) webhook.Secret {
			sim.SetOAuthMode(snsim.OAuthNoAppUser)
			return s
		}, doctorExit: 1, doctorCheck: "token", doctorStatus: doctor.Fail, doctorSays: "OAuth Application User", serve: serveRefusesToStart, startError: "rejects the bridge's credentials"},
		{name: "token issued, every API call 401", setup: func(sim *snsim.Server, _ map[string]string, s webhook.Secret) webhook.Secret {
			sim.SetOAuthMode(snsim.OAuthTokenNotAuthenticated)
			return s
		}, doctorExit: 1, doctorCheck: "auth", doctorStatus: doctor.Fail, doctorSays: "OAuth Application User", serve: serveRefusesToStart, startError: "OAuth Application User"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.run(t) })
	}
}

func keep(_ *snsim.Server, _ map[string]string, s webhook.Secret) webhook.Secret { return s }

func (c agreement) run(t *testing.T) {
	secret := webhook.NewSecret([]byte("agreement-secret-0123456789abcdef"))
	sim := snsim.New(snsim.Config{ClientID: "cid", ClientSecret: "csecret", Seed: 11})
	t.Cleanup(sim.Close)
	simSrv := httptest.NewServer(sim)
	t.Cleanup(simSrv.Close)
	for _, d := range []string{"Email down", "VPN flaps"} {
		if _, err := sim.Insert("incident", map[string]string{"short_description": d, "urgency": "2", "impact": "2"}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	// An audited delete, as on any instance in use.
	if err := sim.Delete("incident", sim.IDs("incident")[1], "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS":    secret.Encoded(),
		"BRIDGE_DATA_DIR":           t.TempDir(),
		"BRIDGE_SN_INSTANCE_URL":    simSrv.URL,
		"BRIDGE_SN_CLIENT_ID":       "cid",
		"BRIDGE_SN_CLIENT_SECRET":   "csecret",
		"BRIDGE_RECONCILE_INTERVAL": "0",
	}
	instanceSecret := c.setup(sim, env, secret)

	// The instance self-test needs the bridge running: serve starts first
	// where it can.
	var b *servedBridge
	var natsURL string
	if c.serve == serveRefusesToStart {
		code, _, stderr := runTool(t, env, "", "serve", "--listen", "127.0.0.1:0", "--embedded-nats-listen", "127.0.0.1:0")
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		last := lines[len(lines)-1] // the logs come first
		if code != 1 || !strings.HasPrefix(last, "bridge: ") || !strings.Contains(last, c.startError) {
			t.Fatalf("serve with %s: exit %d, stderr %q; want 1 and one line saying %q", c.name, code, stderr, c.startError)
		}
		if strings.Contains(stderr, "csecret") {
			t.Fatal("the client secret is in serve's error")
		}
	} else {
		b = startServe(t, env, "--embedded-nats-listen", "127.0.0.1:0")
		natsURL = logField(t, b.logs, "embedded NATS JetStream started", "url", b.exited)
		if err := sim.SetWebhooks(snsim.WebhookTarget{URL: "http://" + b.addr + "/webhooks/servicenow", Secrets: []webhook.Secret{instanceSecret}}); err != nil {
			t.Fatal(err)
		}
	}

	code, out, stderr := runTool(t, env, "", "doctor", "--json", "--instance-selftest")
	var report doctor.Report
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("doctor --json: %v\n%s\n%s", err, out, stderr)
	}
	verdict := "none"
	for _, ch := range report.Checks {
		if ch.ID == c.doctorCheck {
			verdict = string(ch.Status) + ": " + ch.Detail
			if ch.Status != c.doctorStatus || !strings.Contains(ch.Detail+" "+ch.Fix, c.doctorSays) {
				t.Errorf("doctor check %s = %s (fix: %s), want %s saying %q", c.doctorCheck, verdict, ch.Fix, c.doctorStatus, c.doctorSays)
			}
		}
	}
	if verdict == "none" {
		t.Errorf("doctor has no check %s: %s", c.doctorCheck, out)
	}
	if code != c.doctorExit {
		t.Errorf("doctor exit %d, want %d (serve %s):\n%s", code, c.doctorExit, c.serve, out)
	}
	if (code == 0) != (c.serve == serveSyncs) {
		t.Errorf("doctor exit %d but serve %s: the doctor must pass exactly when serve works", code, c.serve)
	}
	if c.serve == serveRefusesToStart {
		return
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	applied := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe("bridge.apply.>", applied)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// ServiceNow -> app: a person changes the incident.
	sysID := sim.IDs("incident")[0]
	if _, err := sim.Update("incident", sysID, map[string]string{"state": "2"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-applied:
		if c.serve == serveRejectsHooks {
			t.Fatalf("a webhook signed with another secret reached the app: %s", m.Data)
		}
	case <-time.After(map[bool]time.Duration{true: 3 * time.Second, false: 15 * time.Second}[c.serve == serveRejectsHooks]):
		if c.serve != serveRejectsHooks {
			t.Fatalf("no bridge.apply message within 15s of a human change:\n%s", b.logs.String())
		}
	}
	waitIdle(t, b.ctx, js, events.StreamSN, "apply")

	// App -> ServiceNow: the app resolves the ticket.
	up, _ := json.Marshal(events.AppChange{ExternalID: "TCK-AGREE", SysID: sysID, Version: 2, UpdatedAt: time.Now().UTC(),
		Fields: events.Fields{"status": "resolved"}})
	if err := nc.Publish("app.ticket.upsert", up); err != nil {
		t.Fatal(err)
	}
	resolved := func() bool { r, _ := sim.Get("incident", sysID); return r["state"] == "6" }
	switch c.serve {
	case serveSyncs, serveRejectsHooks:
		eventuallyTrue(t, 15*time.Second, "the app's resolve written to ServiceNow", resolved, b.logs)
		if r, _ := sim.Get("incident", sysID); r["close_code"] == "" || r["close_notes"] == "" {
			t.Errorf("resolved without close fields: %v", r)
		}
		if n := dlqCount(t, b.ctx, js); n != 0 {
			t.Errorf("%d dead letters, want 0", n)
		}
	case serveDeadLetters:
		eventuallyTrue(t, 15*time.Second, "one dead letter", func() bool { return dlqCount(t, b.ctx, js) == 1 }, b.logs)
		if resolved() {
			t.Error("a write the instance refuses changed the record")
		}
	}
	b.shutdown(t)
}

func waitIdle(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, consumer string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		busy := "not found"
		if ci, err := js.Consumer(ctx, stream, consumer); err == nil {
			if info, err := ci.Info(ctx); err == nil {
				if info.NumPending == 0 && info.NumAckPending == 0 {
					return
				}
				busy = fmt.Sprintf("%d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s on %s not idle within 15s (%s)", consumer, stream, busy)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func eventuallyTrue(t *testing.T, within time.Duration, what string, cond func() bool, logs *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s:\n%s", what, within, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dlqCount(t *testing.T, ctx context.Context, js jetstream.JetStream) int {
	t.Helper()
	s, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Msgs)
}
