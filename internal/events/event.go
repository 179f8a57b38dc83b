package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nowbridge/nowbridge/sdk/wire"
)

// Actions of a ServiceNow event.
const (
	ActionInsert = wire.ActionInsert
	ActionUpdate = wire.ActionUpdate
	ActionDelete = wire.ActionDelete
)

// Sources of a ServiceNow event stored in SN_EVENTS.
const (
	SourceWebhook   = "webhook"
	SourceReconcile = "reconcile"
)

// SNTimeLayout is ServiceNow's date-time format (UTC, one-second resolution).
const SNTimeLayout = "2006-01-02 15:04:05"

// SNEvent is one record change sent by a ServiceNow business rule (SPEC §2),
// or synthesized by reconcile.
type SNEvent struct {
	Instance     string   `json:"instance,omitempty" validate:"omitempty,max=100"`
	Table        string   `json:"table" validate:"required,sntable"`
	SysID        string   `json:"sys_id" validate:"required,sysid"`
	Action       string   `json:"action" validate:"required,oneof=insert update delete"`
	SysModCount  ModCount `json:"sys_mod_count" validate:"gte=0"`
	SysUpdatedOn string   `json:"sys_updated_on" validate:"required,sntime"`
	SysUpdatedBy string   `json:"sys_updated_by,omitempty" validate:"max=100"`
	Changed      []string `json:"changed,omitempty" validate:"max=1000,dive,required,max=80"`
	// Record is required for insert and update (absent or null is a 422
	// naming "record"); a delete may omit it.
	Record Fields `json:"record" validate:"max=2000"`
	// Source says who produced the event: "webhook" (default) or "reconcile".
	Source string `json:"source,omitempty" validate:"omitempty,oneof=webhook reconcile"`
}

// MsgID is the JetStream de-duplication id of the event: a webhook and a
// reconcile finding of the same version share it.
func (e *SNEvent) MsgID() string {
	return MsgID(e.Table, e.SysID, int64(e.SysModCount), e.Action)
}

// Subject is the SN_EVENTS subject the event is stored under.
func (e *SNEvent) Subject() string { return SNSubject(e.Table, e.Action) }

// UpdatedAt parses SysUpdatedOn as UTC.
func (e *SNEvent) UpdatedAt() (time.Time, error) {
	return time.ParseInLocation(SNTimeLayout, e.SysUpdatedOn, time.UTC)
}

// ModCount is sys_mod_count. ServiceNow renders it as a string ("4"); a JSON
// number is accepted too. It always marshals as a string, like ServiceNow.
type ModCount int64

// UnmarshalJSON accepts "4" and 4.
func (m *ModCount) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return fmt.Errorf("must be a non-negative integer, got null")
	}
	s := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("must be a non-negative integer, got %.40q", s)
	}
	*m = ModCount(n)
	return nil
}

// MarshalJSON renders the count as a JSON string.
func (m ModCount) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatInt(int64(m), 10) + `"`), nil
}

// Fields holds record values as strings, the way ServiceNow renders them,
// decoded leniently (defined in sdk/wire, shared with the app SDK).
type Fields = wire.Fields

// FieldValueError is a record value that is not a string, number, boolean,
// null or {"value": ...} object.
type FieldValueError = wire.FieldValueError

// FieldString turns one ServiceNow JSON field value into its string form.
func FieldString(v json.RawMessage) (string, error) { return wire.FieldString(v) }
