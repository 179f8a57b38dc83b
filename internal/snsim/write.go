package snsim

import (
	"fmt"
	"html"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Record is a record's raw values by field name, as strings.
type Record map[string]string

// JournalEntry is one sys_journal_field row of a record.
type JournalEntry struct {
	SysID     string
	Element   string // comments or work_notes
	Value     string
	CreatedOn string
	CreatedBy string
}

// apiError is a failed write, answered with ServiceNow's error envelope.
type apiError struct {
	status  int
	message string
	detail  string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.message, e.detail) }

var errNotFound = &apiError{404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"}

// write is one insert, update or delete, from the API or a test.
type write struct {
	table    string
	sysID    string
	action   string
	fields   map[string]string
	user     string
	workflow bool // false: setWorkflow(false), no business rules
	trusted  bool // a direct test write may set sys_id on insert
}

// writeResult is what a write leaves behind.
type writeResult struct {
	rec     *row
	t       *table
	changed bool
	hook    <-chan struct{} // closed once the business rule's webhook is done
}

// priorityMatrix is the platform's default priority lookup (impact,
// urgency), the same for incident and problem (dl_u_priority,
// dl_problem_priority).
var priorityMatrix = map[[2]string]string{
	{"1", "1"}: "1", {"1", "2"}: "2", {"2", "1"}: "2",
	{"1", "3"}: "3", {"2", "2"}: "3", {"3", "1"}: "3",
	{"2", "3"}: "4", {"3", "2"}: "4", {"3", "3"}: "5",
}

// apply performs a write under the write lock, emulating the platform's
// business logic, the data policy and the business rule.
func (s *Server) apply(w write) (writeResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[w.table]
	if !ok {
		return writeResult{}, &apiError{400, "Invalid table " + w.table, ""}
	}
	now := s.nowStamp()
	var old, cur *row
	switch w.action {
	case events.ActionInsert:
		cur = t.newRow()
		id := ""
		if w.trusted {
			id = w.fields["sys_id"]
		}
		if id == "" {
			id = s.randHex(32)
		} else if !events.ValidSysID(id) {
			return writeResult{}, &apiError{400, "Invalid sys_id", id}
		} else if _, dup := t.rows[id]; dup {
			return writeResult{}, &apiError{403, "Operation Failed", "Error during insert of " + w.table + " (record with sys_id " + id + " exists)"}
		}
		cur.vals[t.iID] = id
	case events.ActionUpdate, events.ActionDelete:
		old = t.rows[w.sysID]
		if old == nil {
			return writeResult{}, errNotFound
		}
		if w.action == events.ActionDelete {
			return s.deleteLocked(t, old, w, now), nil
		}
		cur = old.clone()
	default:
		return writeResult{}, fmt.Errorf("snsim: unknown action %q", w.action)
	}

	var journal []JournalEntry
	for name, v := range w.fields {
		f, i, ok := t.s.field(name)
		if !ok || f.system {
			continue // unknown fields and system fields are ignored, as the API does
		}
		if f.typ == typeJournal {
			if strings.TrimSpace(v) != "" {
				journal = append(journal, JournalEntry{Element: name, Value: v})
			}
			continue
		}
		if f.strict && v != "" && !f.activeChoice(v) {
			// A value that is not an active choice is dropped silently; the
			// rest of the write proceeds (and a data policy may then refuse
			// it as if the field had not been sent).
			s.log.Debug("snsim: dropped a value that is not an active choice", "table", w.table, "field", name, "value", v)
			continue
		}
		cur.vals[i] = truncate(v, f.maxLen)
	}
	slices.SortFunc(journal, func(a, b JournalEntry) int { return strings.Compare(a.Element, b.Element) })
	if t.s.rules != nil {
		if err := s.applyRules(t, old, cur, w.user, now); err != nil {
			return writeResult{}, err
		}
	}
	changedAny := len(journal) > 0
	if old == nil {
		changedAny = true
	} else {
		for i := range cur.vals {
			if cur.vals[i] != old.vals[i] {
				changedAny = true
				break
			}
		}
	}
	if !changedAny {
		return writeResult{rec: old, t: t}, nil
	}
	set := func(name, v string) {
		if i := t.s.idx(name); i >= 0 {
			cur.vals[i] = v
		}
	}
	if old == nil {
		set("sys_created_on", now)
		set("sys_created_by", w.user)
		set("sys_mod_count", "0")
		if i := t.s.idx("sys_class_name"); i >= 0 {
			cur.vals[i] = w.table
		}
	} else {
		n, _ := strconv.Atoi(old.vals[t.s.idx("sys_mod_count")])
		set("sys_mod_count", strconv.Itoa(n+1))
	}
	set("sys_updated_on", now)
	set("sys_updated_by", w.user)
	t.put(cur)
	for i := range journal {
		journal[i] = s.addJournalLocked(w.table, cur.id(t), journal[i].Element, journal[i].Value, w.user, now)
	}
	res := writeResult{rec: cur, t: t, changed: true}
	if w.workflow {
		res.hook = s.hooks.fire(s, t, w, old, cur, journal)
	}
	return res, nil
}

func truncate(v string, n int) string {
	if n <= 0 || len(v) <= n {
		return v
	}
	// Cut on a rune boundary: the platform stores characters, not bytes.
	if utf8.RuneCountInString(v) <= n {
		return v
	}
	return string([]rune(v)[:n])
}

// deleteLocked removes a record, writes its sys_audit_delete row and fires
// the delete business rule.
func (s *Server) deleteLocked(t *table, old *row, w write, now string) writeResult {
	t.remove(old.id(t))
	s.removeRecordAttachmentsLocked(t.s.name, old.id(t))
	if audit := s.tables["sys_audit_delete"]; audit != nil && t.s.name != "sys_audit_delete" {
		r := audit.newRow()
		set := func(n, v string) { r.vals[audit.s.idx(n)] = v }
		set("sys_id", s.randHex(32))
		set("sys_created_on", now)
		set("sys_created_by", w.user)
		set("sys_updated_on", now)
		set("sys_updated_by", w.user)
		set("sys_mod_count", "0")
		set("tablename", t.s.name)
		set("documentkey", old.id(t))
		set("display_value", t.get(t.s.display, old))
		set("payload", auditPayload(t, old))
		audit.put(r)
	}
	res := writeResult{rec: old, t: t, changed: true}
	if w.workflow {
		res.hook = s.hooks.fire(s, t, w, old, old, nil)
	}
	return res
}

// auditPayload is the deleted record as the XML sys_audit_delete keeps.
func auditPayload(t *table, r *row) string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?><record_update table="` + t.s.name + `"><` + t.s.name + `>`)
	for i, f := range t.s.fields {
		b.WriteString("<" + f.name + ">" + html.EscapeString(r.vals[i]) + "</" + f.name + ">")
	}
	b.WriteString("</" + t.s.name + "></record_update>")
	return b.String()
}

// addJournalLocked stores one journal entry as a sys_journal_field row.
func (s *Server) addJournalLocked(table, sysID, element, value, user, now string) JournalEntry {
	j := s.tables["sys_journal_field"]
	r := j.newRow()
	set := func(n, v string) { r.vals[j.s.idx(n)] = v }
	id := s.randHex(32)
	set("sys_id", id)
	set("sys_created_on", now)
	set("sys_created_by", user)
	set("sys_updated_on", now)
	set("sys_updated_by", user)
	set("sys_mod_count", "0")
	set("name", table)
	set("element", element)
	set("element_id", sysID)
	set("value", value)
	j.put(r)
	s.jidx[sysID] = append(s.jidx[sysID], r)
	return JournalEntry{SysID: id, Element: element, Value: value, CreatedOn: now, CreatedBy: user}
}

// journalLocked returns a record's entries of one element (all when
// element is ""), oldest first.
func (s *Server) journalLocked(sysID, element string) []JournalEntry {
	j := s.tables["sys_journal_field"]
	iEl, iElID := j.s.idx("element"), j.s.idx("element_id")
	var out []JournalEntry
	for _, r := range s.jidx[sysID] {
		if r.vals[iElID] != sysID || (element != "" && r.vals[iEl] != element) {
			continue
		}
		out = append(out, JournalEntry{
			SysID: r.vals[j.iID], Element: r.vals[iEl], Value: r.vals[j.s.idx("value")],
			CreatedOn: r.vals[j.s.idx("sys_created_on")], CreatedBy: r.vals[j.s.idx("sys_created_by")],
		})
	}
	return out
}

// formatJournal renders entries newest first the way a display-value read
// (and getJournalEntry) shows them.
func (s *Server) formatJournal(entries []JournalEntry, label string) string {
	var b strings.Builder
	for i := len(entries) - 1; i >= 0; i-- {
		b.WriteString(s.formatEntry(entries[i], label))
	}
	return b.String()
}

func (s *Server) formatEntry(e JournalEntry, label string) string {
	return e.CreatedOn + " - " + s.userDisplayLocked(e.CreatedBy) + " (" + label + ")\n" + e.Value + "\n\n"
}
