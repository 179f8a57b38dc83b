package reconcile

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// SNPager reads ServiceNow through snclient: keyset scans by
// (sys_updated_on, sys_id), sys_id scans for ByID queries, or
// sysparm_offset pages when Offset is set (kept to measure the difference;
// never the right choice for a big table).
type SNPager struct {
	Client *snclient.Client
	Offset bool

	requests atomic.Int64
}

// Requests is the number of list requests sent so far.
func (p *SNPager) Requests() int64 { return p.requests.Load() }

type pageSource interface {
	Done() bool
	NextPage(ctx context.Context) (*snclient.Page, error)
	Requests() int
}

// Scan implements Pager.
func (p *SNPager) Scan(ctx context.Context, q Query, fn func([]events.Fields, int) error) error {
	var filter snclient.Query
	for _, k := range slices.Sorted(maps.Keys(q.Equals)) {
		filter = filter.And(snclient.Field(k).EQ(q.Equals[k]))
	}
	if len(q.IDs) > 0 {
		if !q.ByID {
			return fmt.Errorf("reconcile: a query of %s by sys_id list must be a ByID query", q.Table)
		}
		ids := make([]any, len(q.IDs))
		for i, id := range q.IDs {
			ids[i] = id
		}
		filter = filter.And(snclient.Field("sys_id").In(ids...))
	}
	var src pageSource
	switch {
	case q.ByID:
		if !q.Since.IsZero() {
			return fmt.Errorf("reconcile: a sys_id scan of %s cannot start at a time", q.Table)
		}
		src = p.Client.IDs(q.Table, snclient.IDOptions{Filter: filter, PageSize: q.PageSize})
	case p.Offset:
		if !q.Since.IsZero() {
			filter = filter.And(snclient.Field("sys_updated_on").GTE(q.Since.UTC()))
		}
		src = p.Client.Offset(q.Table, snclient.ListOptions{
			Query: filter.OrderBy("sys_updated_on").OrderBy("sys_id"), Fields: q.Fields, Limit: q.PageSize, ExcludeReferenceLink: true,
		})
	default:
		opts := snclient.KeysetOptions{Filter: filter, Fields: q.Fields, PageSize: q.PageSize, ExcludeReferenceLink: true}
		if !q.Since.IsZero() {
			// Strictly after the second before Since, at one-second
			// resolution, is sys_updated_on >= Since.
			opts.After = snclient.Cursor{UpdatedOn: q.Since.UTC().Truncate(time.Second).Add(-time.Second)}
		}
		src = p.Client.Keyset(q.Table, opts)
	}
	scanned, total, sent := 0, -1, 0
	defer func() { p.requests.Add(int64(src.Requests() - sent)) }()
	for !src.Done() {
		page, err := src.NextPage(ctx)
		if err != nil {
			return err
		}
		rows := make([]events.Fields, len(page.Records))
		for i, r := range page.Records {
			rows[i] = r.Fields()
		}
		// A keyset page's count covers the rows from its cursor on.
		if page.Total >= 0 {
			est := page.Total
			if !p.Offset || q.ByID {
				est += scanned
			}
			total = max(total, est)
		}
		scanned += len(rows)
		p.requests.Add(int64(src.Requests() - sent))
		sent = src.Requests()
		if err := fn(rows, total); err != nil {
			return err
		}
	}
	if e, ok := src.(interface{ Err() error }); ok && e.Err() != nil {
		return e.Err()
	}
	return nil
}
