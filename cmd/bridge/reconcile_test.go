package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/nowbridge/nowbridge/internal/reconcile"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
	"github.com/nowbridge/nowbridge/internal/replay"
)

func TestReconcileOnceAndReplay_FromTheCommandLine(t *testing.T) {
	// Every webhook is lost: only reconcile brings the changes in.
	env := recoverytest.Start(t, recoverytest.Options{DropRate: 1, Seed: 21})
	for i := range 12 {
		if _, err := env.Sim.Insert("incident", map[string]string{"short_description": fmt.Sprintf("Monitor %d flickers", i)}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	vars := map[string]string{
		"BRIDGE_NATS_URL":         env.NC.ConnectedUrl(),
		"BRIDGE_SN_INSTANCE_URL":  env.SimURL,
		"BRIDGE_SN_CLIENT_ID":     "bridge",
		"BRIDGE_SN_CLIENT_SECRET": "s3cret",
		"BRIDGE_APPLIER":          "http",
		"BRIDGE_APPLY_URL":        env.SaaS.URL,
		"BRIDGE_APPLY_SECRET":     env.Secret.Encoded(),
	}
	code, out, stderr := runTool(t, vars, "", "reconcile", "--once", "--json")
	if code != 0 {
		t.Fatalf("reconcile --once: exit %d\n%s\n%s", code, out, stderr)
	}
	var sums []reconcile.Summary
	if err := json.Unmarshal([]byte(out), &sums); err != nil || len(sums) != 1 || sums[0].Gaps != 12 || sums[0].DeleteScan != "ok" {
		t.Fatalf("reconcile --once --json = %s (%v); want 12 gaps in incident", out, err)
	}
	code, out, _ = runTool(t, vars, "", "reconcile", "--once")
	if code != 0 || !strings.Contains(out, "incident") || !strings.Contains(out, "GAPS") {
		t.Fatalf("reconcile --once (text): %d\n%s", code, out)
	}
	if code, _, stderr := runTool(t, vars, "", "reconcile", "--once", "--full", "--since", "2h"); code != 2 || !strings.Contains(stderr, "exclude") {
		t.Fatalf("--full with --since: exit %d, %q; want a usage error", code, stderr)
	}

	// Nothing applied them yet: a dry run says all 12 would be applied,
	// then the replay applies them through the HTTP applier.
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h", "--dry-run", "--json")
	var sum replay.Summary
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil || sum.Selected != 12 || sum.Apply != 12 {
		t.Fatalf("replay --dry-run: %d %s", code, out)
	}
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h")
	if code != 0 || !strings.Contains(out, "12 applied, 0 skipped") {
		t.Fatalf("replay: %d\n%s", code, out)
	}
	if diff := env.Mismatches(nil); len(diff) > 0 {
		t.Fatalf("after reconcile and replay the app differs: %v", diff)
	}
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h")
	if code != 0 || !strings.Contains(out, "0 applied, 12 skipped") {
		t.Fatalf("second replay: %d\n%s", code, out)
	}
	code, _, stderr = runTool(t, vars, "", "replay", "--since", "1h", "--force")
	if code != 2 || !strings.Contains(stderr, "--yes") {
		t.Fatalf("replay --force without an answer: %d %q", code, stderr)
	}
	code, out, _ = runTool(t, vars, "", "replay", "--since", "1h", "--force", "--yes", "--json")
	if err := json.Unmarshal([]byte(out), &sum); code != 0 || err != nil || sum.Applied != 12 {
		t.Fatalf("replay --force --yes: %d %s", code, out)
	}
}
