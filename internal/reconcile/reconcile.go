// Package reconcile finds the ServiceNow changes that never reached SN_EVENTS
// (dropped business-rule calls, setWorkflow(false) imports, deletes) by
// scanning each table by (sys_updated_on, sys_id) from a watermark and
// comparing every record with the version bridge_state last saw, and finds
// deletes by presence: the ids bridge_state knows that a sys_id scan of the
// table no longer returns (sys_audit_delete is only a fast path, where the
// integration user may read it). What is missing is published to SN_EVENTS
// under the webhook's own Nats-Msg-Id, so a late webhook and a reconcile
// finding of one version are stored once.
package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/lease"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// AuditDeleteTable is where ServiceNow records deletes of audited tables.
const AuditDeleteTable = "sys_audit_delete"

// Query asks for the rows of a table changed at or after Since, or, with
// ByID, for its sys_ids.
type Query struct {
	Table    string
	Equals   map[string]string // field=value conditions ANDed to the scan (sys_audit_delete: tablename=<table>)
	Since    time.Time         // sys_updated_on >= Since; zero reads the whole table
	Fields   []string          // sysparm_fields
	PageSize int               // sysparm_limit
	// ByID scans in sys_id order (sys_id>last^ORDERBYsys_id) instead of by
	// (sys_updated_on, sys_id): the presence scan. Since must be zero;
	// rows carry sys_id only.
	ByID bool
	// IDs, with ByID, restricts the scan to these sys_ids (sys_idIN...):
	// confirming presence candidates one batch at a time.
	IDs []string
}

// Pager reads a table in (sys_updated_on, sys_id) order, or in sys_id
// order for a ByID query, one request per page. snclient's keyset pagers
// are the production implementation.
type Pager interface {
	// Scan calls fn with each page of rows, in order. total is the number of
	// rows ServiceNow counted for the query (X-Total-Count, which counts
	// rows hidden by ACLs), or -1. A short or empty page is not the end;
	// Scan returns when the rows are exhausted, or with fn's first error.
	Scan(ctx context.Context, q Query, fn func(rows []events.Fields, total int) error) error
}

// Versions tells what the bridge knows of a table's records (bridge_state,
// owned by the state package; state.Store is the implementation).
type Versions interface {
	// LastVersion returns the record's last sys_mod_count seen by the
	// bridge; known is false when the bridge never saw the record, deleted
	// is true when its delete was applied.
	LastVersion(ctx context.Context, table, sysID string) (version int64, known, deleted bool, err error)
	// RecordIDs lists the sys_ids the bridge holds a record of (deleted
	// ones included), without reading the records: the presence scan's
	// snapshot.
	RecordIDs(ctx context.Context, table string) ([]string, error)
}

// Echoes reports versions the bridge itself just wrote to ServiceNow
// (dedupe.Cache); they must not be synced back to the app.
type Echoes interface {
	Wrote(table, sysID string, modCount int64) bool
}

// AttachmentChecker compares a record's attachments in ServiceNow with
// what the bridge synced and publishes to SN_EVENTS what its webhooks
// missed (internal/attach's Syncer). found counts the events SN_EVENTS did
// not hold yet.
type AttachmentChecker interface {
	CheckAttachments(ctx context.Context, table, sysID string) (found int, err error)
}

// Limiter paces requests (ClientShare; golang.org/x/time/rate.Limiter satisfies it too).
type Limiter interface {
	Wait(ctx context.Context) error
}

// Config tunes reconcile. Zero values take the defaults.
type Config struct {
	Tables []string
	// Fields returns the fields the mapping needs for a table (sysparm_fields);
	// the system fields reconcile itself needs are always added.
	Fields   func(table string) []string
	Instance string // copied into synthesized events

	PageSize int // rows per request (default 1000)
	// IDPageSize is rows per request of the presence scan's sys_id pages
	// (default 10 × PageSize, at most 10,000, the Table API's default
	// limit): a row of sys_id alone is about 45 bytes.
	IDPageSize int
	Overlap    time.Duration // re-read window before the watermark (default 2m)
	Backfill   time.Duration // first run without a watermark starts now − Backfill (default 24h)
	Interval   time.Duration // Run's period; 0 makes Run return at once
	LeaseTTL   time.Duration // default 1m; renewed every third of it during a pass
	Holder     string        // lease holder name (default host-pid-random)
	// DeleteScanInterval is how often a pass also runs the presence scan
	// (BRIDGE_DELETE_SCAN_INTERVAL): it reads every sys_id of the table, so
	// it does not run on every pass. The last scan's time is kept in
	// bridge_state, shared by replicas and restarts. 0: only Full passes
	// run it.
	DeleteScanInterval time.Duration
	// SkipDeletes turns off delete detection: the presence scan and the
	// sys_audit_delete fast path.
	SkipDeletes bool
	// Lookups is how many bridge_state reads run at once per page (default 16).
	Lookups int
	// Limiter paces ServiceNow requests: give reconcile a share of the
	// instance's quota so the writeback keeps the rest. Nil: unpaced.
	Limiter Limiter
	Echoes  Echoes // optional
	// Trace records each gap and delete found, with the SN_EVENTS sequence
	// it was stored at, in the decision log; nil records nothing.
	Trace *trace.Recorder
	// Attachments, when set, checks the attachments of every record a pass
	// re-reads: one Attachment API list per record, paced by Limiter.
	Attachments AttachmentChecker

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

func (c Config) withDefaults() Config {
	if c.PageSize <= 0 {
		c.PageSize = 1000
	}
	if c.IDPageSize <= 0 {
		c.IDPageSize = min(10*c.PageSize, 10_000)
	}
	if c.Overlap <= 0 {
		c.Overlap = 2 * time.Minute
	}
	if c.Backfill <= 0 {
		c.Backfill = 24 * time.Hour
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = time.Minute
	}
	if c.Holder == "" {
		c.Holder = lease.DefaultHolder()
	}
	if c.Lookups <= 0 {
		c.Lookups = 16
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Reconciler runs reconcile passes. It is safe for concurrent use; the lease
// keeps two passes of one table apart, across replicas too.
type Reconciler struct {
	cfg      Config
	js       jetstream.JetStream
	store    Store
	pager    Pager
	versions Versions
	m        *metrics
	logged   sync.Map // logOnce keys
}

// New builds a Reconciler publishing to SN_EVENTS through js and keeping its
// watermarks, leases and pass summaries in state (the bridge_state bucket).
func New(js jetstream.JetStream, state jetstream.KeyValue, sn Pager, versions Versions, cfg Config) (*Reconciler, error) {
	cfg = cfg.withDefaults()
	if len(cfg.Tables) == 0 {
		return nil, errors.New("reconcile: no tables configured")
	}
	for _, t := range cfg.Tables {
		if !events.ValidTable(t) {
			return nil, fmt.Errorf("reconcile: %q is not a ServiceNow table name", t)
		}
	}
	if js == nil || state == nil || sn == nil || versions == nil {
		return nil, errors.New("reconcile: JetStream, bridge_state, a ServiceNow pager and versions are required")
	}
	return &Reconciler{cfg: cfg, js: js, store: Store{KV: state}, pager: sn, versions: versions, m: newMetrics(cfg.Registerer)}, nil
}

// PassOptions changes where one pass starts.
type PassOptions struct {
	Since time.Time // start here instead of the watermark (minus the overlap)
	Full  bool      // read the whole table
	// Progress is called after each page with the records scanned so far
	// and ServiceNow's count for the scan (-1 when unknown).
	Progress func(table string, scanned, total int)
	// PresenceProgress is Progress for the presence scan's sys_id pages.
	PresenceProgress func(table string, scanned, total int)
}

// Run reconciles every table every Interval until ctx ends, and returns nil
// then; it returns at once when Interval is 0. A failed pass is logged and
// counted, never fatal: the next tick tries again.
func (r *Reconciler) Run(ctx context.Context) error {
	if r.cfg.Interval <= 0 {
		r.cfg.Logger.Info("reconcile disabled (BRIDGE_RECONCILE_INTERVAL=0)")
		return nil
	}
	// A first pass soon after start catches what was lost while the bridge
	// was down; jitter keeps replicas from all asking for the lease at once.
	delay := min(r.cfg.Interval, 10*time.Second) + jitter(r.cfg.Interval/10)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	// A table refused for its lease is tried again every tenth of the
	// lease TTL, not an Interval later: when the holder died mid-pass (a
	// killed sync owner), its lease expires within LeaseTTL and the new
	// owner takes the cut pass over then, rather than up to an Interval
	// (5m by default) after (issue 14).
	retryHeld := min(r.cfg.Interval, max(r.cfg.LeaseTTL/10, 100*time.Millisecond))
	held := map[string]bool{}
	var nextRound time.Time // the first tick is a round of every table
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		round := !time.Now().Before(nextRound)
		for _, table := range r.cfg.Tables {
			if ctx.Err() != nil {
				return nil
			}
			if !round && !held[table] {
				continue
			}
			_, err := r.Pass(ctx, table, PassOptions{})
			held[table] = errors.Is(err, ErrLeaseHeld)
			if err != nil && !held[table] && ctx.Err() == nil {
				r.cfg.Logger.Error("reconcile pass failed", "table", table, "err", err)
			}
		}
		if round {
			nextRound = time.Now().Add(r.cfg.Interval + jitter(r.cfg.Interval/10))
		}
		wait := time.Until(nextRound)
		for _, h := range held {
			if h {
				wait = min(wait, retryHeld+jitter(retryHeld/2))
				break
			}
		}
		timer.Reset(wait)
	}
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// Once runs one pass of every table, in order, and returns their summaries.
// It stops at the first table that fails.
func (r *Reconciler) Once(ctx context.Context, opts PassOptions) ([]Summary, error) {
	var out []Summary
	for _, table := range r.cfg.Tables {
		sum, err := r.Pass(ctx, table, opts)
		out = append(out, sum)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// Pass runs one reconcile pass of table under its lease. It returns an
// error wrapping ErrLeaseHeld when another replica is reconciling the table.
func (r *Reconciler) Pass(ctx context.Context, table string, opts PassOptions) (Summary, error) {
	sum := Summary{Table: table, Holder: r.cfg.Holder, Started: r.cfg.Now().UTC()}
	lease, err := AcquireLease(ctx, r.js, r.store.KV, table, r.cfg.Holder, r.cfg.LeaseTTL)
	if err != nil {
		if errors.Is(err, ErrLeaseHeld) {
			r.m.passes.WithLabelValues(table, "skipped").Inc()
			r.cfg.Logger.Info("reconcile pass skipped: another replica holds the lease", "table", table, "err", err)
		}
		return sum, err
	}
	passCtx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		t := time.NewTicker(r.cfg.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-passCtx.Done():
				return
			case <-t.C:
				if err := lease.Renew(passCtx); err != nil {
					cancel(fmt.Errorf("lost the reconcile lease of %s: %w", table, err))
					return
				}
			}
		}
	})

	err = r.pass(passCtx, table, opts, &sum)
	close(stop)
	wg.Wait()
	if cause := context.Cause(passCtx); err != nil && cause != nil && ctx.Err() == nil {
		err = cause
	}
	cancel(nil)

	// Bookkeeping must survive a cancelled pass context.
	bg, bgCancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer bgCancel()
	sum.Finished = r.cfg.Now().UTC()
	sum.Duration = sum.Finished.Sub(sum.Started)
	result := "ok"
	if err != nil {
		result = "error"
		sum.Error = err.Error()
	}
	r.m.passes.WithLabelValues(table, result).Inc()
	r.m.duration.WithLabelValues(table).Observe(sum.Duration.Seconds())
	if err == nil {
		r.m.lastPass.WithLabelValues(table).Set(float64(sum.Finished.Unix()))
	}
	if !sum.Watermark.IsZero() {
		r.m.watermark.WithLabelValues(table).Set(float64(sum.Watermark.Unix()))
	}
	if serr := r.store.SavePass(bg, sum); serr != nil {
		r.cfg.Logger.Warn("cannot store the reconcile pass summary", "table", table, "err", serr)
	}
	if rerr := lease.Release(bg); rerr != nil {
		r.cfg.Logger.Debug("reconcile lease not released (it expires on its own)", "table", table, "err", rerr)
	}
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelError
	}
	r.cfg.Logger.Log(bg, level, "reconcile pass",
		"table", table, "pages", sum.Pages, "records_scanned", sum.Scanned, "gaps", sum.Gaps,
		"deletes", sum.Deletes, "in_flight", sum.InFlight, "echoes", sum.Echoes, "attachments", sum.Attachments,
		"from", sum.From, "watermark", sum.Watermark, "duration", sum.Duration, "delete_scan", sum.DeleteScan,
		"audit_delete", sum.Audit, "hidden", sum.Hidden, "err", err)
	return sum, err
}

// systemFields are read whatever the mapping says: the keyset cursor, the
// version and what a webhook event carries.
var systemFields = []string{"sys_id", "sys_mod_count", "sys_updated_on", "sys_updated_by"}

func (r *Reconciler) fields(table string) []string {
	seen := map[string]bool{}
	var out []string
	add := func(fs []string) {
		for _, f := range fs {
			if f != "" && !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	add(systemFields)
	if r.cfg.Fields != nil {
		add(r.cfg.Fields(table))
	}
	return out
}

func (r *Reconciler) start(wm time.Time, haveWM bool, opts PassOptions) time.Time {
	switch {
	case opts.Full:
		return time.Time{}
	case !opts.Since.IsZero():
		return opts.Since.UTC().Truncate(time.Second)
	case haveWM && !wm.IsZero():
		return wm.Add(-r.cfg.Overlap)
	default:
		return r.cfg.Now().UTC().Add(-r.cfg.Backfill).Truncate(time.Second)
	}
}

func (r *Reconciler) wait(ctx context.Context) error {
	if r.cfg.Limiter == nil {
		return nil
	}
	return r.cfg.Limiter.Wait(ctx)
}

func (r *Reconciler) pass(ctx context.Context, table string, opts PassOptions, sum *Summary) error {
	wm, haveWM, err := r.store.Watermark(ctx, table)
	if err != nil {
		return err
	}
	sum.From = r.start(wm.Records, haveWM, opts)
	sum.Watermark = wm.Records
	if err := r.wait(ctx); err != nil {
		return err
	}
	q := Query{Table: table, Since: sum.From, Fields: r.fields(table), PageSize: r.cfg.PageSize}
	err = r.pager.Scan(ctx, q, func(rows []events.Fields, total int) error {
		sum.Pages++
		sum.Requests++
		if total >= 0 {
			sum.Total = total
		}
		r.m.pages.WithLabelValues(table).Inc()
		newest, err := r.reconcilePage(ctx, table, rows, sum)
		if err != nil {
			return err
		}
		// Every finding of this page is acked by SN_EVENTS: only now may
		// the watermark pass it.
		if newest.After(sum.Watermark) {
			if err := r.store.SetWatermark(ctx, table, Watermark{Records: newest, Deletes: wm.Deletes}); err != nil {
				return err
			}
			sum.Watermark = newest
		}
		if opts.Progress != nil {
			opts.Progress(table, sum.Scanned, sum.Total)
		}
		return r.wait(ctx)
	})
	if err != nil {
		return fmt.Errorf("reconcile %s: %w", table, err)
	}
	r.noteVisibility(table, table, sum.Scanned, sum.Total, sum)
	if r.cfg.SkipDeletes {
		sum.DeleteScan = "off"
		return nil
	}
	return r.reconcileDeletes(ctx, table, wm, haveWM, opts, sum)
}

// finding is one row's verdict.
type finding struct {
	ev      *events.SNEvent
	verdict int
}

const (
	verdictSkip = iota
	verdictUpToDate
	verdictEcho
	verdictGap
)

func (r *Reconciler) reconcilePage(ctx context.Context, table string, rows []events.Fields, sum *Summary) (time.Time, error) {
	var newest time.Time
	found := make([]finding, len(rows))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.cfg.Lookups)
	for i, row := range rows {
		sysID := row["sys_id"]
		mc, mcErr := strconv.ParseInt(row["sys_mod_count"], 10, 64)
		updated, tErr := time.ParseInLocation(events.SNTimeLayout, row["sys_updated_on"], time.UTC)
		if !events.ValidSysID(sysID) || mcErr != nil || mc < 0 || tErr != nil {
			r.cfg.Logger.Warn("reconcile skips a row it cannot read (is sys_id, sys_mod_count or sys_updated_on hidden by an ACL?)",
				"table", table, "sys_id", sysID, "sys_mod_count", row["sys_mod_count"], "sys_updated_on", row["sys_updated_on"])
			continue
		}
		if updated.After(newest) {
			newest = updated
		}
		g.Go(func() error {
			v, known, _, err := r.versions.LastVersion(gctx, table, sysID)
			if err != nil {
				return fmt.Errorf("last version of %s/%s: %w", table, sysID, err)
			}
			switch {
			case known && v >= mc:
				found[i].verdict = verdictUpToDate
			case r.cfg.Echoes != nil && r.cfg.Echoes.Wrote(table, sysID, mc):
				found[i].verdict = verdictEcho
			default:
				found[i] = finding{verdict: verdictGap, ev: r.event(table, row, sysID, mc)}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return time.Time{}, err
	}
	var gaps []*events.SNEvent
	for _, f := range found {
		switch f.verdict {
		case verdictUpToDate:
			sum.UpToDate++
		case verdictEcho:
			sum.Echoes++
		case verdictGap:
			gaps = append(gaps, f.ev)
		}
	}
	sum.Scanned += len(rows)
	r.m.scanned.WithLabelValues(table).Add(float64(len(rows)))
	if err := r.publish(ctx, gaps, sum); err != nil {
		return time.Time{}, err
	}
	if r.cfg.Attachments != nil {
		if err := r.checkAttachments(ctx, table, rows, sum); err != nil {
			return time.Time{}, err
		}
	}
	return newest, nil
}

// checkAttachments has the attachments of a page's records checked. A
// record that cannot be checked is logged, not fatal: its next re-read
// checks it again, and its webhooks are the main way anyway.
func (r *Reconciler) checkAttachments(ctx context.Context, table string, rows []events.Fields, sum *Summary) error {
	for _, row := range rows {
		sysID := row["sys_id"]
		if !events.ValidSysID(sysID) {
			continue
		}
		if err := r.wait(ctx); err != nil {
			return err
		}
		n, err := r.cfg.Attachments.CheckAttachments(ctx, table, sysID)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.cfg.Logger.Warn("reconcile could not check a record's attachments; its next re-read tries again", "table", table, "sys_id", sysID, "err", err)
			continue
		}
		sum.Attachments += n
	}
	return nil
}

func (r *Reconciler) event(table string, row events.Fields, sysID string, mc int64) *events.SNEvent {
	action := events.ActionUpdate
	if mc == 0 {
		action = events.ActionInsert
	}
	rec := make(events.Fields, len(row))
	for k, v := range row {
		rec[k] = v
	}
	return &events.SNEvent{
		Instance:     r.cfg.Instance,
		Table:        table,
		SysID:        sysID,
		Action:       action,
		SysModCount:  events.ModCount(mc),
		SysUpdatedOn: row["sys_updated_on"],
		SysUpdatedBy: row["sys_updated_by"],
		Record:       rec,
		Source:       events.SourceReconcile,
	}
}

// publishBatch bounds the acks outstanding at once.
const publishBatch = 256

// publish stores evs in SN_EVENTS and waits until every one is acked.
func (r *Reconciler) publish(ctx context.Context, evs []*events.SNEvent, sum *Summary) error {
	for start := 0; start < len(evs); start += publishBatch {
		batch := evs[start:min(start+publishBatch, len(evs))]
		futures := make([]jetstream.PubAckFuture, 0, len(batch))
		for _, ev := range batch {
			body, err := json.Marshal(ev)
			if err != nil {
				return fmt.Errorf("encode %s/%s: %w", ev.Table, ev.SysID, err)
			}
			msg := &nats.Msg{Subject: ev.Subject(), Data: body, Header: nats.Header{}}
			msg.Header.Set(events.HeaderMsgID, ev.MsgID())
			msg.Header.Set(events.HeaderSource, events.SourceReconcile)
			f, err := r.js.PublishMsgAsync(msg)
			if err != nil {
				return fmt.Errorf("publish %s: %w", ev.MsgID(), err)
			}
			futures = append(futures, f)
		}
		for i, f := range futures {
			select {
			case ack := <-f.Ok():
				if ack.Duplicate {
					sum.InFlight++
					continue
				}
				if batch[i].Action == events.ActionDelete {
					sum.Deletes++
				} else {
					sum.Gaps++
				}
				r.m.gaps.WithLabelValues(batch[i].Table, batch[i].Action).Inc()
				r.traceFound(batch[i], ack.Sequence)
			case err := <-f.Err():
				return fmt.Errorf("publish %s to SN_EVENTS: %w", batch[i].MsgID(), err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// traceFound records in the decision log that reconcile stored ev, which
// SN_EVENTS lacked, at seq.
func (r *Reconciler) traceFound(ev *events.SNEvent, seq uint64) {
	if r.cfg.Trace == nil {
		return
	}
	e := trace.Entry{
		Stage: trace.StageReconcile, Source: trace.SourceReconcile, Table: ev.Table, SysID: ev.SysID, Number: ev.Record["number"],
		Action: ev.Action, Version: int64(ev.SysModCount), Decision: trace.GapFound,
		Reason: "ServiceNow holds this version and SN_EVENTS did not (its webhook never arrived): stored for the apply pipeline",
		Refs:   []trace.Ref{{Stream: events.StreamSN, Seq: seq}},
	}
	if ev.Action == events.ActionDelete {
		e.Decision = trace.DeleteFound
		e.Reason = "the record is gone from ServiceNow and its delete never arrived: a delete event stored for the apply pipeline"
	}
	r.cfg.Trace.Record(e)
}

// RateShare is the part of the ServiceNow client's rate that reconcile
// takes at most while the writeback is busy, leaving it the rest.
const RateShare = 0.5

// ClientShare paces reconcile on the budget of sn, the client the
// writeback uses too: the rate sn may send at (the rate limit rules it
// learns from the instance's answers, capped by BRIDGE_SN_RATE_LIMIT), of
// which reconcile takes at most RateShare while the writeback is busy and
// all of it while the writeback is idle. Nil when sn is.
func ClientShare(sn *snclient.Client) Limiter {
	if sn == nil {
		return nil
	}
	return sn.Share(RateShare)
}
