// Package apply carries ServiceNow changes to the SaaS app: a durable
// JetStream consumer on SN_EVENTS maps each record version through the
// mapping files and hands it to an applier (a NATS subject or an HTTP
// endpoint), once and in order per record. The last applied sys_mod_count
// per record in bridge_state makes redelivery, replay and reconcile
// idempotent.
//
// # What the app receives
//
// One message per ServiceNow record version, on bridge.apply.<entity>.<action>
// (NATS applier) or as a POST to BRIDGE_APPLY_URL (HTTP applier). action is
// ServiceNow's: insert, update or delete. The body is the app change shape of
// SPEC §3 plus the entity and action:
//
//	{"entity":"ticket","action":"update","external_id":"TCK-1042",
//	 "sys_id":"9d38...c371","number":"INC0010001","table":"incident",
//	 "version":4,"updated_at":"2026-11-28T10:00:00Z",
//	 "fields":{"title":"Email down","status":"in_progress","priority":"2"}}
//
// version is ServiceNow's sys_mod_count; external_id is "" for a record
// created in ServiceNow that the app has not linked yet. The message id
// (Nats-Msg-Id, and the HTTP webhook-id and Idempotency-Key) is
// "<table>:<sys_id>:<sys_mod_count>:<action>" and never changes across
// redeliveries. A delete carries the same version as the record's last
// update (ServiceNow does not bump sys_mod_count on delete), under its own id.
//
// The app should apply a version only when it is newer than the one it holds
// (and answer 409 over HTTP when it already holds a newer one): the bridge
// never sends versions of one record out of order, but two bridge replicas
// racing on one record can, rarely, each send one.
package apply

import (
	"context"
	"fmt"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
)

// Message is one ServiceNow record version for the app: entity, action,
// the app change shape and MsgID (events.ApplyMsgID), with Subject and Body.
// It is the app SDK's ApplyMessage (sdk/wire), so the bridge and the apps
// share one definition of what the app receives.
type Message = events.ApplyMessage

// Result is what an applier learned from the app.
type Result struct {
	// ExternalID is the app's id for the record when the app said it (HTTP
	// response {"external_id": ...}); the pipeline stores the link.
	ExternalID string
	// AlreadyNewer is true when the app said it holds a newer version (409).
	AlreadyNewer bool
	// Duplicate is true when the app side already had this very message
	// (BRIDGE_APPLY dropped the republished Nats-Msg-Id).
	Duplicate bool
	// Seq is the message's BRIDGE_APPLY sequence (the NATS applier; for a
	// duplicate, the first copy's), 0 when the applier has none.
	Seq uint64
}

// Applier hands one message to the app. It returns nil once the app has the
// message. A failure says what retrying can do with consume's constructors:
// consume.Permanent (the app rejected the message: dead letter, with the
// app's status and response), consume.RetryAfter (the app asked to come
// back later); any other error (network, NATS) is classified by
// consume.Classify and retried.
type Applier interface {
	Apply(ctx context.Context, m *Message) (Result, error)
	// Name labels metrics and logs ("nats", "http").
	Name() string
}

// HintAppRejected is a dead letter's hint when the app refused a version.
const HintAppRejected = "the app rejected this version; fix the app or the mapping, then `bridge dlq retry`"

// permanentf is a failure no retry can cure: the event is dead-lettered.
func permanentf(format string, a ...any) error {
	return consume.Permanent(fmt.Errorf(format, a...), "")
}

// LinkWriter stores the app's id on the ServiceNow record
// (correlation_id / correlation_display), so the link survives losing the
// bridge_links bucket. An implementation should register its write with the
// echo-suppression cache (dedupe.BeginWrite), or the version it creates
// comes back to the app as a change.
type LinkWriter interface {
	SetCorrelation(ctx context.Context, table, sysID, externalID string) error
}

// EchoChecker tells whether a ServiceNow event is the echo of the bridge's
// own write (dedupe.Cache satisfies it).
type EchoChecker interface {
	IsEcho(ev *events.SNEvent) bool
}

// AppliedRecorder remembers the fields handed to the app so the app's echo
// of them is not written back (dedupe.Cache satisfies it).
type AppliedRecorder interface {
	RecordApplied(entity, id string, fields map[string]string)
}
