package doctor_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/doctor"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// TestDoctor_InstanceSelfTestVerdicts runs `doctor --instance-selftest`
// against the simulator, whose self-test resource posts to the bridge's
// real receiver, for each way the instance side can be wrong: every verdict
// names its cause and fix, and nothing reaches SN_EVENTS.
func TestDoctor_InstanceSelfTestVerdicts(t *testing.T) {
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	key := webhookKey(t, 1)
	reg := prometheus.NewRegistry()
	rcv, err := inbound.New(inbound.Config{Conn: nc, Secrets: []webhook.Secret{key}, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	bridge := httptest.NewServer(rcv.Handler())
	defer bridge.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()

	in := newInstance(t, nil)
	in.sim.SetGrants(snsim.Grants{Dictionary: true, AuditDelete: true}) // only the self-test is under test here
	if err := in.sim.SetWebhooks(snsim.WebhookTarget{URL: bridge.URL + inbound.Path, Secrets: []webhook.Secret{key}}); err != nil {
		t.Fatal(err)
	}
	defaultPath := events.SelfTestPath(events.SelfTestNamespace)
	cases := []struct {
		name        string
		knobs       snsim.SelfTestOptions
		path        string // --selftest-path
		status      doctor.Status
		detail, fix string
	}{
		{"healthy", snsim.SelfTestOptions{}, "", doctor.Pass,
			"the bridge at " + bridge.URL + inbound.Path + " verified it (202", ""},
		{"property holds another secret", snsim.SelfTestOptions{Secret: snsim.SelfTestSecretOther}, "", doctor.Fail,
			"secret mismatch: nowbridge.webhook_secret is not one of the bridge's secrets; the bridge at " + bridge.URL + inbound.Path + " answered 401", doctor.FixSelfTestSecret},
		{"property still encrypted", snsim.SelfTestOptions{Secret: snsim.SelfTestSecretEncrypted}, "", doctor.Fail,
			"secret mismatch (the property is still encrypted)", doctor.FixSelfTestEncrypted},
		{"property empty", snsim.SelfTestOptions{Secret: snsim.SelfTestSecretEmpty}, "", doctor.Fail,
			"nowbridge.webhook_secret is empty", doctor.FixSelfTestSecret},
		{"generateMac signs ISO-8859-1", snsim.SelfTestOptions{MacCharset: events.CharsetLatin1}, "", doctor.Fail,
			"charset mismatch (the signature or text fails only because of non-ASCII characters): the bridge at " + bridge.URL + inbound.Path + " answered 401: the signature matches the signed text encoded as ISO-8859-1", doctor.FixSelfTestCharset},
		{"generateMac signs windows-1252", snsim.SelfTestOptions{MacCharset: events.CharsetCP1252}, "", doctor.Fail,
			"encoded as windows-1252", doctor.FixSelfTestCharset},
		{"bridge unreachable", snsim.SelfTestOptions{Unreachable: true}, "", doctor.Fail,
			"unreachable bridge: the instance's call to " + bridge.URL + inbound.Path + " failed: Request not sent to uri= " + bridge.URL + inbound.Path + " : java.net.ConnectException: Connection refused", doctor.FixSelfTestUnreachable},
		{"bridge down", snsim.SelfTestOptions{WebhookURL: dead.URL + inbound.Path}, "", doctor.Fail,
			"unreachable bridge: the instance's call to " + dead.URL + inbound.Path + " failed", doctor.FixSelfTestUnreachable},
		{"webhook_url points elsewhere", snsim.SelfTestOptions{WebhookURL: bridge.URL + "/hooks"}, "", doctor.Fail,
			"answered 404", doctor.FixWebhookPath},
		{"role missing", snsim.SelfTestOptions{NoRole: true}, "", doctor.Fail,
			"403 User Not Authorized", doctor.FixSelfTestRole},
		{"update set missing", snsim.SelfTestOptions{Missing: true}, "", doctor.Fail,
			"400 Requested URI does not represent any resource", doctor.FixSelfTestMissing},
		{"another namespace, API record readable", snsim.SelfTestOptions{Namespace: "x_1234567", DefinitionReadable: true}, "", doctor.Pass,
			"(from sys_ws_definition)", ""},
		{"another namespace, API record hidden", snsim.SelfTestOptions{Namespace: "x_1234567"}, "", doctor.Fail,
			"(the update set's default namespace; sys_ws_definition is not readable to the integration user)", doctor.FixSelfTestMissing},
		{"another namespace, path configured", snsim.SelfTestOptions{Namespace: "x_1234567"}, events.SelfTestPath("x_1234567"), doctor.Pass,
			"(from BRIDGE_SN_SELFTEST_PATH)", ""},
		{"path configured wrong", snsim.SelfTestOptions{}, "/api/x_9/nowbridge/selftest", doctor.Fail,
			"POST /api/x_9/nowbridge/selftest (from BRIDGE_SN_SELFTEST_PATH)", doctor.FixSelfTestPath},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := in.sim.SetSelfTest(c.knobs); err != nil {
				t.Fatal(err)
			}
			opt := in.options()
			opt.InstanceSelfTest, opt.SelfTestPath = true, c.path
			r := run(t, "selftest: "+c.name, opt)
			expect(t, r, "selftest", c.status, c.detail, c.fix)
			title := check(t, r, "selftest").Title
			want := defaultPath
			switch {
			case c.path != "":
				want = c.path
			case c.knobs.DefinitionReadable:
				want = events.SelfTestPath(c.knobs.Namespace)
			}
			if !strings.HasSuffix(title, " at "+want) {
				t.Errorf("title %q does not say the path used (%s)", title, want)
			}
		})
	}

	// Without the flag the check is skipped and the instance sends nothing.
	if err := in.sim.SetSelfTest(snsim.SelfTestOptions{}); err != nil {
		t.Fatal(err)
	}
	calls := in.sim.SelfTestCalls()
	r := run(t, "selftest: not asked for", in.options())
	expect(t, r, "selftest", doctor.Skip, "pass --instance-selftest", "")
	if in.sim.SelfTestCalls() != calls {
		t.Error("the doctor ran the self-test without --instance-selftest")
	}

	stream, err := js.Stream(ctx, events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("self-tests stored %d messages in SN_EVENTS, want 0", info.State.Msgs)
	}
	resp, err := http.Get(bridge.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`bridge_webhook_selftests_total{result="ok"} 3`,
		`bridge_webhook_selftests_total{result="secret_mismatch"} 1`,
		`bridge_webhook_selftests_total{result="secret_encrypted"} 1`,
		`bridge_webhook_selftests_total{result="charset"} 2`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("the bridge's /metrics lack %q", want)
		}
	}
}

// TestDoctor_InstanceSelfTestSkippedWithoutToken: when the token exchange
// fails, the self-test is reported as skipped, not run.
func TestDoctor_InstanceSelfTestSkippedWithoutToken(t *testing.T) {
	in := newInstance(t, nil)
	in.sim.SetOAuthMode(snsim.OAuthNoAppUser)
	opt := in.options()
	opt.InstanceSelfTest = true
	r := run(t, "selftest: no token", opt)
	expect(t, r, "selftest", doctor.Skip, "needs a token", "", "token")
	if in.sim.SelfTestCalls() != 0 {
		t.Error("the self-test ran without a token")
	}
}

// TestDoctor_InstanceSelfTestWithoutWebhookURL: the instance sends nothing
// while nowbridge.webhook_url is empty, and the doctor says to set it.
func TestDoctor_InstanceSelfTestWithoutWebhookURL(t *testing.T) {
	in := newInstance(t, nil) // no business-rule endpoint configured
	in.sim.SetGrants(snsim.Grants{Dictionary: true, AuditDelete: true})
	opt := in.options()
	opt.InstanceSelfTest = true
	r := run(t, "selftest: no webhook URL", opt)
	expect(t, r, "selftest", doctor.Fail, "nothing sent: property nowbridge.webhook_url is empty", doctor.FixSelfTestURL)
}
