package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/go-playground/validator/v10"
)

// MaxBatch is the largest array of events one webhook body may carry.
const MaxBatch = 500

// ErrEmptyBody, ErrNotJSON and ErrShape are decoding failures (HTTP 400).
var (
	ErrEmptyBody = errors.New("empty body")
	ErrNotJSON   = errors.New("body is not valid JSON")
	ErrShape     = errors.New("body has the wrong shape")
)

// Problem names one invalid field.
type Problem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// ValidationError lists every invalid field of a body (HTTP 422).
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	parts := make([]string, 0, len(e.Problems))
	for _, p := range e.Problems {
		parts = append(parts, p.Field+": "+p.Message)
	}
	return "invalid event: " + strings.Join(parts, "; ")
}

// ShapeError is a decoding failure that names where the shape was wrong.
type ShapeError struct {
	Field string
	Msg   string
}

func (e *ShapeError) Error() string {
	if e.Field == "" {
		return ErrShape.Error() + ": " + e.Msg
	}
	return fmt.Sprintf("%s: %s: %s", ErrShape, e.Field, e.Msg)
}

func (e *ShapeError) Unwrap() error { return ErrShape }

// Validator validates SNEvents. It is safe for concurrent use.
type Validator struct {
	v      *validator.Validate
	tables map[string]bool
}

// NewValidator returns a validator that accepts only the given tables.
func NewValidator(tables []string) *Validator {
	v := validator.New(validator.WithRequiredStructEnabled())
	v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			return ""
		}
		return name
	})
	must(v.RegisterValidation("sntable", func(fl validator.FieldLevel) bool { return ValidTable(fl.Field().String()) }))
	must(v.RegisterValidation("sysid", func(fl validator.FieldLevel) bool { return ValidSysID(fl.Field().String()) }))
	must(v.RegisterValidation("sntime", func(fl validator.FieldLevel) bool { return validSNTime(fl.Field().String()) }))
	t := make(map[string]bool, len(tables))
	for _, name := range tables {
		t[name] = true
	}
	return &Validator{v: v, tables: t}
}

func must(err error) {
	if err != nil {
		panic(err) // only reachable through a programming error in this file
	}
}

// Validate checks one event; prefix ("[3].") is prepended to field names.
func (v *Validator) Validate(e *SNEvent, prefix string) []Problem {
	var out []Problem
	if err := v.v.Struct(e); err != nil {
		var verrs validator.ValidationErrors
		if !errors.As(err, &verrs) {
			return []Problem{{Field: strings.TrimSuffix(prefix, "."), Message: err.Error()}}
		}
		for _, fe := range verrs {
			field := fe.Namespace()
			if i := strings.IndexByte(field, '.'); i >= 0 {
				field = field[i+1:] // drop the struct name
			}
			out = append(out, Problem{Field: prefix + field, Message: message(fe)})
		}
	}
	if e.Record == nil && (e.Action == ActionInsert || e.Action == ActionUpdate) {
		// An insert or update without its fields would reach the app as a
		// record emptied of everything; only a delete may omit them.
		out = append(out, Problem{Field: prefix + "record", Message: "is required for " + e.Action + " (only a delete may omit it)"})
	}
	if ValidTable(e.Table) && !v.tables[e.Table] {
		out = append(out, Problem{Field: prefix + "table", Message: fmt.Sprintf("table %q is not synced by this bridge (configured: %s)", e.Table, v.tableList())})
	}
	return out
}

func (v *Validator) tableList() string {
	names := make([]string, 0, len(v.tables))
	for n := range v.tables {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func message(fe validator.FieldError) string {
	switch fe.Tag() {
	case "required":
		return "is required"
	case "sntable":
		return "must match ^[a-z][a-z0-9_]{0,79}$"
	case "sysid":
		return "must be 32 lowercase hex characters"
	case "sntime":
		return "must be UTC in the form YYYY-MM-DD HH:MM:SS"
	case "oneof":
		return "must be one of: " + fe.Param()
	case "max":
		return "must be at most " + fe.Param() + " long"
	case "gte":
		return "must be at least " + fe.Param()
	}
	return "fails the " + fe.Tag() + " rule"
}

// DecodeBody parses a webhook body: one event object or an array of up to
// MaxBatch events. It validates every event and returns either all of them or
// an error: *ShapeError / ErrNotJSON / ErrEmptyBody (400) or *ValidationError
// (422) naming each bad field with its array index.
func (v *Validator) DecodeBody(body []byte) ([]SNEvent, error) {
	w, err := v.DecodeWebhook(body)
	for i := range w.Events {
		w.Record(i)
	}
	return w.Events, err
}

// Webhook is a decoded, validated webhook body.
type Webhook struct {
	Events []SNEvent
	// verbatim is the body of its one event when those bytes can be stored
	// as they are: read in full by the fast path, each key once, no source.
	verbatim []byte
	// record is the one event's record while unread (see Record).
	record lazyRecord
}

// Record returns Events[i].Record. DecodeWebhook leaves a single event's
// record unread when it can be stored as sent; Record reads it the first
// time it is asked for (an echo check may need it). Like AppendStored, it
// reads the body DecodeWebhook was given, which must not have changed.
func (w *Webhook) Record(i int) Fields {
	e := &w.Events[i]
	if i == 0 && w.record.raw != nil {
		e.Record = w.record.read()
		w.record = lazyRecord{}
	}
	return e.Record
}

// AppendStored appends the stored form of Events[i], as the receiver stores
// it (source "webhook"), to b: the sender's bytes with the source added
// where the fast path read them in full, else AppendStored's encoding.
// Both decode to the same event; the first costs a copy instead of an
// encoding (sorting the record's keys, quoting every value).
func (w *Webhook) AppendStored(b []byte, i int) []byte {
	if w.verbatim != nil {
		end := bytes.LastIndexByte(w.verbatim, '}')
		b = append(b, w.verbatim[:end]...)
		return append(b, `,"source":"`+SourceWebhook+`"}`...)
	}
	w.Record(i)
	e := w.Events[i]
	e.Source = SourceWebhook
	return AppendStored(b, &e)
}

// DecodeWebhook is DecodeBody, keeping what AppendStored needs and leaving
// a single event's record unread until asked for (see Record).
func (v *Validator) DecodeWebhook(body []byte) (Webhook, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return Webhook{}, ErrEmptyBody
	}
	if body[0] == '{' {
		// The usual body: one event, read and checked without reflection.
		var e SNEvent
		if ok, verbatim, rec := decodeFast(body, &e, true); ok && v.valid(&e, rec) {
			w := Webhook{Events: []SNEvent{e}, record: rec}
			if verbatim {
				w.verbatim = body
			}
			return w, nil
		}
	}
	if !json.Valid(body) {
		return Webhook{}, ErrNotJSON
	}
	var elems []json.RawMessage
	array := body[0] == '['
	switch body[0] {
	case '[':
		if err := json.Unmarshal(body, &elems); err != nil {
			return Webhook{}, &ShapeError{Msg: err.Error()}
		}
		if len(elems) == 0 {
			return Webhook{}, ErrEmptyBody
		}
		if len(elems) > MaxBatch {
			return Webhook{}, &ShapeError{Msg: fmt.Sprintf("array holds %d events, at most %d allowed", len(elems), MaxBatch)}
		}
	case '{':
		elems = []json.RawMessage{body}
	default:
		return Webhook{}, &ShapeError{Msg: "expected an event object or an array of events"}
	}
	out := make([]SNEvent, len(elems))
	var problems []Problem
	for i, raw := range elems {
		// A single object already failed the fast path above.
		if array {
			if ok, _, _ := decodeFast(raw, &out[i], false); ok && v.valid(&out[i], lazyRecord{}) {
				continue
			}
		}
		out[i] = SNEvent{}
		prefix := ""
		if array {
			prefix = fmt.Sprintf("[%d].", i)
		}
		ps, err := decodeOne(raw, &out[i], prefix)
		problems = append(problems, ps...)
		if errors.Is(err, errPartial) {
			continue
		}
		if err != nil {
			return Webhook{}, err
		}
		problems = append(problems, v.Validate(&out[i], prefix)...)
	}
	if len(problems) > 0 {
		return Webhook{}, &ValidationError{Problems: problems}
	}
	return Webhook{Events: out}, nil
}

// wireEvent decodes an event in one pass with the count kept raw, so a bad
// sys_mod_count is a 422 naming the field alongside every other problem of
// the event, rather than a 400 for the whole body.
type wireEvent struct {
	SNEvent
	SysModCount json.RawMessage `json:"sys_mod_count"`
	// Record is decoded on its own, so its problems name "record" whatever
	// path context the JSON package does or does not add to an error an
	// UnmarshalJSON method returns (it differs between Go releases).
	Record json.RawMessage `json:"record"`
}

// decodeOne decodes raw into e. An error is a *ShapeError (400); problems
// name invalid fields (422) and, when empty, e is ready to validate.
func decodeOne(raw json.RawMessage, e *SNEvent, prefix string) ([]Problem, error) {
	if len(raw) == 0 || raw[0] != '{' {
		return nil, &ShapeError{Field: strings.TrimSuffix(prefix, "."), Msg: "each event must be a JSON object"}
	}
	var w wireEvent
	err := json.Unmarshal(raw, &w)
	*e = w.SNEvent
	var te *json.UnmarshalTypeError
	var problems []Problem
	// Type errors do not stop encoding/json, any other error does: only
	// then may an absent count be reported as missing.
	if err == nil || errors.As(err, &te) {
		switch {
		case len(w.SysModCount) == 0:
			problems = append(problems, Problem{Field: prefix + "sys_mod_count", Message: "is required"})
		default:
			if cerr := e.SysModCount.UnmarshalJSON(w.SysModCount); cerr != nil {
				problems = append(problems, Problem{Field: prefix + "sys_mod_count", Message: cerr.Error()})
			}
		}
	}
	if err == nil {
		if rp := decodeRecord(w.Record, e, prefix); rp != nil {
			return append(problems, *rp), errPartial
		}
		return problems, nil
	}
	var fe *FieldValueError
	switch {
	case te != nil:
		// te.Field is a path through wireEvent, which embeds SNEvent.
		problems = append(problems, Problem{Field: prefix + strings.TrimPrefix(te.Field, "SNEvent."), Message: "must be a JSON " + kindName(te.Type) + ", got " + te.Value})
	case errors.As(err, &fe):
		// A record value's error must name the value, not the whole event.
		problems = append(problems, Problem{Field: prefix + "record." + fe.Key, Message: "must be a string, number, boolean, null or an object with \"value\": " + fe.Err.Error()})
	default:
		field := strings.TrimSuffix(prefix, ".")
		if field == "" {
			field = "event"
		}
		problems = append(problems, Problem{Field: field, Message: err.Error()})
	}
	// The event did not decode completely: checking the rest of it would
	// report fields as missing that were merely left undecoded.
	return problems, errPartial
}

var errPartial = errors.New("partially decoded")

// decodeRecord decodes the event's record into e.Record; a problem names
// the record, or the key of the value that is wrong.
func decodeRecord(raw json.RawMessage, e *SNEvent, prefix string) *Problem {
	if len(raw) == 0 {
		return nil
	}
	var rec Fields
	err := rec.UnmarshalJSON(raw)
	if err == nil {
		e.Record = rec
		return nil
	}
	var fe *FieldValueError
	if errors.As(err, &fe) {
		return &Problem{Field: prefix + "record." + fe.Key, Message: "must be a string, number, boolean, null or an object with \"value\": " + fe.Err.Error()}
	}
	if kind := jsonKind(raw); kind != "object" {
		return &Problem{Field: prefix + "record", Message: "must be a JSON object, got " + kind}
	}
	return &Problem{Field: prefix + "record", Message: err.Error()}
}

// jsonKind names the kind of a JSON value by its first byte.
func jsonKind(raw json.RawMessage) string {
	for _, c := range raw {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return "object"
		case '[':
			return "array"
		case '"':
			return "string"
		case 't', 'f':
			return "bool"
		case 'n':
			return "null"
		}
		return "number"
	}
	return "empty"
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Slice:
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return t.Kind().String()
}

func (p *Problem) Error() string { return p.Field + ": " + p.Message }
