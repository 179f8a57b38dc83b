// Package events is the bridge's vocabulary: the ServiceNow webhook event, the
// SaaS change message, subjects, message ids and stream definitions.
// It does no I/O. Of this module it imports only the public sdk/wire, where the
// messages an app sees are defined once (events aliases them) so that the app
// SDK can share them; every adapter can depend on it without depending on
// each other.
package events
