package events

import "github.com/nowbridge/nowbridge/sdk/wire"

// Results: for every app change (APP_EVENTS message) the writeback publishes
// one outcome on bridge.result.<entity>.<outcome> (stream BRIDGE_RESULTS).
// The types are defined once, in sdk/wire, for the bridge and the app SDK.
const (
	StreamResults   = wire.StreamResults
	ResultsSubjects = wire.ResultsSubjects
)

// Outcomes of an app change (SPEC §6).
const (
	OutcomeCreated   = wire.OutcomeCreated
	OutcomeUpdated   = wire.OutcomeUpdated
	OutcomeUnchanged = wire.OutcomeUnchanged
	OutcomeStale     = wire.OutcomeStale
	OutcomeConflict  = wire.OutcomeConflict
	OutcomeRejected  = wire.OutcomeRejected
	OutcomeRetrying  = wire.OutcomeRetrying
)

// Outcomes lists every outcome.
var Outcomes = wire.Outcomes

// Result is one outcome of one app change.
type Result = wire.Result

// ResultConflict is one field both sides changed, and what decided it.
type ResultConflict = wire.ResultConflict

// ResultError says why a change was refused or is waiting.
type ResultError = wire.ResultError

// ResultSubject is "bridge.result.<entity>.<outcome>".
func ResultSubject(entity, outcome string) string { return wire.ResultSubject(entity, outcome) }

// ResultMsgID is the Nats-Msg-Id of a result: one per (external id, app
// version, outcome), so a redelivered app change publishes no second result.
func ResultMsgID(entity, externalID string, version int64, outcome string) string {
	return wire.ResultMsgID(entity, externalID, version, outcome)
}

// RecordURL is the record's page on the instance (see wire.RecordURL).
func RecordURL(instance, table, sysID string) string { return wire.RecordURL(instance, table, sysID) }
