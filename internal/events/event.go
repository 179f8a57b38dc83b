package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Actions of a ServiceNow event.
const (
	ActionInsert = "insert"
	ActionUpdate = "update"
	ActionDelete = "delete"
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

// Fields holds record values as strings, the way ServiceNow renders them.
// Decoding is lenient on purpose: a number or boolean becomes its text, a
// reference object {"link","value"} or a display_value=all object
// {"display_value","value"} becomes its value, null becomes "".
type Fields map[string]string

// UnmarshalJSON decodes a JSON object into string values.
func (f *Fields) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		*f = nil // "record": null is a missing record, not an empty one
		return nil
	}
	// One pass straight into converted values: this runs for every field of
	// every webhook, and decoding to json.RawMessage first doubled its cost.
	var vals map[string]fieldValue
	if err := json.Unmarshal(b, &vals); err != nil {
		var bad *badFieldValue
		if !errors.As(err, &bad) {
			return err
		}
		return fieldsSlow(b) // find which key holds the bad value
	}
	out := make(Fields, len(vals))
	for k, v := range vals {
		out[k] = string(v)
	}
	*f = out
	return nil
}

// fieldValue decodes one record value with FieldString.
type fieldValue string

type badFieldValue struct{ err error }

func (e *badFieldValue) Error() string { return e.err.Error() }

func (v *fieldValue) UnmarshalJSON(b []byte) error {
	s, err := FieldString(b)
	if err != nil {
		return &badFieldValue{err}
	}
	*v = fieldValue(s)
	return nil
}

// fieldsSlow reports the first bad value of an object with its key.
func fieldsSlow(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if _, err := FieldString(raw[k]); err != nil {
			return &FieldValueError{Key: k, Err: err}
		}
	}
	return nil
}

// FieldValueError is a record value that is not a string, number, boolean,
// null or {"value": ...} object.
type FieldValueError struct {
	Key string
	Err error
}

func (e *FieldValueError) Error() string { return fmt.Sprintf("field %q: %v", e.Key, e.Err) }
func (e *FieldValueError) Unwrap() error { return e.Err }

// FieldString turns one ServiceNow JSON field value into its string form.
func FieldString(v json.RawMessage) (string, error) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || bytes.Equal(v, []byte("null")) {
		return "", nil
	}
	switch v[0] {
	case '"':
		if s, ok := plainString(v); ok {
			return s, nil
		}
		var s string
		err := json.Unmarshal(v, &s)
		return s, err
	case '{':
		var ref struct {
			Value *json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(v, &ref); err != nil {
			return "", err
		}
		if ref.Value == nil {
			return "", fmt.Errorf("object without a \"value\" member")
		}
		return FieldString(*ref.Value)
	case '[':
		return "", fmt.Errorf("arrays are not field values")
	default: // number, true, false
		var n json.Number
		if bytes.Equal(v, []byte("true")) || bytes.Equal(v, []byte("false")) {
			return string(v), nil
		}
		if err := json.Unmarshal(v, &n); err != nil {
			return "", err
		}
		return n.String(), nil
	}
}

// plainString returns the contents of a JSON string literal that needs no
// unescaping (no backslash, no control character, valid UTF-8): most
// ServiceNow values. Anything else goes through encoding/json.
func plainString(v []byte) (string, bool) {
	if len(v) < 2 || v[len(v)-1] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	for _, c := range inner {
		if c < 0x20 || c == '\\' || c == '"' {
			return "", false
		}
	}
	if !utf8.Valid(inner) {
		return "", false
	}
	return string(inner), true
}
