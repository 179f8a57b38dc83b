// Package wire is the message contract between the nowbridge bridge and a
// SaaS app: the app's change message, the ServiceNow versions the bridge
// hands the app, the outcome of every app change, and their subjects,
// streams and message ids. It does no I/O.
//
// It is the one definition of these shapes: the bridge's own vocabulary
// (internal/events) aliases these types and constants, and the app SDK
// (package nowbridge) re-exports them, so the bridge and an app built on the
// SDK cannot disagree about a field. docs/integrating.md describes the
// contract in prose, with ordering and idempotency rules.
package wire
