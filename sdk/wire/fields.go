package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"unicode/utf8"
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
// usual ServiceNow record. ok is false for
// anything else, valid or not, which then takes encoding/json. Keys and
// values without escapes share one copy of b; a repeated key keeps its last value, as
// encoding/json does.
func plainObject(b []byte) (Fields, bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	// Count the members first: the map is sized once.
	n := 0
	for _, c := range b {
		if c == ':' {
			n++
		}
	}
	all := string(b)
	out := make(Fields, n)
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return out, skipSpace(b, i+1) == len(b)
	}
	for {
		k, next, ok := plainAt(b, all, i)
		if !ok {
			return nil, false
		}
		i = skipSpace(b, next)
		if i >= len(b) || b[i] != ':' {
			return nil, false
		}
		v, next, ok := plainAt(b, all, skipSpace(b, i+1))
		if !ok {
			return nil, false
		}
		out[k] = v
		i = skipSpace(b, next)
		if i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return out, skipSpace(b, i+1) == len(b)
		default:
			return nil, false
		}
	}
}

// plainAt reads the plain string literal at b[i] (a substring of all, the
// same bytes) and returns the index after it.
func plainAt(b []byte, all string, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	start, ascii := i+1, true
	for j := start; j < len(b); j++ {
		c := b[j]
		switch {
		case c == '"':
			if !ascii && !utf8.Valid(b[start:j]) {
				return "", 0, false
			}
			return all[start:j], j + 1, true
		case c == '\\':
			return escapedAt(b, i)
		case c < 0x20:
			return "", 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", 0, false
}

// escapedAt reads the string literal at b[i] that holds an escape (a
// journal entry's "\n"): encoding/json unquotes it.
func escapedAt(b []byte, i int) (string, int, bool) {
	j := i + 1
	for ; j < len(b) && b[j] != '"'; j++ {
		if b[j] == '\\' {
			j++
		}
	}
	if j >= len(b) {
		return "", 0, false
	}
	var s string
	if json.Unmarshal(b[i:j+1], &s) != nil {
		return "", 0, false
	}
	return s, j + 1, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
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
