package config

import (
	"slices"
	"testing"

	"github.com/spf13/pflag"
)

// EnvNames is exactly what Load asks the environment for: a deployment file
// naming anything else sets a variable the bridge ignores.
func TestEnvNames_AreTheVariablesLoadReads(t *testing.T) {
	var asked []string
	getenv := func(k string) string {
		if !slices.Contains(asked, k) {
			asked = append(asked, k)
		}
		return ""
	}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	BindFlags(fs)
	if _, err := Load(fs, getenv); err != nil {
		t.Fatalf("Load with an empty environment: %v", err)
	}
	names := EnvNames()
	slices.Sort(asked)
	got := slices.Sorted(slices.Values(names))
	if !slices.Equal(got, asked) {
		t.Errorf("EnvNames() = %v\nLoad reads      %v", got, asked)
	}
	if len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("EnvNames() lists a name twice: %v", got)
	}
	for _, want := range []string{"BRIDGE_CONFIG", "BRIDGE_LISTEN", "BRIDGE_WEBHOOK_SECRETS_FILE", "BRIDGE_NATS_URL_FILE", "BRIDGE_SN_CLIENT_SECRET_FILE"} {
		if !slices.Contains(names, want) {
			t.Errorf("EnvNames() lacks %s", want)
		}
	}
	if slices.Contains(names, "BRIDGE_LISTEN_FILE") {
		t.Error("EnvNames() lists BRIDGE_LISTEN_FILE, but only secrets are read from files")
	}
}
