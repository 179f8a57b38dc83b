package snclient

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"time"
)

// Cursor is a position in (sys_updated_on, sys_id) order.
type Cursor struct {
	UpdatedOn time.Time // UTC, whole seconds
	SysID     string
}

// IsZero reports the start of the table.
func (c Cursor) IsZero() bool { return c.UpdatedOn.IsZero() && c.SysID == "" }

func (c Cursor) less(o Cursor) bool {
	if !c.UpdatedOn.Equal(o.UpdatedOn) {
		return c.UpdatedOn.Before(o.UpdatedOn)
	}
	return c.SysID < o.SysID
}

// KeysetOptions configure a keyset scan.
type KeysetOptions struct {
	// Filter restricts the scan: an AND query without ordering (the pager
	// orders) and without NQ.
	Filter Query
	// Fields to read; sys_updated_on and sys_id are added.
	Fields   []string
	PageSize int // 0 for Config.PageSize
	// After resumes strictly after this position (zero: from the start).
	After Cursor
	// Display is DisplayRaw (default) or DisplayAll; DisplayText would
	// render sys_updated_on in the user's timezone and break the cursor.
	Display              DisplayValue
	ExcludeReferenceLink bool
}

type keysetPhase int

const (
	phaseAfter  keysetPhase = iota // sys_updated_on > T (or everything, at the start)
	phaseSecond                    // sys_updated_on = T ^ sys_id > ID: finish second T
)

// KeysetPager scans a table in (sys_updated_on, sys_id) order without a
// growing offset. It alternates two plain AND queries, the robust form:
//
//	sys_updated_on=T^sys_id>ID^ORDERBYsys_id                      finish second T after ID
//	sys_updated_on>T^ORDERBYsys_updated_on^ORDERBYsys_id          then everything later
//
// so records sharing a second are neither skipped nor repeated. To spend one
// request per page rather than two, a full page's last second is held back
// and re-read by the next "later than" query, unless the page holds a
// single second, which is then finished by sys_id. A short or
// empty page does not end the scan (ACLs filter rows after the limit):
// Page.HasNext (Link rel="next") decides. A page emptied by ACLs gives the
// cursor nothing to advance on, so the next request keeps the cursor and
// steps sysparm_offset over the hidden run; the offset is back to 0 as soon
// as a visible row moves the cursor.
//
// Guarantees when records change during the scan: every record that exists
// unchanged from the start of the scan to its end is returned exactly once,
// and no version of a record is returned twice. An updated record gets a
// later sys_updated_on and moves ahead of the cursor, so it may be returned
// twice (its old version, then its new one); a record updated before the
// cursor reached it is returned once, in its new version. Records created
// or updated during the scan are returned if their new key lands ahead of
// the cursor; at the live edge (a change stamped with the very second the
// cursor is in) the new key may land behind it, so a record changed there
// can be missed by this scan: the next one, started from a watermark with
// an overlap, finds it. Rows are never returned out of order, and a
// row at or before the cursor is dropped rather than repeated. The one
// exception is inside a run of ACL-hidden pages (the offset steps above):
// an update that moves a hidden row out of that run shifts the offsets and
// may skip one row of it. A watermark kept from Cursor must still re-read
// an overlap window, since ServiceNow stamps sys_updated_on when a
// transaction starts, not when it commits.
type KeysetPager struct {
	c        *Client
	table    string
	opts     KeysetOptions
	fields   []string
	cur      Cursor
	phase    keysetPhase
	offset   int
	done     bool
	err      error
	requests int
	warnings []*ACLWarning
}

// Keyset returns a pager over table. It sends nothing until NextPage.
func (c *Client) Keyset(table string, opts KeysetOptions) *KeysetPager {
	p := &KeysetPager{c: c, table: table, opts: opts, cur: opts.After}
	if opts.PageSize <= 0 {
		p.opts.PageSize = c.cfg.PageSize
	}
	switch {
	case len(opts.Filter.nq) > 0:
		p.err = fmt.Errorf("%w: keyset filter must not use NQ", ErrInvalidQuery)
	case len(opts.Filter.order) > 0:
		p.err = fmt.Errorf("%w: keyset filter must not order; the pager orders by sys_updated_on, sys_id", ErrInvalidQuery)
	case opts.Display == DisplayText:
		p.err = fmt.Errorf("%w: keyset scans need raw sys_updated_on: use DisplayRaw or DisplayAll", ErrInvalidQuery)
	}
	if len(opts.Fields) > 0 {
		p.fields = slices.Clone(opts.Fields)
		for _, f := range []string{"sys_updated_on", "sys_id"} {
			if !slices.Contains(p.fields, f) {
				p.fields = append(p.fields, f)
			}
		}
	}
	if !p.cur.IsZero() {
		p.cur.UpdatedOn = p.cur.UpdatedOn.UTC().Truncate(time.Second)
		if p.cur.SysID != "" {
			p.phase = phaseSecond
		}
	}
	return p
}

func (p *KeysetPager) query() Query {
	f := p.opts.Filter
	switch {
	case p.phase == phaseSecond:
		return f.And(Field("sys_updated_on").EQ(p.cur.UpdatedOn), Field("sys_id").GT(p.cur.SysID)).OrderBy("sys_id")
	case p.cur.UpdatedOn.IsZero():
		return f.OrderBy("sys_updated_on").OrderBy("sys_id")
	default:
		return f.And(Field("sys_updated_on").GT(p.cur.UpdatedOn)).OrderBy("sys_updated_on").OrderBy("sys_id")
	}
}

// Done reports the end of the scan (or a failure: see Err).
func (p *KeysetPager) Done() bool { return p.done || p.err != nil }

// Err is the error that stopped the scan.
func (p *KeysetPager) Err() error { return p.err }

// Cursor is the position after the last record returned.
func (p *KeysetPager) Cursor() Cursor { return p.cur }

// Requests counts the list requests sent (retries of one request not
// included).
func (p *KeysetPager) Requests() int { return p.requests }

// Warnings collects the ACL warnings of every page so far.
func (p *KeysetPager) Warnings() []*ACLWarning { return p.warnings }

// NextPage fetches the next page. It may hold no records while the scan
// goes on; loop until Done. After Done it returns an empty page.
func (p *KeysetPager) NextPage(ctx context.Context) (*Page, error) {
	if p.err != nil {
		return nil, p.err
	}
	if p.done {
		return &Page{Total: -1}, nil
	}
	page, err := p.c.List(ctx, p.table, ListOptions{
		Query: p.query(), Fields: p.fields, Limit: p.opts.PageSize, Offset: p.offset,
		Display: p.opts.Display, ExcludeReferenceLink: p.opts.ExcludeReferenceLink,
	})
	p.requests++
	if err != nil {
		// Transient failures leave the pager where it was: calling
		// NextPage again resumes.
		return nil, err
	}
	p.warnings = append(p.warnings, page.Warnings...)
	kept := page.Records[:0:0]
	for _, r := range page.Records {
		at, err := r.UpdatedOn()
		if err != nil || r.SysID() == "" {
			p.err = fmt.Errorf("keyset scan of %s: a row without a readable sys_updated_on/sys_id (ACL hiding system fields?): %v", p.table, err)
			return nil, p.err
		}
		k := Cursor{UpdatedOn: at, SysID: r.SysID()}
		if !p.cur.less(k) && !p.cur.IsZero() {
			continue // at or before the cursor: already returned
		}
		if p.phase == phaseSecond && !k.UpdatedOn.Equal(p.cur.UpdatedOn) {
			p.err = fmt.Errorf("keyset scan of %s: asked for second %s, got a row of %s: the instance ignored the query", p.table, p.cur.UpdatedOn.Format(TimeLayout), k.UpdatedOn.Format(TimeLayout))
			return nil, p.err
		}
		p.cur = k
		kept = append(kept, r)
	}
	if len(kept) > 0 && page.HasNext && p.phase == phaseAfter {
		// The page's last second may go on past the page. Rather than a
		// finish-second query after every page, hold that second's rows
		// back and continue with sys_updated_on > (the second before it):
		// one request per page, at the price of re-reading at most one
		// second's rows. A page that is all one second cannot be split
		// this way: finish that second with sys_id > ID instead.
		lastSecond := kept[len(kept)-1].Get("sys_updated_on")
		j := len(kept)
		for j > 0 && kept[j-1].Get("sys_updated_on") == lastSecond {
			j--
		}
		if j > 0 {
			kept = kept[:j]
			p.cur = before(kept)
			page.Records, p.offset = kept, 0
			return page, nil
		}
	}
	page.Records = kept
	switch {
	case len(kept) > 0 && page.HasNext:
		// Second T may hold more rows past the page: finish it first.
		p.phase, p.offset = phaseSecond, 0
	case len(kept) > 0:
		if p.phase == phaseSecond {
			p.phase, p.offset = phaseAfter, 0
		} else {
			p.done = true
		}
	case page.HasNext:
		// Nothing visible, more follow: step over the hidden run.
		p.offset = page.NextOffset
	case p.phase == phaseSecond:
		p.phase, p.offset = phaseAfter, 0
	default:
		p.done = true
	}
	return page, nil
}

// before is the key of the last of recs (all parsed above).
func before(recs []Record) Cursor {
	r := recs[len(recs)-1]
	at, _ := r.UpdatedOn()
	return Cursor{UpdatedOn: at, SysID: r.SysID()}
}

// Records iterates over every record of the scan. A failed request ends
// the iteration with its error; the pager keeps its position, so a new
// Records call resumes.
func (p *KeysetPager) Records(ctx context.Context) iter.Seq2[Record, error] {
	return records(ctx, p)
}

type pager interface {
	NextPage(ctx context.Context) (*Page, error)
	Done() bool
}

func records(ctx context.Context, p pager) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		for !p.Done() {
			page, err := p.NextPage(ctx)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, r := range page.Records {
				if !yield(r, nil) {
					return
				}
			}
		}
	}
}

// OffsetPager pages with sysparm_offset, following Link rel="next": the
// common way, kept for comparison. ServiceNow walks every skipped row, so
// deep pages get slower, and rows inserted or moved during the scan shift
// the offsets (skips and repeats). Prefer KeysetPager.
type OffsetPager struct {
	c        *Client
	table    string
	opts     ListOptions
	done     bool
	requests int
	warnings []*ACLWarning
}

// Offset returns an offset pager. Without an ordering in opts.Query it
// orders by sys_updated_on, sys_id, so pages are stable.
func (c *Client) Offset(table string, opts ListOptions) *OffsetPager {
	if len(opts.Query.order) == 0 {
		opts.Query = opts.Query.OrderBy("sys_updated_on").OrderBy("sys_id")
	}
	if opts.Limit <= 0 {
		opts.Limit = c.cfg.PageSize
	}
	opts.Offset = max(opts.Offset, 0)
	return &OffsetPager{c: c, table: table, opts: opts}
}

// Done reports the end of the scan.
func (p *OffsetPager) Done() bool { return p.done }

// Requests counts the list requests sent.
func (p *OffsetPager) Requests() int { return p.requests }

// Warnings collects the ACL warnings of every page so far.
func (p *OffsetPager) Warnings() []*ACLWarning { return p.warnings }

// NextPage fetches the next page; like KeysetPager's, it may be empty
// while more follow.
func (p *OffsetPager) NextPage(ctx context.Context) (*Page, error) {
	if p.done {
		return &Page{Total: -1}, nil
	}
	page, err := p.c.List(ctx, p.table, p.opts)
	p.requests++
	if err != nil {
		if errors.Is(err, ErrInvalidQuery) {
			p.done = true
		}
		return nil, err
	}
	p.warnings = append(p.warnings, page.Warnings...)
	if page.HasNext && page.NextOffset > p.opts.Offset {
		p.opts.Offset = page.NextOffset
	} else {
		p.done = true
	}
	return page, nil
}

// Records iterates over every record of the scan.
func (p *OffsetPager) Records(ctx context.Context) iter.Seq2[Record, error] {
	return records(ctx, p)
}
