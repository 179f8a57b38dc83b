// Package servicenow holds what nowbridge installs on a ServiceNow instance:
// the business-rule scripts (business_rules/*.js) and the update set built
// from them (update_set/nowbridge.xml). It generates that XML so the two never
// drift, and its tests run the scripts through Node.js against the bridge's own
// verifier and validator.
package servicenow

import (
	"embed"
	"fmt"
)

//go:generate go run ./gen

//go:embed business_rules/*.js
var sources embed.FS

// Script returns a shipped script by file name (e.g. "NowbridgeWebhook.js").
func Script(name string) (string, error) {
	b, err := sources.ReadFile("business_rules/" + name)
	if err != nil {
		return "", fmt.Errorf("script %s: %w", name, err)
	}
	return string(b), nil
}
