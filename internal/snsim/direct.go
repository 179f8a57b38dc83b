package snsim

import (
	"errors"
	"fmt"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
)

// ErrNotFound is returned by direct calls on a record that does not exist.
var ErrNotFound = errors.New("snsim: record not found")

func directErr(op, table, sysID string, err error) error {
	if err == nil {
		return nil
	}
	var ae *apiError
	if errors.As(err, &ae) && ae == errNotFound {
		return fmt.Errorf("%s %s/%s: %w", op, table, sysID, ErrNotFound)
	}
	return fmt.Errorf("%s %s/%s: %w", op, table, sysID, err)
}

// Insert creates a record as user (a "human" in the instance's UI), running
// business rules like any other write. fields may carry "sys_id" to pick
// the id. It returns the stored record.
func (s *Server) Insert(table string, fields map[string]string, user string) (Record, error) {
	return s.directWrite(write{table: table, action: events.ActionInsert, fields: fields, user: user, workflow: true, trusted: true})
}

// Update changes a record as user; only the fields given are written.
func (s *Server) Update(table, sysID string, fields map[string]string, user string) (Record, error) {
	return s.directWrite(write{table: table, sysID: sysID, action: events.ActionUpdate, fields: fields, user: user, workflow: true})
}

// Delete removes a record as user (sys_audit_delete gets a row).
func (s *Server) Delete(table, sysID, user string) error {
	_, err := s.directWrite(write{table: table, sysID: sysID, action: events.ActionDelete, user: user, workflow: true})
	return err
}

// InsertNoWorkflow, UpdateNoWorkflow and DeleteNoWorkflow write with
// setWorkflow(false): no business rule runs, so no webhook is sent.
func (s *Server) InsertNoWorkflow(table string, fields map[string]string, user string) (Record, error) {
	return s.directWrite(write{table: table, action: events.ActionInsert, fields: fields, user: user, trusted: true})
}

// UpdateNoWorkflow: see InsertNoWorkflow.
func (s *Server) UpdateNoWorkflow(table, sysID string, fields map[string]string, user string) (Record, error) {
	return s.directWrite(write{table: table, sysID: sysID, action: events.ActionUpdate, fields: fields, user: user})
}

// DeleteNoWorkflow: see InsertNoWorkflow.
func (s *Server) DeleteNoWorkflow(table, sysID, user string) error {
	_, err := s.directWrite(write{table: table, sysID: sysID, action: events.ActionDelete, user: user})
	return err
}

func (s *Server) directWrite(w write) (Record, error) {
	res, err := s.apply(w)
	if err != nil {
		return nil, directErr(w.action, w.table, w.sysID, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return res.t.toRecord(res.rec), nil
}

// Get returns a record's raw values.
func (s *Server) Get(table, sysID string) (Record, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tables[table]
	if t == nil {
		return nil, false
	}
	r := t.rows[sysID]
	if r == nil {
		return nil, false
	}
	return t.toRecord(r), true
}

// Count returns the number of records in a table.
func (s *Server) Count(table string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if t := s.tables[table]; t != nil {
		return len(t.rows)
	}
	return 0
}

// IDs returns a table's sys_ids in (sys_updated_on, sys_id) order.
func (s *Server) IDs(table string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tables[table]
	if t == nil {
		return nil
	}
	out := make([]string, len(t.index))
	for i, r := range t.index {
		out[i] = r.id(t)
	}
	return out
}

// Journal returns a record's journal entries (element "comments",
// "work_notes", or "" for both), oldest first.
func (s *Server) Journal(sysID, element string) []JournalEntry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.journalLocked(sysID, element)
}

// JournalDisplay renders a record's journal field as a display-value read
// shows it (newest first).
func (s *Server) JournalDisplay(table, sysID, element string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tables[table]
	if t == nil {
		return ""
	}
	f, _, ok := t.s.field(element)
	if !ok {
		return ""
	}
	return s.formatJournal(s.journalLocked(sysID, element), f.label)
}

// SetUpdatedOn moves a record's sys_updated_on (to the past, typically) without
// any other change and without business rules: the record now looks like a
// long transaction that committed after later ones were visible.
func (s *Server) SetUpdatedOn(table, sysID string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tables[table]
	if t == nil {
		return fmt.Errorf("set sys_updated_on of %s/%s: no such table", table, sysID)
	}
	old := t.rows[sysID]
	if old == nil {
		return fmt.Errorf("set sys_updated_on of %s/%s: %w", table, sysID, ErrNotFound)
	}
	r := old.clone()
	r.vals[t.iUpdated] = at.UTC().Format(snTimeLayout)
	t.put(r)
	return nil
}

// Tables lists the simulated tables.
func (s *Server) Tables() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.tables))
	for n := range s.tables {
		out = append(out, n)
	}
	return out
}
