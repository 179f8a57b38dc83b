package snclient

import (
	"context"
	"fmt"
	"iter"
)

// IDOptions configure a sys_id scan.
type IDOptions struct {
	// Filter restricts the scan: an AND query without ordering (the pager
	// orders by sys_id) and without NQ.
	Filter   Query
	PageSize int // 0 for Config.PageSize
	// After resumes strictly after this sys_id (empty: from the start).
	After string
}

// IDPager lists the sys_ids of a table in sys_id order, one request per
// page and no growing offset:
//
//	sys_id>ID^ORDERBYsys_id with sysparm_fields=sys_id
//
// It is the presence scan's reader: what a table holds, at the price of 33
// bytes a record. A sys_id never changes, so unlike the (sys_updated_on,
// sys_id) order no record moves during the scan: every record that exists
// from the start of the scan to its end is returned exactly once, whatever
// is updated meanwhile; a record created or deleted during the scan may or
// may not be. As with KeysetPager, a short or empty page does not end the
// scan (row ACLs filter after the limit; Page.HasNext decides), and a page
// emptied by ACLs gives the cursor nothing to advance on, so the next
// request keeps the cursor and steps sysparm_offset over the hidden run.
// Page.Total (X-Total-Count) counts the rows from the cursor on, hidden ones
// included: compare it with what was returned to tell hidden from absent.
type IDPager struct {
	c        *Client
	table    string
	opts     IDOptions
	cur      string
	offset   int
	done     bool
	err      error
	requests int
	warnings []*ACLWarning
}

// IDs returns a sys_id pager over table. It sends nothing until NextPage.
func (c *Client) IDs(table string, opts IDOptions) *IDPager {
	p := &IDPager{c: c, table: table, opts: opts, cur: opts.After}
	if opts.PageSize <= 0 {
		p.opts.PageSize = c.cfg.PageSize
	}
	switch {
	case len(opts.Filter.nq) > 0:
		p.err = fmt.Errorf("%w: sys_id scan filter must not use NQ", ErrInvalidQuery)
	case len(opts.Filter.order) > 0:
		p.err = fmt.Errorf("%w: sys_id scan filter must not order; the pager orders by sys_id", ErrInvalidQuery)
	case opts.After != "" && !sysIDRE.MatchString(opts.After):
		p.err = fmt.Errorf("%w: resume point %q is not a sys_id", ErrInvalidQuery, opts.After)
	}
	return p
}

func (p *IDPager) query() Query {
	f := p.opts.Filter
	if p.cur != "" {
		f = f.And(Field("sys_id").GT(p.cur))
	}
	return f.OrderBy("sys_id")
}

// Done reports the end of the scan (or a failure: see Err).
func (p *IDPager) Done() bool { return p.done || p.err != nil }

// Err is the error that stopped the scan.
func (p *IDPager) Err() error { return p.err }

// Cursor is the last sys_id returned (empty before the first).
func (p *IDPager) Cursor() string { return p.cur }

// Requests counts the list requests sent (retries of one request not
// included).
func (p *IDPager) Requests() int { return p.requests }

// Warnings collects the ACL warnings of every page so far.
func (p *IDPager) Warnings() []*ACLWarning { return p.warnings }

// NextPage fetches the next page of sys_ids (records holding only sys_id).
// It may hold none while the scan goes on; loop until Done. After Done it
// returns an empty page.
func (p *IDPager) NextPage(ctx context.Context) (*Page, error) {
	if p.err != nil {
		return nil, p.err
	}
	if p.done {
		return &Page{Total: -1}, nil
	}
	page, err := p.c.List(ctx, p.table, ListOptions{
		Query: p.query(), Fields: []string{"sys_id"}, Limit: p.opts.PageSize, Offset: p.offset, ExcludeReferenceLink: true,
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
		id := r.SysID()
		if !sysIDRE.MatchString(id) {
			p.err = fmt.Errorf("sys_id scan of %s: a row without a readable sys_id (%q): is sys_id hidden by an ACL?", p.table, id)
			return nil, p.err
		}
		if p.cur != "" && id <= p.cur {
			continue // at or before the cursor: already returned
		}
		if len(kept) > 0 && id <= kept[len(kept)-1].SysID() {
			p.err = fmt.Errorf("sys_id scan of %s: rows not in sys_id order (%s after %s): the instance ignored ORDERBYsys_id", p.table, id, kept[len(kept)-1].SysID())
			return nil, p.err
		}
		kept = append(kept, r)
	}
	page.Records = kept
	switch {
	case len(kept) > 0:
		p.cur, p.offset = kept[len(kept)-1].SysID(), 0
		p.done = !page.HasNext
	case page.HasNext:
		// Nothing visible, more follow: step over the hidden run.
		p.offset = page.NextOffset
	default:
		p.done = true
	}
	return page, nil
}

// Records iterates over every record (sys_id only) of the scan. A failed
// request ends the iteration with its error; the pager keeps its position,
// so a new Records call resumes.
func (p *IDPager) Records(ctx context.Context) iter.Seq2[Record, error] {
	return records(ctx, p)
}
