package nowbridge

import "github.com/nowbridge/nowbridge/sdk/wire"

// The messages, defined once in package wire for the bridge and the SDK. The
// aliases let an app use them as nowbridge.AppChange and so on; they are the
// very same types.
type (
	// AppChange is the app's change of one record (app.<entity>.<action>).
	AppChange = wire.AppChange
	// ApplyMessage is one ServiceNow version of a record for the app
	// (bridge.apply.<entity>.<action>, or the HTTP applier's POST).
	ApplyMessage = wire.ApplyMessage
	// Fields are field values as strings, keyed by the app's field names.
	Fields = wire.Fields
	// Result is the outcome of one app change (bridge.result.<entity>.<outcome>).
	Result = wire.Result
	// ResultConflict is one field both sides changed, and what decided it.
	ResultConflict = wire.ResultConflict
	// ResultError says why a change was refused or is waiting.
	ResultError = wire.ResultError
	// Handled is what the version guard remembers per record.
	Handled = wire.Handled
)

// Outcomes of an app change (Result.Outcome).
const (
	OutcomeCreated   = wire.OutcomeCreated
	OutcomeUpdated   = wire.OutcomeUpdated
	OutcomeUnchanged = wire.OutcomeUnchanged
	OutcomeStale     = wire.OutcomeStale
	OutcomeConflict  = wire.OutcomeConflict
	OutcomeRejected  = wire.OutcomeRejected
	OutcomeRetrying  = wire.OutcomeRetrying
)

// Actions of an apply message (ApplyMessage.Action): ServiceNow's.
const (
	ActionInsert = wire.ActionInsert
	ActionUpdate = wire.ActionUpdate
	ActionDelete = wire.ActionDelete
)

// DefaultEntity is the entity the bridge's shipped mapping links to
// ServiceNow's incident table.
const DefaultEntity = wire.DefaultEntity
