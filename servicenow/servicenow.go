// Package servicenow holds what nowbridge installs on a ServiceNow instance:
// the business-rule scripts (business_rules/*.js), the self-test's Scripted
// REST resource (rest_api/*.js) and the update set built from them
// (update_set/nowbridge.xml). It generates that XML so the two never drift,
// and its tests run the scripts through Node.js against the bridge's own
// verifier and validator.
package servicenow

import (
	"embed"
	"fmt"
)

//go:generate go run ./gen

//go:embed business_rules/*.js rest_api/*.js
var sources embed.FS

// Script returns a shipped script by file name (e.g. "NowbridgeWebhook.js").
func Script(name string) (string, error) {
	b, err := sources.ReadFile("business_rules/" + name)
	if err != nil {
		return "", fmt.Errorf("script %s: %w", name, err)
	}
	return string(b), nil
}

// RESTScript returns a shipped Scripted REST resource script by file name
// (e.g. "selftest.js").
func RESTScript(name string) (string, error) {
	b, err := sources.ReadFile("rest_api/" + name)
	if err != nil {
		return "", fmt.Errorf("REST resource script %s: %w", name, err)
	}
	return string(b), nil
}
