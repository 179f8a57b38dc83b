package events

import "github.com/nowbridge/nowbridge/sdk/wire"

// The app-facing messages are defined once, in the public package sdk/wire,
// which apps import through the SDK; these aliases keep the bridge's
// vocabulary in one place without a second copy of the wire format.

// Actions of a SaaS change message.
const (
	AppUpsert = wire.AppUpsert
	AppDelete = wire.AppDelete
)

// DefaultEntity is the SaaS entity mapped to incident by default.
const DefaultEntity = wire.DefaultEntity

// AppChange is the SaaS app's change message on app.<entity>.<action>, and
// the shape of what the bridge publishes on bridge.apply.<entity>.<action>
// (where SysID, Number and Version = sys_mod_count are set) (SPEC §3).
type AppChange = wire.AppChange

// ApplyMessage is one ServiceNow record version for the app, with its
// entity, action and message id (the body of bridge.apply and of the HTTP
// applier's POST).
type ApplyMessage = wire.ApplyMessage

// ApplyMsgID is the Nats-Msg-Id of a bridge.apply message: one per ServiceNow
// version of a record.
func ApplyMsgID(table, sysID string, version int64, action string) string {
	return wire.ApplyMsgID(table, sysID, version, action)
}

// AppMsgID identifies one SaaS version of an entity.
func AppMsgID(entity, externalID string, version int64, action string) string {
	return wire.AppMsgID(entity, externalID, version, action)
}
