package main

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/doctor"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// doctorInstance starts a simulated instance with one incident and returns
// it with its URL.
func doctorInstance(t *testing.T) (*snsim.Server, string) {
	t.Helper()
	sim := snsim.New(snsim.Config{ClientID: "cli", ClientSecret: "s3cr3t-value", Seed: 3})
	srv := httptest.NewServer(sim)
	t.Cleanup(func() { srv.Close(); sim.Close() })
	if _, err := sim.Insert("incident", map[string]string{"short_description": "Email down"}, "admin"); err != nil {
		t.Fatal(err)
	}
	return sim, srv.URL
}

func TestDoctorCmd_ExitStatusAndJSON(t *testing.T) {
	sim, url := doctorInstance(t)
	env := map[string]string{
		"BRIDGE_SN_INSTANCE_URL":  url,
		"BRIDGE_SN_CLIENT_ID":     "cli",
		"BRIDGE_SN_CLIENT_SECRET": "s3cr3t-value",
	}
	code, out, stderr := runTool(t, env, "", "doctor", "--json")
	if code != 0 {
		t.Fatalf("healthy instance: exit %d\n%s\n%s", code, out, stderr)
	}
	var r doctor.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil || !r.OK {
		t.Fatalf("--json: %v %s", err, out)
	}

	sim.SetOAuthMode(snsim.OAuthGrantDisabled)
	code, out, stderr = runTool(t, env, "", "doctor")
	if code != 1 || !strings.Contains(out, "✗ OAuth token exchange") || !strings.Contains(out, "    fix: ") ||
		strings.TrimSpace(stderr) != "bridge: doctor: 1 check(s) failed" {
		t.Errorf("grant disabled: exit %d\nstdout %s\nstderr %q; want 1, a ✗ with its fix, one stderr line", code, out, stderr)
	}
	if strings.Contains(out+stderr, "s3cr3t-value") {
		t.Error("the client secret was printed")
	}
}

func TestDoctorCmd_ShortFlagsAndUsage(t *testing.T) {
	_, url := doctorInstance(t)
	code, out, stderr := runTool(t, map[string]string{}, "", "doctor",
		"--instance-url", url, "--client-id", "cli", "--client-secret", "s3cr3t-value")
	if code != 0 || !strings.Contains(out, "✓ Read incident") {
		t.Errorf("short flags: exit %d\n%s\n%s", code, out, stderr)
	}
	code, _, stderr = runTool(t, map[string]string{}, "", "doctor")
	if code != 1 || !strings.Contains(stderr, "BRIDGE_SN_INSTANCE_URL") {
		t.Errorf("no instance: exit %d, stderr %q; want 1 (a missing setting is a failure, as for serve) naming BRIDGE_SN_INSTANCE_URL", code, stderr)
	}
}

// TestDoctorCmd_InstanceSelfTestFlags: --instance-selftest runs the check,
// BRIDGE_SN_SELFTEST_PATH names the resource, --selftest-path beats it,
// and the report says which path it used and why the instance failed.
func TestDoctorCmd_InstanceSelfTestFlags(t *testing.T) {
	sim, url := doctorInstance(t)
	if err := sim.SetWebhooks(snsim.WebhookTarget{URL: "https://bridge.example.test/webhooks/servicenow", Secrets: []webhook.Secret{webhook.NewSecret(make([]byte, 32))}}); err != nil {
		t.Fatal(err)
	}
	if err := sim.SetSelfTest(snsim.SelfTestOptions{Namespace: "x_77", Unreachable: true}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"BRIDGE_SN_INSTANCE_URL":  url,
		"BRIDGE_SN_CLIENT_ID":     "cli",
		"BRIDGE_SN_CLIENT_SECRET": "s3cr3t-value",
		"BRIDGE_SN_SELFTEST_PATH": "/api/x_77/nowbridge/selftest",
		"BRIDGE_WEBHOOK_SECRETS":  webhook.NewSecret(make([]byte, 32)).Encoded(),
	}
	code, out, _ := runTool(t, env, "", "doctor")
	if code != 0 || !strings.Contains(out, "– Instance self-test") {
		t.Errorf("without --instance-selftest: exit %d, want 0 and the check skipped:\n%s", code, out)
	}
	code, out, _ = runTool(t, env, "", "doctor", "--instance-selftest")
	if code != 1 || !strings.Contains(out, "✗ Instance self-test (the instance signs and sends a test webhook) at /api/x_77/nowbridge/selftest: unreachable bridge") ||
		!strings.Contains(out, "(from BRIDGE_SN_SELFTEST_PATH)") || !strings.Contains(out, "fix: "+doctor.FixSelfTestUnreachable) {
		t.Errorf("unreachable bridge: exit %d, want 1 with the verdict, the path's source and the fix:\n%s", code, out)
	}
	code, out, _ = runTool(t, env, "", "doctor", "--instance-selftest", "--selftest-path", "/api/x_1/nowbridge/selftest")
	if code != 1 || !strings.Contains(out, "at /api/x_1/nowbridge/selftest") || !strings.Contains(out, "fix: "+doctor.FixSelfTestPath) {
		t.Errorf("--selftest-path should beat the environment:\n%s", out)
	}
}
