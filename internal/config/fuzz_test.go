package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// FuzzLoadYAML: any --config file is either loaded or refused with problems
// that each name the file or the setting; never a panic, never a secret's value in the error.
func FuzzLoadYAML(f *testing.F) {
	f.Add("listen: 127.0.0.1:8080\ntables: [incident, problem]\nreconcile_interval: 10m\n")
	f.Add("webhook_secrets: whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0\nconflict_policies:\n  state: servicenow_wins\n")
	f.Add("sn_known_fields:\n  incident: [u_code, u_site]\n  problem: u_code\n")
	f.Add("tables: {a: b}\n")
	f.Add("listen: [a, [b]]\n")
	f.Add("- a\n- b\n")
	f.Add("max_body_bytes: -1\n")
	f.Add("sn_client_secret: hunter2-fuzz-secret\nlisten: :99999\n")
	f.Fuzz(func(t *testing.T, doc string) {
		if strings.Contains(doc, "_file") {
			return // names files to read: not this target's business
		}
		path := filepath.Join(t.TempDir(), "bridge.yaml")
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		fs := pflag.NewFlagSet("fuzz", pflag.ContinueOnError)
		BindFlags(fs)
		_, err := Load(fs, func(k string) string {
			if k == "BRIDGE_CONFIG" {
				return path
			}
			return ""
		})
		if err == nil {
			return
		}
		// Several problems come as several lines (errors.Join; the command
		// prints them on one), each naming the file or the setting it is
		// about.
		msg := err.Error()
		for _, line := range strings.Split(msg, "\n") {
			if !strings.Contains(line, path) && !strings.HasPrefix(line, "BRIDGE_") {
				t.Fatalf("a problem names neither the config file nor a setting: %q (all: %q)", line, msg)
			}
		}
		if strings.Contains(doc, "hunter2-fuzz-secret") && strings.Contains(msg, "hunter2-fuzz-secret") {
			t.Fatalf("a secret's value is in the error: %q", msg)
		}
	})
}
