package wire

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Actions of an app change (app.<entity>.<action>).
const (
	AppUpsert = "upsert"
	AppDelete = "delete"
)

// Actions of a ServiceNow version handed to the app
// (bridge.apply.<entity>.<action>): ServiceNow's own.
const (
	ActionInsert = "insert"
	ActionUpdate = "update"
	ActionDelete = "delete"
)

// DefaultEntity is the app entity mapped to ServiceNow's incident table by
// the mapping the bridge ships.
const DefaultEntity = "ticket"

var entityRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,79}$`)

// ValidEntity reports whether s can name an entity: a lowercase letter, then
// up to 79 lowercase letters, digits or underscores (it is a subject token).
func ValidEntity(s string) bool { return entityRe.MatchString(s) }

// AppChange is the app's change message on app.<entity>.<action>, and the
// shape of what the bridge hands the app (ApplyMessage), where SysID, Number,
// Table are set and Version is ServiceNow's sys_mod_count.
type AppChange struct {
	// ExternalID is the app's id of the record. Required on an app change;
	// "" on an apply message for a record created in ServiceNow that the app
	// has not linked yet.
	ExternalID string `json:"external_id"`
	// SysID is the ServiceNow record's sys_id. On an app change it is
	// optional: set, it links ExternalID to that existing record.
	SysID  string `json:"sys_id"`
	Number string `json:"number,omitempty"` // e.g. INC0010001
	Table  string `json:"table,omitempty"`  // e.g. incident
	// Version orders the changes of one record: the app's version on an app
	// change (newer is larger), sys_mod_count on an apply message.
	Version   int64     `json:"version"`
	UpdatedAt time.Time `json:"updated_at"`
	// Fields are the app-side field names and values (the mapping file
	// translates them to ServiceNow's).
	Fields Fields `json:"fields"`
}

// ApplyMessage is one ServiceNow record version for the app: the body of a
// bridge.apply.<entity>.<action> message (stream BRIDGE_APPLY) and of the
// HTTP applier's POST.
type ApplyMessage struct {
	Entity string `json:"entity"`
	Action string `json:"action"` // ActionInsert, ActionUpdate or ActionDelete
	AppChange
	// MsgID is the message's idempotency key (ApplyMsgID): its Nats-Msg-Id,
	// or the HTTP webhook-id and Idempotency-Key. It is not in the body.
	MsgID string `json:"-"`
}

// Subject is the message's bridge.apply subject.
func (m *ApplyMessage) Subject() string { return ApplySubject(m.Entity, m.Action) }

// Body renders the message as the app receives it.
func (m *ApplyMessage) Body() ([]byte, error) { return json.Marshal(m) }

// RecordKey names the message's record for ordering and the version guard:
// "<table>/<sys_id>", or "<entity>/<external_id>" when the sys_id is unknown.
func (m *ApplyMessage) RecordKey() string {
	if m.SysID != "" {
		table := m.Table
		if table == "" {
			table = m.Entity
		}
		return table + "/" + m.SysID
	}
	if m.ExternalID != "" {
		return m.Entity + "/" + m.ExternalID
	}
	return ""
}

// MsgID is "<table>:<sys_id>:<sys_mod_count>:<action>": the id ServiceNow's
// business rule sends as webhook-id, SN_EVENTS de-duplicates on, and (with
// the same parts) the id of an apply message.
func MsgID(table, sysID string, modCount int64, action string) string {
	var b strings.Builder
	b.Grow(len(table) + len(sysID) + len(action) + 24)
	b.WriteString(table)
	b.WriteByte(':')
	b.WriteString(sysID)
	b.WriteByte(':')
	b.WriteString(strconv.FormatInt(modCount, 10))
	b.WriteByte(':')
	b.WriteString(action)
	return b.String()
}

// ApplyMsgID is the Nats-Msg-Id of a bridge.apply message: one per
// ServiceNow version and action of a record.
func ApplyMsgID(table, sysID string, version int64, action string) string {
	return MsgID(table, sysID, version, action)
}

// AppMsgID is the Nats-Msg-Id of an app change: one per entity, external id,
// app version and action, so a change published twice is stored once.
func AppMsgID(entity, externalID string, version int64, action string) string {
	return entity + ":" + externalID + ":" + strconv.FormatInt(version, 10) + ":" + action
}

// Handled is the last version of a record a consumer handled: what a version
// guard remembers per record.
type Handled struct {
	Version int64 `json:"version"`
	Deleted bool  `json:"deleted,omitempty"`
}

// Supersedes reports whether a message of version v with the given action
// carries news over h: a newer version, or the delete of the version h holds
// (ServiceNow does not bump sys_mod_count on delete, so a delete carries the
// version of the record's last update).
func (h Handled) Supersedes(v int64, action string) bool {
	if v != h.Version {
		return v > h.Version
	}
	return action == ActionDelete && !h.Deleted
}
