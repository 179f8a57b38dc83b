package snclient

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Where the client learns a table's fields, in the order it consults them.
// They are also the source label of bridge_servicenow_fields_learned.
const (
	// FieldSourceMapping: the fields the caller maps (Config.MappedFields).
	FieldSourceMapping = "mapping"
	// FieldSourceRecord: the fields of one record read with the Table API
	// (every field the integration user may read), or of a record a write
	// returned.
	FieldSourceRecord = "record"
	// FieldSourceDictionary: sys_dictionary rows of the table and its
	// parents, where the integration user may read them (admin or
	// personalize_dictionary; the least-privilege user may not).
	FieldSourceDictionary = "sys_dictionary"
	// FieldSourceKnown: the known-fields setting (Config.KnownFields,
	// BRIDGE_SN_KNOWN_FIELDS).
	FieldSourceKnown = "known_fields"
)

var fieldSources = []string{FieldSourceMapping, FieldSourceRecord, FieldSourceDictionary, FieldSourceKnown}

// Outcomes of the record read and the sys_dictionary read.
const (
	ProbeRead   = "read"   // rows came: their fields are known
	ProbeEmpty  = "empty"  // no rows, and X-Total-Count counts none
	ProbeHidden = "hidden" // no rows while X-Total-Count counts some: an ACL hides them
	ProbeFailed = "failed" // the request failed (see FieldInfo.RecordErr, DictionaryErr)
)

// systemFields exist on every table; they are accepted even when no source
// lists them (they live on the base table).
var systemFields = []string{"sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by", "sys_mod_count", "sys_class_name", "sys_domain"}

// learnRetry is how soon a table whose learning failed (not: was hidden or
// empty) is learned again, when SchemaTTL is longer.
const learnRetry = 30 * time.Second

// FieldInfo is what the client knows about a table's fields and where it
// learned them.
type FieldInfo struct {
	Table string
	// Names is every field known, sorted: the union of all sources plus the
	// system fields.
	Names []string
	// BySource lists the fields each source gave, sorted (sources that gave
	// none are absent).
	BySource map[string][]string
	// Record and Dictionary are the outcomes (Probe*) of the one-record
	// Table API read and of the sys_dictionary read; RecordTotal and
	// DictionaryTotal their X-Total-Count (-1 when absent).
	Record, Dictionary           string
	RecordTotal, DictionaryTotal int
	// RecordErr and DictionaryErr are the failures behind ProbeFailed.
	RecordErr, DictionaryErr error
	// Complete: a record or sys_dictionary listed the table's fields, so a
	// name no source knows is not a field the integration user can use.
	// When false only the mapping, the known-fields setting and the system
	// fields are known.
	Complete bool
	// Unconfirmed lists mapped fields that neither a record nor
	// sys_dictionary lists although one of them was read: a typo in the
	// mapping, or a field the integration user cannot read. They are still
	// written and queried (mapped fields always pass).
	Unconfirmed []string
	Learned     time.Time
}

// Sources lists the sources that gave at least one field, in the order
// they are consulted.
func (fi *FieldInfo) Sources() []string {
	var out []string
	for _, s := range fieldSources {
		if len(fi.BySource[s]) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// Missing says, for a person, what the client could not learn and what
// each grant or setting would add; "" when nothing is missing.
func (fi *FieldInfo) Missing() string {
	var parts []string
	switch {
	case fi.Record == ProbeEmpty && !fi.Complete:
		parts = append(parts, "no record to read ("+fi.Table+" is empty; its fields are learned from the first record written)")
	case fi.Record == ProbeHidden && !fi.Complete:
		parts = append(parts, fmt.Sprintf("no record readable (X-Total-Count counts %d, none returned: the integration user lacks read on %s, e.g. role itil for incident)", fi.RecordTotal, fi.Table))
	case fi.Record == ProbeFailed:
		parts = append(parts, fmt.Sprintf("reading a record of %s failed: %v", fi.Table, fi.RecordErr))
	}
	switch fi.Dictionary {
	case ProbeHidden, ProbeEmpty:
		if fi.Record != ProbeRead {
			parts = append(parts, "sys_dictionary is not readable (read on it, role personalize_dictionary or admin, would list every field of "+fi.Table+")")
		}
	case ProbeFailed:
		parts = append(parts, fmt.Sprintf("reading sys_dictionary failed: %v", fi.DictionaryErr))
	}
	if !fi.Complete {
		parts = append(parts, "known so far: "+knownSummary(fi)+"; writes send the mapped fields unchecked and queries may use only known fields; "+
			"list the table's other fields in BRIDGE_SN_KNOWN_FIELDS ("+fi.Table+"=field,field,...) to query them")
	}
	if len(fi.Unconfirmed) > 0 {
		parts = append(parts, "mapped but in no record read nor sys_dictionary: "+strings.Join(fi.Unconfirmed, ", ")+
			" (a typo in the mapping, or a field the integration user cannot read: ServiceNow ignores a write to a field that does not exist)")
	}
	return strings.Join(parts, "; ")
}

func knownSummary(fi *FieldInfo) string {
	var parts []string
	for _, s := range fieldSources {
		if n := len(fi.BySource[s]); n > 0 {
			parts = append(parts, fmt.Sprintf("%d from %s", n, s))
		}
	}
	if len(parts) == 0 {
		return "the system fields only"
	}
	return strings.Join(parts, ", ") + " plus the system fields"
}

// tableFields is one learned table: immutable once cached (a change is a
// copy swapped in under the cache lock).
type tableFields struct {
	info   FieldInfo
	names  map[string]bool
	expiry time.Time
}

func (tf *tableFields) sourceText() string {
	if s := tf.info.Sources(); len(s) > 0 {
		return strings.Join(s, ", ")
	}
	return "system fields only"
}

// failure is why learning failed, when nothing learned the table's fields:
// a name unknown then may still be a field.
func (tf *tableFields) failure() error {
	if tf.info.Complete {
		return nil
	}
	return errors.Join(tf.info.RecordErr, tf.info.DictionaryErr)
}

type schemaCache struct {
	mu     sync.Mutex
	tables map[string]*tableFields
	sf     singleflight.Group
}

func newSchemaCache() *schemaCache { return &schemaCache{tables: map[string]*tableFields{}} }

func unknownNames(tf *tableFields, names []string) []string {
	var unknown []string
	for _, n := range names {
		first, _, _ := strings.Cut(n, ".")
		if !tf.names[first] && !slices.Contains(unknown, n) {
			unknown = append(unknown, n)
		}
	}
	return unknown
}

// checkQuery guards a query: ServiceNow silently drops a clause on a field
// the table does not have and answers as if it were not there (often with
// every row). A clause field (dot-walks checked by their first segment)
// that no source knows is a *FieldError; when learning failed rather than
// found nothing, the failure is returned instead (retrying may help).
// Selected fields (sysparm_fields) are checked only once the table's fields
// are fully known: ServiceNow leaves an unknown one out of the answer,
// which widens nothing.
//
// While the table was empty when learned, a clause on a field not known is
// not refused: the table is read again, and if it is still empty the query
// is answered (empty, true) without sending it, since no clause can match
// rows that do not exist; if it now holds a record, its fields are learned
// and the check is made with them.
func (c *Client) checkQuery(ctx context.Context, table string, clause, selected []string) (empty bool, err error) {
	if c.cfg.SkipFieldValidation || len(clause)+len(selected) == 0 {
		return false, nil
	}
	tf, err := c.tableFields(ctx, table)
	if err != nil {
		return false, err
	}
	names := clause
	if tf.info.Complete {
		names = append(slices.Clip(clause), selected...)
	}
	unknown := unknownNames(tf, names)
	if len(unknown) == 0 {
		return false, nil
	}
	if !tf.info.Complete && tf.info.Record == ProbeEmpty {
		next, stillEmpty, err := c.reprobe(ctx, table)
		if err != nil {
			return false, err
		}
		if stillEmpty {
			c.log.DebugContext(ctx, "servicenow query names fields not known, on a table that is empty: answered empty without sending it", "table", table, "fields", unknown)
			return true, nil
		}
		tf = next
		if unknown = unknownNames(tf, append(slices.Clip(clause), selected...)); len(unknown) == 0 {
			return false, nil
		}
	}
	if err := tf.failure(); err != nil {
		return false, fmt.Errorf("cannot check the field(s) %s of %s (ServiceNow silently drops a clause on a field that does not exist): learning the table's fields failed: %w",
			strings.Join(unknown, ", "), table, err)
	}
	return false, &FieldError{Table: table, Unknown: unknown, Source: tf.sourceText(), Incomplete: !tf.info.Complete}
}

// reprobe reads one record of a table learned empty: still empty, or the
// table's fields learned from the record now there (concurrent callers
// share one read).
func (c *Client) reprobe(ctx context.Context, table string) (*tableFields, bool, error) {
	type result struct {
		tf    *tableFields
		empty bool
	}
	ch := c.schema.sf.DoChan("reprobe:"+table, func() (any, error) {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.RetryMaxElapsed+c.cfg.RequestTimeout)
		defer cancel()
		names, outcome, total, err := c.readRecordFields(pctx, table)
		switch outcome {
		case ProbeEmpty:
			return result{empty: true}, nil
		case ProbeRead:
			return result{tf: c.addRecordFields(ctx, table, names, "a record read again")}, nil
		}
		// Hidden or failed: keep what is known, with this outcome.
		s := c.schema
		s.mu.Lock()
		defer s.mu.Unlock()
		tf := s.tables[table]
		if tf == nil {
			return result{}, fmt.Errorf("the fields of %s were never learned", table)
		}
		fi := tf.info
		fi.Record, fi.RecordTotal, fi.RecordErr = outcome, total, err
		next := newTableFields(fi, 0)
		next.expiry = tf.expiry
		if retry := time.Now().Add(learnRetry); outcome == ProbeFailed && retry.Before(next.expiry) {
			next.expiry = retry
		}
		s.tables[table] = next
		return result{tf: next}, nil
	})
	select {
	case r := <-ch:
		res := r.Val.(result)
		if !res.empty && res.tf == nil {
			return nil, false, fmt.Errorf("learning the fields of %s: %w", table, r.Err)
		}
		return res.tf, res.empty, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// checkWrite guards a write. Learning never blocks one: mapped and known
// fields always pass, and while the table's fields are not fully known (no
// record and no dictionary readable, or learning failed) every field
// passes. Only a field that a record or sys_dictionary shows the table does
// not have, and that the mapping does not name, is refused: ServiceNow
// would ignore it silently.
func (c *Client) checkWrite(ctx context.Context, table string, names []string) error {
	if c.cfg.SkipFieldValidation || len(names) == 0 {
		return nil
	}
	tf, err := c.tableFields(ctx, table)
	if err != nil {
		return err
	}
	unknown := unknownNames(tf, names)
	if len(unknown) == 0 {
		return nil
	}
	if !tf.info.Complete {
		c.log.DebugContext(ctx, "servicenow write sends fields the client could not verify", "table", table, "fields", unknown)
		return nil
	}
	return &FieldError{Table: table, Unknown: unknown, Source: tf.sourceText(), Write: true}
}

// Fields returns the field names queries on table may use, sorted: the
// mapped fields, the fields of a record, sys_dictionary's where readable,
// the known-fields setting and the system fields. It fails only when ctx
// ends; FieldInfo says where each name came from and what is missing.
func (c *Client) Fields(ctx context.Context, table string) ([]string, error) {
	fi, err := c.FieldInfo(ctx, table)
	if err != nil {
		return nil, err
	}
	return fi.Names, nil
}

// FieldInfo returns what the client knows of table's fields (learned on
// first use and cached for SchemaTTL) and where it learned them.
func (c *Client) FieldInfo(ctx context.Context, table string) (FieldInfo, error) {
	if err := checkTable(table); err != nil {
		return FieldInfo{}, err
	}
	tf, err := c.tableFields(ctx, table)
	if err != nil {
		return FieldInfo{}, err
	}
	fi := tf.info
	fi.Names = slices.Clone(fi.Names)
	fi.Unconfirmed = slices.Clone(fi.Unconfirmed)
	fi.BySource = make(map[string][]string, len(tf.info.BySource))
	for s, names := range tf.info.BySource {
		fi.BySource[s] = slices.Clone(names)
	}
	return fi, nil
}

// DictionaryFields reads the fields sys_dictionary lists for table and its
// parents, uncached. It fails when the integration user cannot read
// sys_dictionary (the least-privilege roles cannot): the error says so.
func (c *Client) DictionaryFields(ctx context.Context, table string) ([]string, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	names, outcome, total, err := c.readDictionary(ctx, table)
	switch outcome {
	case ProbeRead:
		return names, nil
	case ProbeHidden:
		return nil, fmt.Errorf("sys_dictionary is not readable: X-Total-Count counts %d entries for %s, none returned (read on it needs admin or personalize_dictionary; the bridge does not need it)", total, table)
	case ProbeEmpty:
		return nil, fmt.Errorf("sys_dictionary lists no fields for %s: the table does not exist, or the integration user cannot read sys_dictionary (admin or personalize_dictionary; the bridge does not need it)", table)
	}
	return nil, err
}

func (c *Client) tableFields(ctx context.Context, table string) (*tableFields, error) {
	s := c.schema
	s.mu.Lock()
	tf := s.tables[table]
	s.mu.Unlock()
	if tf != nil && time.Now().Before(tf.expiry) {
		return tf, nil
	}
	ch := s.sf.DoChan(table, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.RetryMaxElapsed+c.cfg.RequestTimeout)
		defer cancel()
		s.mu.Lock()
		prev := s.tables[table]
		s.mu.Unlock()
		tf := c.learn(lctx, table, prev)
		s.mu.Lock()
		s.tables[table] = tf
		s.mu.Unlock()
		c.report(ctx, tf)
		return tf, nil
	})
	select {
	case r := <-ch:
		return r.Val.(*tableFields), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// learn consults every source. A read that failed keeps what the previous
// learning got from that source: a stale list beats none.
func (c *Client) learn(ctx context.Context, table string, prev *tableFields) *tableFields {
	fi := FieldInfo{Table: table, BySource: map[string][]string{}, Learned: time.Now()}
	var recNames, dictNames []string
	var wg sync.WaitGroup
	wg.Go(func() { recNames, fi.Record, fi.RecordTotal, fi.RecordErr = c.readRecordFields(ctx, table) })
	wg.Go(func() { dictNames, fi.Dictionary, fi.DictionaryTotal, fi.DictionaryErr = c.readDictionary(ctx, table) })
	wg.Wait()
	if prev != nil {
		if fi.Record == ProbeFailed && prev.info.Record == ProbeRead {
			c.log.WarnContext(ctx, "servicenow record read for field learning failed; keeping the fields learned before", "table", table, "err", fi.RecordErr)
			recNames, fi.Record, fi.RecordTotal, fi.RecordErr = prev.info.BySource[FieldSourceRecord], ProbeRead, prev.info.RecordTotal, nil
		}
		if fi.Dictionary == ProbeFailed && prev.info.Dictionary == ProbeRead {
			c.log.WarnContext(ctx, "servicenow sys_dictionary read failed; keeping the fields learned before", "table", table, "err", fi.DictionaryErr)
			dictNames, fi.Dictionary, fi.DictionaryTotal, fi.DictionaryErr = prev.info.BySource[FieldSourceDictionary], ProbeRead, prev.info.DictionaryTotal, nil
		}
	}
	set := func(source string, names []string) {
		if len(names) > 0 {
			fi.BySource[source] = slices.Compact(slices.Sorted(slices.Values(names)))
		}
	}
	set(FieldSourceMapping, c.cfg.MappedFields[table])
	set(FieldSourceRecord, recNames)
	set(FieldSourceDictionary, dictNames)
	set(FieldSourceKnown, c.cfg.KnownFields[table])
	ttl := c.cfg.SchemaTTL
	if fi.Record == ProbeFailed || fi.Dictionary == ProbeFailed {
		ttl = min(ttl, learnRetry)
	}
	return newTableFields(fi, ttl)
}

// newTableFields derives the union, completeness and unconfirmed mapped
// fields of fi.
func newTableFields(fi FieldInfo, ttl time.Duration) *tableFields {
	names := map[string]bool{}
	for _, n := range systemFields {
		names[n] = true
	}
	for _, list := range fi.BySource {
		for _, n := range list {
			names[n] = true
		}
	}
	fi.Names = slices.Sorted(maps.Keys(names))
	seen := len(fi.BySource[FieldSourceRecord]) > 0 || len(fi.BySource[FieldSourceDictionary]) > 0
	fi.Complete = seen
	fi.Unconfirmed = nil
	if seen {
		for _, n := range fi.BySource[FieldSourceMapping] {
			if !slices.Contains(fi.BySource[FieldSourceRecord], n) && !slices.Contains(fi.BySource[FieldSourceDictionary], n) && !slices.Contains(systemFields, n) {
				fi.Unconfirmed = append(fi.Unconfirmed, n)
			}
		}
	}
	return &tableFields{info: fi, names: names, expiry: fi.Learned.Add(ttl)}
}

// report logs what a learning found (a warning when something is missing,
// once per table per learning) and sets the metrics.
func (c *Client) report(ctx context.Context, tf *tableFields) {
	fi := &tf.info
	for _, s := range fieldSources {
		c.m.fieldsLearned.WithLabelValues(fi.Table, s).Set(float64(len(fi.BySource[s])))
	}
	incomplete := 0.0
	if !fi.Complete {
		incomplete = 1
	}
	c.m.learningIncomplete.WithLabelValues(fi.Table).Set(incomplete)
	attrs := []any{"table", fi.Table, "sources", tf.sourceText(), "fields", len(fi.Names), "record", probeText(fi.Record, fi.RecordTotal), "sys_dictionary", probeText(fi.Dictionary, fi.DictionaryTotal)}
	switch missing := fi.Missing(); {
	case !fi.Complete:
		c.log.WarnContext(ctx, "servicenow: the fields of "+fi.Table+" are only partly known: "+missing, attrs...)
	case len(fi.Unconfirmed) > 0 || fi.Record == ProbeFailed || fi.Dictionary == ProbeFailed:
		c.log.WarnContext(ctx, "servicenow: fields of "+fi.Table+" learned with gaps: "+missing, attrs...)
	default:
		c.log.DebugContext(ctx, "servicenow fields learned", attrs...)
	}
}

// learnFromRecord adds the fields of a record ServiceNow returned (from a
// write) to a table learned without one: an empty table's fields are known
// from its first record on.
func (c *Client) learnFromRecord(ctx context.Context, table string, r Record) {
	if len(r) == 0 {
		return
	}
	c.schema.mu.Lock()
	tf := c.schema.tables[table]
	c.schema.mu.Unlock()
	if tf == nil || len(tf.info.BySource[FieldSourceRecord]) > 0 {
		return
	}
	c.addRecordFields(ctx, table, slices.Sorted(maps.Keys(r)), "a written record")
}

// addRecordFields sets the record source of a cached table (learned
// without one) and returns the table as now known.
func (c *Client) addRecordFields(ctx context.Context, table string, names []string, from string) *tableFields {
	s := c.schema
	s.mu.Lock()
	tf := s.tables[table]
	if tf == nil || len(tf.info.BySource[FieldSourceRecord]) > 0 {
		s.mu.Unlock()
		return tf
	}
	fi := tf.info
	fi.BySource = maps.Clone(fi.BySource)
	fi.BySource[FieldSourceRecord] = names
	fi.Record, fi.RecordErr = ProbeRead, nil
	next := newTableFields(fi, 0)
	next.expiry = tf.expiry // learned again on the old schedule
	s.tables[table] = next
	s.mu.Unlock()
	c.log.InfoContext(ctx, "servicenow: learned the fields of "+table+" from "+from, "table", table, "fields", len(next.info.Names))
	c.report(ctx, next)
	return next
}

// readRecordFields reads one record (GET /api/now/table/<t>?sysparm_limit=1):
// every field the integration user may read comes in it. ACLs filter rows
// after the limit, so when X-Total-Count counts rows and none came, a
// second, larger page is tried before calling the rows hidden.
func (c *Client) readRecordFields(ctx context.Context, table string) ([]string, string, int, error) {
	total := -1
	for _, limit := range []int{1, 20} {
		page, err := c.list(ctx, table, ListOptions{Limit: limit, ExcludeReferenceLink: true}, false)
		if err != nil {
			return nil, ProbeFailed, total, fmt.Errorf("reading a record of %s: %w", table, err)
		}
		total = page.Total
		for _, r := range page.Records {
			if len(r) > 0 {
				return slices.Sorted(maps.Keys(r)), ProbeRead, total, nil
			}
		}
		if page.Total <= limit {
			break
		}
	}
	if total > 0 {
		return nil, ProbeHidden, total, nil
	}
	return nil, ProbeEmpty, total, nil
}

// readDictionary reads the element names of table and its parents from
// sys_dictionary (GET /api/now/table/sys_dictionary?sysparm_query=name=<table>
// ^ORname=<parent>&sysparm_fields=element). The table's own row has an
// empty element. The least-privilege user gets 200 with no rows and a
// pre-ACL X-Total-Count (or, on some instances, a 403): hidden, not failed.
func (c *Client) readDictionary(ctx context.Context, table string) ([]string, string, int, error) {
	conds := []Cond{Field("name").EQ(table)}
	for _, p := range c.cfg.TableParents[table] {
		conds = append(conds, Field("name").EQ(p))
	}
	opts := ListOptions{Query: And(Or(conds...)), Fields: []string{"element"}, Limit: 10000}
	var names []string
	total := -1
	for {
		page, err := c.list(ctx, "sys_dictionary", opts, false)
		if errors.Is(err, ErrForbidden) {
			return nil, ProbeHidden, total, nil
		}
		if err != nil {
			return nil, ProbeFailed, total, fmt.Errorf("reading the fields of %s from sys_dictionary: %w", table, err)
		}
		if opts.Offset == 0 {
			total = page.Total
		}
		for _, r := range page.Records {
			if e := r.Get("element"); e != "" {
				names = append(names, e)
			}
		}
		// Hidden rows page like visible ones; an empty page means the
		// ACL hides them all, and walking on would only fetch more nothing.
		if !page.HasNext || len(page.Records) == 0 {
			break
		}
		opts.Offset = page.NextOffset
	}
	switch {
	case len(names) > 0:
		return names, ProbeRead, total, nil
	case total > 0:
		return nil, ProbeHidden, total, nil
	}
	return nil, ProbeEmpty, total, nil
}

// probeText renders an outcome with its count for logs.
func probeText(outcome string, total int) string {
	if total < 0 {
		return outcome
	}
	return outcome + " (X-Total-Count " + strconv.Itoa(total) + ")"
}
