package snsim

import "strings"

// fieldType is the dictionary's internal type, reduced to what changes how
// the simulator compares, renders and writes a value.
type fieldType int

const (
	typeString fieldType = iota
	typeInteger
	typeBoolean
	typeDateTime
	typeReference
	typeJournal
	typeChoice // an integer or string with labelled values
	typeGUID
)

func (t fieldType) internal() string {
	switch t {
	case typeInteger:
		return "integer"
	case typeBoolean:
		return "boolean"
	case typeDateTime:
		return "glide_date_time"
	case typeReference:
		return "reference"
	case typeJournal:
		return "journal_input"
	case typeChoice:
		return "integer" // a string choice field reports "string": see field.internalType
	case typeGUID:
		return "GUID"
	}
	return "string"
}

// internalType is the dictionary's internal_type of the field.
func (f *field) internalType() string {
	if f.typ == typeChoice && !f.numeric {
		return "string"
	}
	return f.typ.internal()
}

type field struct {
	name      string
	label     string
	typ       fieldType
	ref       string            // referenced table of a reference field
	choices   []Choice          // sys_choice rows, in sequence order; see setChoices
	labels    map[string]string // value -> label of every choice, active or not
	strict    bool              // a value that is not an active choice is dropped on write
	numeric   bool              // compare and sort as numbers
	system    bool              // sys_* fields: read-only through the API
	maxLen    int
	definedOn string // the dictionary row's table (task fields live on task)
}

// tableSchema describes one table: its fields in dictionary order.
type tableSchema struct {
	name     string
	label    string
	parent   string
	fields   []*field
	byName   map[string]int
	display  string // the field whose value a reference to this table displays
	readOnly bool   // the API may not write it (system tables)
	prefix   string // number prefix (INC)
	read     access // what the API user needs to read it
	// rules is the ticket table's business logic and data policy (nil for
	// system tables); see ticketTable.
	rules *ticketTable
}

// access is the read ACL of a table, reduced to who passes it.
type access int

const (
	accessAny         access = iota // every authenticated user (sys_user, sys_choice, ...)
	accessITIL                      // the itil role (incident, change_request, problem, sc_req_item)
	accessHR                        // the HR scope's roles: Grants.HRRole (sn_hr_core_case)
	accessDictionary                // admin or personalize_dictionary: Grants.Dictionary
	accessAuditDelete               // admin: Grants.AuditDelete
)

func (t *tableSchema) field(name string) (*field, int, bool) {
	i, ok := t.byName[name]
	if !ok {
		return nil, -1, false
	}
	return t.fields[i], i, true
}

func (t *tableSchema) idx(name string) int {
	i, ok := t.byName[name]
	if !ok {
		return -1
	}
	return i
}

func newSchema(name, label, parent, display string, fields []*field) *tableSchema {
	t := &tableSchema{name: name, label: label, parent: parent, display: display, byName: map[string]int{}}
	for i, f := range fields {
		if f.definedOn == "" {
			f.definedOn = name
		}
		if f.label == "" {
			f.label = labelOf(f.name)
		}
		if f.maxLen == 0 {
			f.maxLen = 40
		}
		f.system = strings.HasPrefix(f.name, "sys_")
		if f.typ == typeInteger {
			f.numeric = true
		}
		// The lists below are shared templates: each server gets its own copy,
		// so one test's SetChoices does not leak into another's.
		f.setChoices(f.choices)
		t.fields = append(t.fields, f)
		t.byName[f.name] = i
	}
	return t
}

func labelOf(name string) string {
	name = strings.TrimPrefix(name, "sys_")
	parts := strings.Split(name, "_")
	for i, p := range parts {
		if p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, " ")
}

// sysFields are the fields every table has.
func sysFields(on string) []*field {
	return []*field{
		{name: "sys_id", label: "Sys ID", typ: typeGUID, maxLen: 32, definedOn: on},
		{name: "sys_created_on", label: "Created", typ: typeDateTime, definedOn: on},
		{name: "sys_created_by", label: "Created by", definedOn: on},
		{name: "sys_updated_on", label: "Updated", typ: typeDateTime, definedOn: on},
		{name: "sys_updated_by", label: "Updated by", definedOn: on},
		{name: "sys_mod_count", label: "Updates", typ: typeInteger, definedOn: on},
	}
}

// Choice lists of incident's fields, in sys_choice sequence order (the
// other ticket tables' are in tickets.go).
var (
	stateChoices = choiceList("1", "New", "2", "In Progress", "3", "On Hold", "6", "Resolved", "7", "Closed", "8", "Canceled")
	impactLabels = choiceList("1", "1 - High", "2", "2 - Medium", "3", "3 - Low")
	prioLabels   = choiceList("1", "1 - Critical", "2", "2 - High", "3", "3 - Moderate", "4", "4 - Low", "5", "5 - Planning")
	categories   = choiceList("inquiry", "Inquiry / Help", "software", "Software", "hardware", "Hardware", "network", "Network", "database", "Database")
	contactTypes = choiceList("email", "Email", "phone", "Phone", "self-service", "Self-service", "walk-in", "Walk-in", "chat", "Chat")
	holdReasons  = choiceList("1", "Awaiting Caller", "3", "Awaiting Problem", "4", "Awaiting User Info", "5", "Awaiting Evidence")
	severities   = choiceList("1", "1 - High", "2", "2 - Medium", "3", "3 - Low")
)

func userSchema() *tableSchema {
	fs := append(sysFields("sys_user"),
		&field{name: "user_name", label: "User ID"},
		&field{name: "name", label: "Name"},
		&field{name: "first_name", label: "First name"},
		&field{name: "last_name", label: "Last name"},
		&field{name: "email", label: "Email", maxLen: 100},
		&field{name: "active", label: "Active", typ: typeBoolean},
	)
	t := newSchema("sys_user", "User", "", "name", fs)
	t.readOnly = true
	return t
}

func groupSchema() *tableSchema {
	fs := append(sysFields("sys_user_group"),
		&field{name: "name", label: "Name", maxLen: 80},
		&field{name: "description", label: "Description", maxLen: 1000},
		&field{name: "active", label: "Active", typ: typeBoolean},
	)
	t := newSchema("sys_user_group", "Group", "", "name", fs)
	t.readOnly = true
	return t
}

func journalSchema() *tableSchema {
	fs := append(sysFields("sys_journal_field"),
		&field{name: "name", label: "Table name", maxLen: 80},
		&field{name: "element", label: "Element", maxLen: 80},
		&field{name: "element_id", label: "Element ID", maxLen: 32},
		&field{name: "value", label: "Value", maxLen: 4000},
	)
	t := newSchema("sys_journal_field", "Journal Entry", "", "value", fs)
	t.readOnly = true
	t.read = accessITIL // entries are readable where their record is (rowHiddenLocked)
	return t
}

func auditDeleteSchema() *tableSchema {
	fs := append(sysFields("sys_audit_delete"),
		&field{name: "tablename", label: "Table", maxLen: 80},
		&field{name: "documentkey", label: "Document key", maxLen: 32},
		&field{name: "display_value", label: "Display value", maxLen: 255},
		&field{name: "payload", label: "Payload", maxLen: 65000},
	)
	t := newSchema("sys_audit_delete", "Deleted record", "", "display_value", fs)
	t.readOnly = true
	t.read = accessAuditDelete
	return t
}

func dictionarySchema() *tableSchema {
	fs := append(sysFields("sys_dictionary"),
		&field{name: "name", label: "Table", maxLen: 80},
		&field{name: "element", label: "Column name", maxLen: 80},
		&field{name: "column_label", label: "Column label", maxLen: 80},
		&field{name: "internal_type", label: "Type", maxLen: 40},
		&field{name: "max_length", label: "Max length", typ: typeInteger},
		&field{name: "reference", label: "Reference", maxLen: 80},
		&field{name: "read_only", label: "Read only", typ: typeBoolean},
		&field{name: "active", label: "Active", typ: typeBoolean},
	)
	t := newSchema("sys_dictionary", "Dictionary Entry", "", "element", fs)
	t.readOnly = true
	t.read = accessDictionary
	return t
}
