// Package mapping describes each synced ServiceNow table completely, as one
// YAML file per table: its SaaS entity, parent tables, link, field and value
// maps, and what the platform does on a write (journal, derived and
// insert-filled fields, the close rule, the delete behaviour). Every other
// package reads ServiceNow table knowledge from here; the package parses
// bytes and maps values, with no I/O beyond reading an fs.FS it is given.
package mapping

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Direction says which way a field pair syncs.
type Direction string

// Directions.
const (
	Both         Direction = "both"
	ToServiceNow Direction = "to_servicenow" // written to ServiceNow, never sent to the app (journal fields)
	ToSaaS       Direction = "to_saas"       // sent to the app, never written back
)

func (d Direction) toSaaS() bool       { return d == Both || d == ToSaaS }
func (d Direction) toServiceNow() bool { return d == Both || d == ToServiceNow }

// The link fields of a mapping without a link key: task's, which every
// table extending task has.
const (
	DefaultLinkField        = "correlation_id"
	DefaultLinkDisplayField = "correlation_display"
)

// StateField is the field a close rule and a resolve-mode delete read and
// set: every table that extends task keeps its state there.
const StateField = "state"

// Field is one saas <-> servicenow pair.
type Field struct {
	SaaS       string
	ServiceNow string
	Direction  Direction
	// Values maps SaaS values to ServiceNow values (e.g. in_progress -> 2);
	// nil when values pass unchanged.
	Values map[string]string
	Line   int // line of the pair in its file, for messages

	fromSN map[string]string // ServiceNow value -> SaaS value
}

// ValueToSaaS maps a ServiceNow value; ok is false when a value map exists
// and does not know v (v is then passed through).
func (f *Field) ValueToSaaS(v string) (string, bool) {
	if f.Values == nil {
		return v, true
	}
	if s, ok := f.fromSN[v]; ok {
		return s, true
	}
	return v, v == ""
}

// ValueToServiceNow maps a SaaS value; ok is false when a value map exists
// and does not know v.
func (f *Field) ValueToServiceNow(v string) (string, bool) {
	if f.Values == nil {
		return v, true
	}
	if s, ok := f.Values[v]; ok {
		return s, true
	}
	return v, v == ""
}

// FieldKind says what the platform does with a field of a table on a
// write; a field may be several kinds (incident_state is derived on an
// update and filled on an insert).
type FieldKind uint8

// Field kinds.
const (
	// KindJournal: a write appends an entry; a read renders every entry (or
	// nothing), never the value written.
	KindJournal FieldKind = 1 << iota
	// KindDerived: the platform sets it as a side effect of a write
	// (incident: priority from impact and urgency, active from state).
	KindDerived
	// KindInsertFill: an insert fills it whatever was sent (the number,
	// defaults, the opener).
	KindInsertFill
)

// Journal reports whether a write appends to the field.
func (k FieldKind) Journal() bool { return k&KindJournal != 0 }

// Derived reports whether the platform sets the field as a side effect of a write.
func (k FieldKind) Derived() bool { return k&KindDerived != 0 }

// FilledOnInsert reports whether an insert fills the field whatever was sent.
func (k FieldKind) FilledOnInsert() bool { return k&KindInsertFill != 0 }

// systemKind is what every table's system fields are: the platform stamps
// the version fields on every write and fills every sys_ field on insert.
func systemKind(field string) FieldKind {
	switch field {
	case "sys_updated_on", "sys_updated_by", "sys_mod_count":
		return KindDerived | KindInsertFill
	}
	if strings.HasPrefix(field, "sys_") {
		return KindInsertFill
	}
	return 0
}

// DeleteMode says what an app delete does in ServiceNow.
type DeleteMode string

// Delete modes.
const (
	// DeleteResolve sets Delete.State (with the close rule's fields when
	// that state closes): the record, its history and its SLAs stay.
	DeleteResolve DeleteMode = "resolve"
	// DeleteRecord deletes the record (DELETE /api/now/table/...).
	DeleteRecord DeleteMode = "delete"
)

// Valid reports whether m is a known mode.
func (m DeleteMode) Valid() bool { return m == DeleteResolve || m == DeleteRecord }

// Delete is what an app delete does to a record of the table by default.
// The zero value (no delete key in the file) says nothing: the writeback
// refuses such deletes unless BRIDGE_WRITEBACK_DELETE decides.
type Delete struct {
	Mode  DeleteMode
	State string // the state DeleteResolve sets
	// CloseCode is the close code a resolve-mode delete prefers when State
	// closes the record (problem: canceled); the instance's active choices
	// still decide, as for every close.
	CloseCode string
	Line      int // line of the delete key, for messages
}

// Table is the mapping of one ServiceNow table to one SaaS entity.
type Table struct {
	Name   string // ServiceNow table
	Entity string // SaaS entity
	// Parents are the tables Name extends, nearest first: ServiceNow
	// defines inherited fields (incident's number, state...) on them.
	Parents []string
	// LinkField is the ServiceNow field holding the app's external_id;
	// LinkDisplayField names the linked system for ServiceNow users. A file
	// without a link key gets DefaultLinkField and DefaultLinkDisplayField;
	// a link key sets exactly what it names.
	LinkField        string
	LinkDisplayField string
	Fields           []Field
	// Journal, Derived and InsertFills list the fields of each kind, as
	// the file names them (Kind answers for one field, system fields too).
	Journal     []string
	Derived     []string
	InsertFills []string
	// Close says which states close a record and which fields ServiceNow's
	// data policy requires with them; nil when the table has no such rule.
	Close *Close
	// Delete is what an app delete does by default.
	Delete Delete
	Source string // file name, for messages

	bySaaS   map[string]*Field
	bySN     map[string]*Field
	kinds    map[string]FieldKind
	snFields []string
}

// Kind says what the platform does with field on a write.
func (t *Table) Kind(field string) FieldKind { return t.kinds[field] | systemKind(field) }

// StateValues lists the ServiceNow values of the state field's value map,
// sorted; nil when the mapping does not map the state field's values.
func (t *Table) StateValues() []string {
	f, ok := t.bySN[StateField]
	if !ok || f.Values == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(f.fromSN))
}

// Close is a table's closing rule: a write that moves a record into one of
// States must carry CodeField and the notes fields of its code (incident:
// close_code and close_notes, a data policy that applies to REST too).
// CodeField is a choice field: its active sys_choice rows are the valid
// codes, and the first of PreferredCodes that is active is the default one.
type Close struct {
	States    []string
	CodeField string
	// NotesField is the first of NotesFields ("" when only NotesByCode
	// names notes fields).
	NotesField string
	// NotesFields are the text fields a close needs whatever its code.
	NotesFields []string
	// NotesByCode replaces NotesFields for the codes it lists (problem:
	// fix_applied needs cause_notes and fix_notes, canceled close_notes).
	NotesByCode    map[string][]string
	PreferredCodes []string
}

// NotesFor lists the notes fields a close with code needs.
func (c *Close) NotesFor(code string) []string {
	if fs, ok := c.NotesByCode[code]; ok {
		return fs
	}
	return c.NotesFields
}

// AllNotes lists every notes field the rule names, sorted.
func (c *Close) AllNotes() []string {
	set := map[string]bool{}
	for _, f := range c.NotesFields {
		set[f] = true
	}
	for _, fs := range c.NotesByCode {
		for _, f := range fs {
			set[f] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// ErrCloseCode wraps every reason Pick finds no usable close code; retrying
// does not fix any of them.
var ErrCloseCode = errors.New("no valid close code")

// Pick chooses the close code from the code field's active choices (in
// sys_choice order): override when it is one of them (an error naming the
// valid ones when not: ServiceNow would drop it silently and the data policy
// refuse the write), else the first preferred code that is active, else the
// first active choice.
func (c *Close) Pick(table string, active []string, override string) (string, error) {
	if len(active) == 0 {
		return "", fmt.Errorf("%w: %s.%s has no active choices in sys_choice; set BRIDGE_CLOSE_CODE to a value the instance accepts", ErrCloseCode, table, c.CodeField)
	}
	if override != "" {
		if slices.Contains(active, override) {
			return override, nil
		}
		q := make([]string, len(active))
		for i, v := range active {
			q[i] = strconv.Quote(v)
		}
		return "", fmt.Errorf("%w: BRIDGE_CLOSE_CODE %q is not an active choice of %s.%s on this instance (ServiceNow would drop it and refuse the resolve); valid: %s",
			ErrCloseCode, override, table, c.CodeField, strings.Join(q, ", "))
	}
	for _, p := range c.PreferredCodes {
		if slices.Contains(active, p) {
			return p, nil
		}
	}
	return active[0], nil
}

// Closes reports whether state is one of the closing states.
func (c *Close) Closes(state string) bool { return c != nil && slices.Contains(c.States, state) }

// Preferring returns a copy of c whose preferred codes start with code
// (a delete's own close code); c itself when code is "" or c is nil.
func (c *Close) Preferring(code string) *Close {
	if c == nil || code == "" {
		return c
	}
	out := *c
	out.PreferredCodes = append([]string{code}, slices.DeleteFunc(slices.Clone(c.PreferredCodes), func(p string) bool { return p == code })...)
	return &out
}

// FieldByServiceNow returns the pair of a ServiceNow field name.
func (t *Table) FieldByServiceNow(name string) (*Field, bool) { f, ok := t.bySN[name]; return f, ok }

// ToSaaS maps a ServiceNow record to the app's field names and values.
// Only pairs that sync towards the app are included; the link field, system
// fields and fields the mapping does not name are left out (unknown returns
// the names of the latter, sorted, for a debug log). A value the value map
// does not know passes through unchanged and is listed in unmapped.
func (t *Table) ToSaaS(record map[string]string) (fields map[string]string, unknown, unmapped []string) {
	fields = make(map[string]string, len(t.Fields))
	for name, v := range record {
		f, ok := t.bySN[name]
		if !ok {
			if name != t.LinkField && name != t.LinkDisplayField && name != "number" && !strings.HasPrefix(name, "sys_") {
				unknown = append(unknown, name)
			}
			continue
		}
		if !f.Direction.toSaaS() {
			continue
		}
		mv, known := f.ValueToSaaS(v)
		if !known {
			unmapped = append(unmapped, name+"="+v)
		}
		fields[f.SaaS] = mv
	}
	sort.Strings(unknown)
	sort.Strings(unmapped)
	return fields, unknown, unmapped
}

// ToServiceNow maps the app's fields to ServiceNow names and values. Pairs
// that sync only towards the app, and fields the mapping does not name, are
// left out (unknown lists the latter, sorted). A value the value map does not
// know is an error: ServiceNow would store it as is, or reject it.
func (t *Table) ToServiceNow(fields map[string]string) (out map[string]string, unknown []string, err error) {
	out = make(map[string]string, len(fields))
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		v := fields[name]
		f, ok := t.bySaaS[name]
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		if !f.Direction.toServiceNow() {
			continue
		}
		mv, known := f.ValueToServiceNow(v)
		if !known {
			errs = append(errs, fmt.Errorf("%s %s: value %q of field %s is not in its value map (%s line %d; known: %s)",
				t.Entity, t.Name, v, name, t.Source, f.Line, strings.Join(slices.Sorted(maps.Keys(f.Values)), ", ")))
			continue
		}
		out[f.ServiceNow] = mv
	}
	return out, unknown, errors.Join(errs...)
}

// ServiceNowFields lists the ServiceNow fields the mapping reads from
// records (for sysparm_fields): every pair synced towards the app, the
// link fields, number and the close rule's fields, sorted. System fields
// (sys_id, sys_mod_count, sys_updated_on...) are the caller's to add.
func (t *Table) ServiceNowFields() []string { return slices.Clone(t.snFields) }

// ReadFields is ServiceNowFields without the copy; callers must not modify it.
func (t *Table) ReadFields() []string { return t.snFields }

func (t *Table) computeFields() []string {
	set := map[string]bool{"number": true}
	if t.LinkField != "" {
		set[t.LinkField] = true
	}
	if t.LinkDisplayField != "" {
		set[t.LinkDisplayField] = true
	}
	if t.Close != nil {
		// The writeback keeps them in its base, so it knows whether a
		// record already carries a code and notes when it closes it.
		set[t.Close.CodeField] = true
		for _, f := range t.Close.AllNotes() {
			set[f] = true
		}
	}
	for _, f := range t.Fields {
		if f.Direction.toSaaS() {
			set[f.ServiceNow] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}
