// Package snclient is the bridge's only way to talk to a ServiceNow instance:
// OAuth client credentials with proactive refresh, the Table API, typed
// encoded queries and keyset scans, behind retries, pacing learned from the
// instance's rate limit headers (pace.go) and a circuit breaker. It knows
// HTTP and ServiceNow's quirks (string values, ACL-filtered pages, dropped
// query clauses) and turns them into typed errors and warnings that say what
// to fix; it knows nothing of NATS.
package snclient
