// Package helpdesk is nowbridge's reference app: a small helpdesk with its
// own SQLite store and a server-rendered page, synced with ServiceNow
// through the bridge with the Go SDK (sdk/nowbridge).
//
// It shows what every app on the bridge does: each local change is written
// with a transactional outbox and published as app.ticket.upsert with a
// version that grows per ticket; the bridge's results (bridge.result.>)
// say per version whether the change reached ServiceNow, with the INC
// number and link, or why it was refused; ServiceNow's own changes arrive on
// bridge.apply.> and are applied under the version guard (a sys_mod_count
// older than the one applied changes nothing), without undoing a field the
// user changed while that change is still on its way.
//
// Run it beside `bridge dev` with `bridge dev --app`, or alone with
// `go run ./examples/helpdesk/cmd/helpdesk --nats-url nats://127.0.0.1:4222`.
package helpdesk
