// Package events is the bridge's vocabulary: the ServiceNow webhook event, the
// SaaS change message, subjects, message ids and stream definitions.
// It does no I/O and imports nothing else of this module, so every adapter can
// depend on it without depending on each other.
package events
