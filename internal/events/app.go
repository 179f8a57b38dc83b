package events

import (
	"strconv"
	"time"
)

// Actions of a SaaS change message.
const (
	AppUpsert = "upsert"
	AppDelete = "delete"
)

// DefaultEntity is the SaaS entity mapped to incident by default.
const DefaultEntity = "ticket"

// AppChange is the SaaS app's change message on app.<entity>.<action>, and
// the shape of what the bridge publishes on bridge.apply.<entity>.<action>
// (where SysID, Number and Version = sys_mod_count are set) (SPEC §3).
type AppChange struct {
	ExternalID string    `json:"external_id"`
	SysID      string    `json:"sys_id"`
	Number     string    `json:"number,omitempty"`
	Table      string    `json:"table,omitempty"`
	Version    int64     `json:"version"`
	UpdatedAt  time.Time `json:"updated_at"`
	Fields     Fields    `json:"fields"`
}

// ApplyMsgID is the Nats-Msg-Id of a bridge.apply message: one per ServiceNow
// version of a record.
func ApplyMsgID(table, sysID string, version int64, action string) string {
	return MsgID(table, sysID, version, action)
}

// AppMsgID identifies one SaaS version of an entity.
func AppMsgID(entity, externalID string, version int64, action string) string {
	return entity + ":" + externalID + ":" + strconv.FormatInt(version, 10) + ":" + action
}
