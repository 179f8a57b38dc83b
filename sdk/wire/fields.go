package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"unicode/utf8"

	"github.com/nowbridge/nowbridge/internal/jsonscan"
)

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
	// This runs for every field of every webhook. Most records are an
	// object of plain strings: those take a scan that allocates the map and
	// one string; anything else takes encoding/json below, which decodes
	// straight into converted values.
	if out, ok := plainObject(b); ok {
		*f = out
		return nil
	}
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

// plainObject decodes an object whose keys and values are all strings, the
// usual ServiceNow record. ok is false for anything else, valid or not, which
// then takes encoding/json. Keys and values without escapes share one copy of
// b; a repeated key keeps its last value, as encoding/json does.
func plainObject(b []byte) (Fields, bool) {
	out, next, ok := jsonscan.Object(b, string(b), jsonscan.Space(b, 0))
	if !ok || jsonscan.Space(b, next) != len(b) {
		return nil, false
	}
	return out, true
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
