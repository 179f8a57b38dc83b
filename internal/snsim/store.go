package snsim

import (
	"slices"
	"strings"
)

// row is one stored record: values in schema order. Rows are replaced, not
// mutated, once they are in the index, so a reader holding the read lock
// never sees a half-written record.
type row struct {
	vals []string
}

func (r *row) id(t *table) string      { return r.vals[t.iID] }
func (r *row) updated(t *table) string { return r.vals[t.iUpdated] }

// table stores one table's rows, and an index ordered by
// (sys_updated_on, sys_id): the keyset order every sync client uses, kept
// sorted so keyset pages are a binary search plus a short walk.
type table struct {
	s        *tableSchema
	rows     map[string]*row
	index    []*row
	iID      int
	iUpdated int
	next     int // next number of the sequence (INC0010001...)

	// ids orders the rows by sys_id, the primary key's index on a real
	// instance: sys_id>X^ORDERBYsys_id pages (presence scans) are a binary
	// search plus a short walk, not a sort of the table per request.
	ids []*row
}

func newTable(s *tableSchema) *table {
	return &table{s: s, rows: map[string]*row{}, iID: s.idx("sys_id"), iUpdated: s.idx("sys_updated_on"), next: 10001}
}

func (t *table) less(a, b *row) int {
	if c := strings.Compare(a.vals[t.iUpdated], b.vals[t.iUpdated]); c != 0 {
		return c
	}
	return strings.Compare(a.vals[t.iID], b.vals[t.iID])
}

// pos returns where (updated, id) is or would be in the index.
func (t *table) pos(updated, id string) (int, bool) {
	return slices.BinarySearchFunc(t.index, [2]string{updated, id}, func(r *row, k [2]string) int {
		if c := strings.Compare(r.vals[t.iUpdated], k[0]); c != 0 {
			return c
		}
		return strings.Compare(r.vals[t.iID], k[1])
	})
}

// put inserts or replaces a row, keeping the index sorted.
func (t *table) put(r *row) {
	id := r.id(t)
	if old, ok := t.rows[id]; ok {
		t.removeIndex(old)
	}
	t.rows[id] = r
	i, _ := t.pos(r.updated(t), id)
	t.index = slices.Insert(t.index, i, r)
	j, found := t.idPos(id)
	if found {
		t.ids[j] = r
	} else {
		t.ids = slices.Insert(t.ids, j, r)
	}
}

// idPos returns where id is or would be in the sys_id index.
func (t *table) idPos(id string) (int, bool) {
	return slices.BinarySearchFunc(t.ids, id, func(r *row, k string) int { return strings.Compare(r.vals[t.iID], k) })
}

func (t *table) removeIndex(r *row) {
	if i, ok := t.pos(r.updated(t), r.id(t)); ok {
		t.index = slices.Delete(t.index, i, i+1)
	}
}

func (t *table) remove(id string) *row {
	r, ok := t.rows[id]
	if !ok {
		return nil
	}
	t.removeIndex(r)
	if j, found := t.idPos(id); found {
		t.ids = slices.Delete(t.ids, j, j+1)
	}
	delete(t.rows, id)
	return r
}

// bulkAppend adds many rows and sorts once (seeding).
func (t *table) bulkAppend(rs []*row) {
	for _, r := range rs {
		if old, ok := t.rows[r.id(t)]; ok {
			t.removeIndex(old)
		}
		t.rows[r.id(t)] = r
	}
	t.index = append(t.index, rs...)
	slices.SortFunc(t.index, t.less)
	t.ids = append(t.ids[:0], t.index...)
	slices.SortFunc(t.ids, func(a, b *row) int { return strings.Compare(a.vals[t.iID], b.vals[t.iID]) })
}

// upperBoundUpdated returns the first position whose sys_updated_on is > u.
func (t *table) upperBoundUpdated(u string) int {
	i, _ := slices.BinarySearchFunc(t.index, u, func(r *row, k string) int {
		if r.vals[t.iUpdated] <= k {
			return -1
		}
		return 1
	})
	return i
}

// lowerBoundUpdated returns the first position whose sys_updated_on is >= u.
func (t *table) lowerBoundUpdated(u string) int {
	i, _ := slices.BinarySearchFunc(t.index, u, func(r *row, k string) int {
		if r.vals[t.iUpdated] < k {
			return -1
		}
		return 1
	})
	return i
}

func (t *table) get(name string, r *row) string {
	i := t.s.idx(name)
	if i < 0 {
		return ""
	}
	return r.vals[i]
}

func (t *table) newRow() *row { return &row{vals: make([]string, len(t.s.fields))} }

func (r *row) clone() *row { return &row{vals: slices.Clone(r.vals)} }

// toRecord copies a row into a map of raw values.
func (t *table) toRecord(r *row) Record {
	out := make(Record, len(t.s.fields))
	for i, f := range t.s.fields {
		out[f.name] = r.vals[i]
	}
	return out
}
