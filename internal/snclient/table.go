package snclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
)

// DisplayValue is sysparm_display_value.
type DisplayValue string

// Display modes.
const (
	DisplayRaw  DisplayValue = "false" // raw values (default)
	DisplayText DisplayValue = "true"  // display values only, in the user's format and timezone
	DisplayAll  DisplayValue = "all"   // both, each field {display_value, value}
)

var sysIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ListOptions are the parameters of a list call.
type ListOptions struct {
	Query   Query
	Fields  []string // sysparm_fields; empty for all
	Limit   int      // sysparm_limit; 0 for Config.PageSize
	Offset  int      // sysparm_offset
	Display DisplayValue
	// ExcludeReferenceLink makes references plain strings.
	ExcludeReferenceLink bool
	// NoCount skips X-Total-Count (sysparm_no_count): cheaper, but the ACL
	// row warning and the no-Link fallback then have less to go on.
	NoCount bool
}

// Page is one list answer.
type Page struct {
	Records []Record
	// Total is X-Total-Count (rows matching the query, rows hidden by ACLs
	// included), -1 when absent.
	Total  int
	Offset int
	Limit  int
	Links  []Link
	// HasNext says more rows follow, whatever the number of rows here: a
	// page filtered by ACLs after the limit may be short or empty while
	// more follow. It comes from Link rel="next"; without a Link header
	// from X-Total-Count; without either from a full page.
	HasNext    bool
	NextOffset int
	// Warnings: the answer looks ACL-filtered (rows or fields missing).
	Warnings []*ACLWarning
}

// ReadOptions are the parameters of a single-record read.
type ReadOptions struct {
	Fields               []string
	Display              DisplayValue
	ExcludeReferenceLink bool
}

func checkTable(table string) error {
	if !tableNameRE.MatchString(table) {
		return fmt.Errorf("%w: %q is not a table name", ErrInvalidQuery, table)
	}
	return nil
}

func checkSysID(id string) error {
	if !sysIDRE.MatchString(id) {
		return fmt.Errorf("%w: %q is not a sys_id (32 lowercase hex characters)", ErrInvalidQuery, id)
	}
	return nil
}

func (d DisplayValue) valid() bool {
	return d == "" || d == DisplayRaw || d == DisplayText || d == DisplayAll
}

// List runs one list request. An empty result is an empty page, on v1 (404
// "No Record found") as on v2 (200 []). Query and field names are checked
// against the table's fields first.
func (c *Client) List(ctx context.Context, table string, opts ListOptions) (*Page, error) {
	return c.list(ctx, table, opts, true)
}

func (c *Client) list(ctx context.Context, table string, opts ListOptions, validate bool) (*Page, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	if err := opts.Query.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidQuery, err)
	}
	if !opts.Display.valid() {
		return nil, fmt.Errorf("%w: display value %q", ErrInvalidQuery, opts.Display)
	}
	if opts.Limit <= 0 {
		opts.Limit = c.cfg.PageSize
	}
	opts.Offset = max(opts.Offset, 0)
	for _, f := range opts.Fields {
		if !fieldNameRE.MatchString(f) {
			return nil, fmt.Errorf("%w: %q is not a field name", ErrInvalidQuery, f)
		}
	}
	if validate {
		empty, err := c.checkQuery(ctx, table, opts.Query.Fields(), opts.Fields)
		if err != nil {
			return nil, err
		}
		if empty {
			return &Page{Total: 0, Offset: opts.Offset, Limit: opts.Limit}, nil
		}
	}
	q := url.Values{}
	if s := opts.Query.Encode(); s != "" {
		q.Set("sysparm_query", s)
	}
	if len(opts.Fields) > 0 {
		q.Set("sysparm_fields", strings.Join(opts.Fields, ","))
	}
	q.Set("sysparm_limit", strconv.Itoa(opts.Limit))
	if opts.Offset > 0 {
		q.Set("sysparm_offset", strconv.Itoa(opts.Offset))
	}
	if opts.Display != "" {
		q.Set("sysparm_display_value", string(opts.Display))
	}
	if opts.ExcludeReferenceLink {
		q.Set("sysparm_exclude_reference_link", "true")
	}
	if opts.NoCount {
		q.Set("sysparm_no_count", "true")
	}
	page := &Page{Total: -1, Offset: opts.Offset, Limit: opts.Limit}
	resp, err := c.do(ctx, &call{method: http.MethodGet, table: table, path: c.cfg.tablePath(table), query: q})
	if err != nil {
		if isNoRecordFound(err) {
			return page, nil
		}
		return nil, fmt.Errorf("list %s: %w", table, err)
	}
	var env struct {
		Result []Record `json:"result"`
	}
	if err := json.Unmarshal(resp.body, &env); err != nil {
		return nil, fmt.Errorf("list %s: decoding the answer: %w", table, err)
	}
	page.Records = env.Result
	if v := resp.header.Get("X-Total-Count"); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
			page.Total = n
		}
	}
	page.Links = ParseLinks(resp.header.Values("Link")...)
	page.HasNext, page.NextOffset = nextOf(page, len(resp.header.Values("Link")) > 0)
	c.aclWarnings(page, table, opts.Fields)
	return page, nil
}

// isNoRecordFound is v1's answer to a query without matches.
func isNoRecordFound(err error) bool {
	var ae *APIError
	return asAPIError(err, &ae) && ae.Status == 404 && strings.EqualFold(strings.TrimSpace(ae.Message), "No Record found")
}

func nextOf(p *Page, hadLinkHeader bool) (bool, int) {
	step := p.Offset + p.Limit
	if hadLinkHeader {
		l, ok := findLink(p.Links, "next")
		if !ok {
			return false, 0
		}
		off, ok := l.Offset()
		if !ok {
			return false, 0
		}
		if off <= p.Offset {
			// A next link that does not move forward would loop.
			off = step
		}
		return true, off
	}
	if p.Total >= 0 {
		return step < p.Total, step
	}
	return len(p.Records) >= p.Limit, step
}

func (c *Client) aclWarnings(p *Page, table string, fields []string) {
	if p.Total >= 0 {
		expect := min(p.Limit, max(p.Total-p.Offset, 0))
		if len(p.Records) < expect {
			p.Warnings = append(p.Warnings, &ACLWarning{Table: table, Kind: ACLRows, Total: p.Total, Returned: len(p.Records), Hint: HintACLHidden})
		}
	}
	if len(fields) > 0 && len(p.Records) > 0 {
		var missing []string
		for _, r := range p.Records {
			for _, f := range fields {
				if !r.Has(f) && !slices.Contains(missing, f) {
					missing = append(missing, f)
				}
			}
		}
		if len(missing) > 0 {
			p.Warnings = append(p.Warnings, &ACLWarning{Table: table, Kind: ACLFields, Fields: missing, Hint: HintACLHidden})
		}
	}
	for _, w := range p.Warnings {
		c.m.aclWarnings.WithLabelValues(table, w.Kind).Inc()
		c.log.Debug("servicenow answer looks ACL-filtered", "table", table, "warning", w.Error())
	}
}

// GetRecord reads one record.
func (c *Client) GetRecord(ctx context.Context, table, sysID string, opts ReadOptions) (Record, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	if err := checkSysID(sysID); err != nil {
		return nil, err
	}
	if !opts.Display.valid() {
		return nil, fmt.Errorf("%w: display value %q", ErrInvalidQuery, opts.Display)
	}
	if _, err := c.checkQuery(ctx, table, nil, opts.Fields); err != nil {
		return nil, err
	}
	q := url.Values{}
	if len(opts.Fields) > 0 {
		q.Set("sysparm_fields", strings.Join(opts.Fields, ","))
	}
	if opts.Display != "" {
		q.Set("sysparm_display_value", string(opts.Display))
	}
	if opts.ExcludeReferenceLink {
		q.Set("sysparm_exclude_reference_link", "true")
	}
	resp, err := c.do(ctx, &call{method: http.MethodGet, table: table, sysID: sysID, path: c.cfg.tablePath(table) + "/" + sysID, query: q})
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", table, sysID, err)
	}
	r, err := decodeOne(resp.body)
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", table, sysID, err)
	}
	return r, nil
}

// Get reads one record's raw values (references as sys_ids).
func (c *Client) Get(ctx context.Context, table, sysID string) (events.Fields, error) {
	r, err := c.GetRecord(ctx, table, sysID, ReadOptions{ExcludeReferenceLink: true})
	if err != nil {
		return nil, err
	}
	return r.Fields(), nil
}

// Create inserts a record (POST, 201) and returns it as ServiceNow stored
// it: sys_id, number and computed fields included. Field names are checked
// first, since ServiceNow ignores unknown ones silently.
func (c *Client) Create(ctx context.Context, table string, fields map[string]string) (events.Fields, error) {
	r, err := c.write(ctx, http.MethodPost, table, "", fields)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", table, err)
	}
	return r.Fields(), nil
}

// Update changes the fields sent (PATCH) and returns the record after it.
func (c *Client) Update(ctx context.Context, table, sysID string, fields map[string]string) (events.Fields, error) {
	if err := checkSysID(sysID); err != nil {
		return nil, err
	}
	r, err := c.write(ctx, http.MethodPatch, table, sysID, fields)
	if err != nil {
		return nil, fmt.Errorf("update %s/%s: %w", table, sysID, err)
	}
	return r.Fields(), nil
}

// Delete deletes a record (204). A record already gone is ErrNotFound.
func (c *Client) Delete(ctx context.Context, table, sysID string) error {
	if err := checkTable(table); err != nil {
		return err
	}
	if err := checkSysID(sysID); err != nil {
		return err
	}
	_, err := c.do(ctx, &call{method: http.MethodDelete, table: table, sysID: sysID, path: c.cfg.tablePath(table) + "/" + sysID})
	if err != nil {
		return fmt.Errorf("delete %s/%s: %w", table, sysID, err)
	}
	return nil
}

// FindByCorrelation returns the sys_id of the oldest record of table whose
// link field (the mapping's, e.g. correlation_id) holds id, or "" when there
// is none.
func (c *Client) FindByCorrelation(ctx context.Context, table, field, id string) (string, error) {
	if field == "" {
		return "", fmt.Errorf("%w: find %s by an external id: no link field given", ErrInvalidQuery, table)
	}
	p, err := c.List(ctx, table, ListOptions{
		Query:  And(Field(field).EQ(id)).OrderBy("sys_created_on"),
		Fields: []string{"sys_id"}, Limit: 1, NoCount: true,
	})
	if err != nil {
		return "", err
	}
	if len(p.Records) == 0 {
		return "", nil
	}
	return p.Records[0].SysID(), nil
}

func (c *Client) write(ctx context.Context, method, table, sysID string, fields map[string]string) (Record, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		if !fieldNameRE.MatchString(k) || strings.Contains(k, ".") {
			return nil, fmt.Errorf("%w: %q is not a writable field name", ErrInvalidQuery, k)
		}
		names = append(names, k)
	}
	slices.Sort(names)
	if err := c.checkWrite(ctx, table, names); err != nil {
		return nil, err
	}
	body, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	path := c.cfg.tablePath(table)
	if sysID != "" {
		path += "/" + sysID
	}
	q := url.Values{"sysparm_exclude_reference_link": {"true"}}
	resp, err := c.do(ctx, &call{method: method, table: table, sysID: sysID, path: path, query: q, body: body})
	if err != nil {
		return nil, err
	}
	r, err := decodeOne(resp.body)
	if err != nil {
		return nil, err
	}
	c.afterWrite(ctx, table, names, r)
	return r, nil
}

// afterWrite learns the table's fields from the returned record when no
// record taught them yet, and warns about fields sent but absent from the
// answer: the answer carries every field the user may read, so such a
// field was ignored (ServiceNow drops unknown fields silently) or cannot
// be read back.
func (c *Client) afterWrite(ctx context.Context, table string, sent []string, r Record) {
	if !c.cfg.SkipFieldValidation {
		c.learnFromRecord(ctx, table, r)
	}
	var absent []string
	for _, n := range sent {
		if !r.Has(n) {
			absent = append(absent, n)
		}
	}
	if len(absent) > 0 {
		c.m.fieldsIgnored.WithLabelValues(table).Inc()
		c.log.WarnContext(ctx, "servicenow answered a write without some fields sent: they are not fields of the table (ServiceNow ignored them) or the integration user cannot read them; check the mapping",
			"table", table, "sys_id", r.SysID(), "fields", absent)
	}
}

func decodeOne(b []byte) (Record, error) {
	var env struct {
		Result Record `json:"result"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("decoding the answer: %w", err)
	}
	if env.Result == nil {
		return nil, fmt.Errorf("decoding the answer: no result object")
	}
	return env.Result, nil
}

// JournalEntries returns the values of the entries of a record's journal
// field (comments, work_notes) created at or after since, oldest first, at
// most limit. They are rows of sys_journal_field, which the least-privilege
// user may read for records it may read (servicenow-facts.md). A write that
// appended an entry and lost its answer (a crash, a dropped connection) is
// retried only after asking this, so the entry is not appended twice.
func (c *Client) JournalEntries(ctx context.Context, table, sysID, field string, since time.Time, limit int) ([]string, error) {
	p, err := c.List(ctx, "sys_journal_field", ListOptions{
		Query: And(Field("element_id").EQ(sysID), Field("element").EQ(field), Field("name").EQ(table),
			Field("sys_created_on").GTE(since)).OrderBy("sys_created_on"),
		Fields: []string{"value"}, Limit: limit, NoCount: true,
	})
	if err != nil {
		return nil, fmt.Errorf("journal of %s/%s %s: %w", table, sysID, field, err)
	}
	out := make([]string, 0, len(p.Records))
	for _, r := range p.Records {
		out = append(out, r["value"].Value)
	}
	return out, nil
}
