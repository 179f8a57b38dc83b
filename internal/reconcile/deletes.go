package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Deletes leave no row to scan by sys_updated_on. Two ways find them:
//
//   - sys_audit_delete, the fast path: a row per delete of an audited table,
//     read from the watermark on every pass. The least-privilege
//     integration user cannot read it (200, no rows, X-Total-Count still
//     counting them), and archiving, the table cleaner and no_audit_delete
//     tables write no row at all.
//   - the presence scan, the dependable way: snapshot the ids bridge_state
//     knows, list every sys_id of the table, and publish a delete for each
//     known live id the instance no longer has, once confirmed. It costs a
//     read of every sys_id, so it runs every DeleteScanInterval (and on
//     Full passes), not on every pass.

// Audit states (Summary.Audit).
const (
	AuditReadable = "readable" // rows returned: the fast path works
	AuditHidden   = "hidden"   // rows counted, none returned: the user may not read the table
	AuditEmpty    = "empty"    // no row at all: nothing to tell hidden from empty
)

// errStop ends a scan from inside its callback; it never leaves the package.
var errStop = errors.New("scan stopped early")

// bridgeError marks a failure of the bridge's own side (bridge_state,
// SN_EVENTS) inside a scan callback, so it is not mistaken for a table the
// integration user cannot read.
type bridgeError struct{ err error }

func (e bridgeError) Error() string { return e.err.Error() }
func (e bridgeError) Unwrap() error { return e.err }

// reconcileDeletes runs the sys_audit_delete fast path and, when due, the
// presence scan, and says in sum how deletes were checked.
func (r *Reconciler) reconcileDeletes(ctx context.Context, table string, wm Watermark, haveWM bool, opts PassOptions, sum *Summary) error {
	found, err := r.auditDeletes(ctx, table, wm, haveWM, opts, sum)
	if err != nil {
		sum.DeleteScan = "error: sys_audit_delete: " + err.Error()
		return err
	}
	last, haveLast, err := r.store.LastPresence(ctx, table)
	if err != nil {
		sum.DeleteScan = "error: " + err.Error()
		return err
	}
	if haveLast {
		sum.PresenceLast = last.Started
	}
	if opts.Full || presenceDue(r.cfg.DeleteScanInterval, last.Started, haveLast, r.cfg.Now()) {
		ps, err := r.presence(ctx, table, found, opts, sum)
		sum.Presence = &ps
		if err != nil {
			sum.DeleteScan = "error: presence scan: " + err.Error()
			return err
		}
		if err := r.store.SavePresence(ctx, ps); err != nil {
			r.cfg.Logger.Warn("cannot store the presence scan's time; the next pass scans again", "table", table, "err", err)
		}
		sum.PresenceLast = ps.Started
		r.m.presenceLast.WithLabelValues(table).Set(float64(ps.Started.Unix()))
	}
	if r.cfg.DeleteScanInterval > 0 && !sum.PresenceLast.IsZero() {
		sum.PresenceNext = sum.PresenceLast.Add(r.cfg.DeleteScanInterval)
	}
	sum.DeleteScan = deleteVerdict(sum.Audit, sum.Presence)
	return nil
}

// presenceDue reports whether a pass at now runs the presence scan: every
// interval since the last one started, at once when there was none; never
// on schedule when interval is 0.
func presenceDue(interval time.Duration, last time.Time, haveLast bool, now time.Time) bool {
	if interval <= 0 {
		return false
	}
	return !haveLast || !now.Before(last.Add(interval))
}

// deleteVerdict is Summary.DeleteScan: how this pass checked deletes,
// never "ok" when what it had to read was hidden.
func deleteVerdict(audit string, ps *PresenceScan) string {
	switch {
	case ps != nil && ps.Result != PresenceComplete:
		return ps.Result
	case ps != nil:
		return "presence"
	case audit == AuditReadable || audit == AuditEmpty:
		return "audit"
	case audit == AuditHidden:
		return "hidden: " + AuditDeleteTable + " is hidden from the integration user; deletes wait for the presence scan"
	default:
		return "hidden: " + AuditDeleteTable + " unreadable (" + audit + "); deletes wait for the presence scan"
	}
}

// noteVisibility records whether source (the synced table or
// sys_audit_delete) was readable in a scan of table: rows counted and none
// returned is hidden; any row returned is readable; nothing counted says
// nothing.
func (r *Reconciler) noteVisibility(table, source string, returned, total int, sum *Summary) {
	switch {
	case returned > 0:
		r.m.hidden.WithLabelValues(table, source).Set(0)
	case total > 0:
		r.m.hidden.WithLabelValues(table, source).Set(1)
		if !slices.Contains(sum.Hidden, source) {
			sum.Hidden = append(sum.Hidden, source)
		}
		if source == table {
			r.cfg.Logger.Warn("reconcile cannot read the table: ServiceNow counts its rows but returns none; grant the integration user a role that reads this table (docs/servicenow-setup.md says which role each table needs)",
				"table", table, "counted", total)
		}
	}
}

// logOnce logs a condition that holds pass after pass at level the first
// time in this process, and at debug level after that.
func (r *Reconciler) logOnce(key string, level slog.Level, msg string, args ...any) {
	if _, seen := r.logged.LoadOrStore(key, true); seen {
		level = slog.LevelDebug
	}
	r.cfg.Logger.Log(context.Background(), level, msg, args...)
}

var modCountRe = regexp.MustCompile(`<sys_mod_count>(\d+)</sys_mod_count>`)

// auditDeletes publishes delete events for records of table that
// sys_audit_delete lists and bridge_state still holds as live, and returns
// their ids. It sets sum.Audit; a table the user cannot read is not an
// error (the presence scan is the remedy), a failure of the bridge is.
func (r *Reconciler) auditDeletes(ctx context.Context, table string, wm Watermark, haveWM bool, opts PassOptions, sum *Summary) (map[string]bool, error) {
	found := map[string]bool{}
	// One row of the whole table first: it tells readable from hidden
	// without naming a field (a client that cannot read a row of the table
	// cannot learn its fields either, and would refuse the filtered query).
	state, err := r.auditProbe(ctx, sum)
	if err != nil {
		if ctx.Err() != nil {
			return found, ctx.Err()
		}
		state = "unreadable: " + err.Error()
	}
	sum.Audit = state
	if state != AuditReadable {
		r.auditClosed(table, sum)
		return found, nil
	}
	from := r.start(wm.Deletes, haveWM && !wm.Deletes.IsZero(), opts)
	newestSeen := wm.Deletes
	q := Query{
		Table:    AuditDeleteTable,
		Equals:   map[string]string{"tablename": table},
		Since:    from,
		Fields:   []string{"sys_id", "tablename", "documentkey", "sys_created_on", "sys_updated_on", "payload"},
		PageSize: r.cfg.PageSize,
	}
	if err := r.wait(ctx); err != nil {
		return found, err
	}
	pages := 0
	err = r.pager.Scan(ctx, q, func(rows []events.Fields, total int) error {
		sum.Requests++
		pages++
		if pages == 1 && len(rows) == 0 && total > 0 {
			// Counted, not shown: a row ACL on this table's audit rows.
			// Paging through rows the user cannot see tells nothing more.
			sum.Audit = AuditHidden
			return errStop
		}
		dels, newest, err := r.auditPage(ctx, table, rows)
		if err != nil {
			return bridgeError{err}
		}
		if err := r.publish(ctx, dels, sum); err != nil {
			return bridgeError{err}
		}
		for _, ev := range dels {
			found[ev.SysID] = true
		}
		if newest.After(newestSeen) {
			if err := r.store.SetWatermark(ctx, table, Watermark{Records: sum.Watermark, Deletes: newest}); err != nil {
				return bridgeError{err}
			}
			newestSeen = newest
		}
		return r.wait(ctx)
	})
	var be bridgeError
	switch {
	case errors.As(err, &be):
		return found, be.err
	case errors.Is(err, errStop):
	case err != nil:
		if ctx.Err() != nil {
			return found, ctx.Err()
		}
		sum.Audit = "unreadable: " + err.Error()
	}
	if sum.Audit != AuditReadable {
		r.auditClosed(table, sum)
		return found, nil
	}
	r.noteVisibility(table, AuditDeleteTable, 1, 0, sum)
	return found, nil
}

// auditClosed notes a fast path that did not work this pass: hidden or
// unreadable (an empty sys_audit_delete says nothing either way).
func (r *Reconciler) auditClosed(table string, sum *Summary) {
	if sum.Audit == AuditEmpty {
		return
	}
	r.noteVisibility(table, AuditDeleteTable, 0, 1, sum)
	if sum.Audit == AuditHidden {
		r.logOnce(table+"/audit-hidden", slog.LevelInfo, "sys_audit_delete is hidden from the integration user; deletes are found by the presence scan every BRIDGE_DELETE_SCAN_INTERVAL (grant read on sys_audit_delete to find them on every pass, see docs/operations.md)",
			"table", table)
		return
	}
	r.logOnce(table+"/audit-unreadable", slog.LevelWarn, "reconcile cannot read sys_audit_delete; deletes are found by the presence scan every BRIDGE_DELETE_SCAN_INTERVAL (grant the integration user read access to sys_audit_delete to find them on every pass, see docs/operations.md)",
		"table", table, "audit_delete", sum.Audit)
}

// auditProbe reads one row of the whole of sys_audit_delete: readable,
// hidden (counted, not shown) or empty.
func (r *Reconciler) auditProbe(ctx context.Context, sum *Summary) (string, error) {
	if err := r.wait(ctx); err != nil {
		return "", err
	}
	state := AuditEmpty
	err := r.pager.Scan(ctx, Query{Table: AuditDeleteTable, Fields: []string{"sys_id"}, PageSize: 1}, func(rows []events.Fields, total int) error {
		sum.Requests++
		switch {
		case len(rows) > 0:
			state = AuditReadable
		case total > 0:
			state = AuditHidden
		}
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return "", err
	}
	return state, nil
}

// auditPage turns sys_audit_delete rows into delete events of the records
// bridge_state still holds as live; newest is the latest row time seen.
func (r *Reconciler) auditPage(ctx context.Context, table string, rows []events.Fields) (dels []*events.SNEvent, newest time.Time, err error) {
	for _, row := range rows {
		if t, err := time.ParseInLocation(events.SNTimeLayout, row["sys_updated_on"], time.UTC); err == nil && t.After(newest) {
			newest = t
		}
		sysID := row["documentkey"]
		if row["tablename"] != "" && row["tablename"] != table || !events.ValidSysID(sysID) {
			continue
		}
		v, known, deleted, err := r.versions.LastVersion(ctx, table, sysID)
		if err != nil {
			return nil, newest, fmt.Errorf("last version of %s/%s: %w", table, sysID, err)
		}
		if !known || deleted {
			continue // never synced, or its delete is already applied
		}
		// The business rule's delete event carries the record's last
		// sys_mod_count; the audit payload has it. Without the payload
		// the last version the bridge saw is the best guess.
		mc := v
		if m := modCountRe.FindStringSubmatch(row["payload"]); m != nil {
			if n, err := strconv.ParseInt(m[1], 10, 64); err == nil {
				mc = n
			}
		}
		when := row["sys_created_on"]
		if when == "" {
			when = row["sys_updated_on"]
		}
		dels = append(dels, r.deleteEvent(table, sysID, mc, when))
	}
	return dels, newest, nil
}

func (r *Reconciler) deleteEvent(table, sysID string, mc int64, when string) *events.SNEvent {
	return &events.SNEvent{
		Instance: r.cfg.Instance, Table: table, SysID: sysID, Action: events.ActionDelete,
		SysModCount: events.ModCount(mc), SysUpdatedOn: when, Record: events.Fields{"sys_id": sysID},
		Source: events.SourceReconcile,
	}
}

// PresenceComplete is PresenceScan.Result for a scan that compared every id.
const PresenceComplete = "complete"

// PresenceScan is the outcome of one presence scan of a table. The last
// one is stored in bridge_state; its Started time schedules the next.
type PresenceScan struct {
	Table    string        `json:"table"`
	Started  time.Time     `json:"started"` // when bridge_state's ids were listed, before the scan
	Finished time.Time     `json:"finished"`
	Duration time.Duration `json:"duration_ns"`
	// Known is how many ids bridge_state held for the table (deleted ones
	// included) when the scan started.
	Known int `json:"known"`
	// Scanned is how many sys_ids the instance returned; Total what it
	// counted (X-Total-Count, hidden rows included; -1 unknown).
	Scanned int `json:"scanned"`
	Total   int `json:"total"`
	// Candidates are known, not yet deleted ids the scan did not return;
	// each was confirmed with a sys_id query before anything was
	// concluded.
	Candidates int `json:"candidates"`
	// Deleted candidates are gone from the instance: a delete event each
	// (or one already in SN_EVENTS).
	Deleted int `json:"deleted"`
	// Hidden candidates the instance counts but does not show (a row ACL),
	// or cannot count: not deletes.
	Hidden int `json:"hidden"`
	// Present candidates exist after all (restored, or visible again).
	Present  int `json:"present"`
	Requests int `json:"requests"` // ServiceNow list requests, confirmations included
	// Result is PresenceComplete, or "hidden: ..." when the table itself
	// is hidden from the integration user and nothing was concluded.
	Result string `json:"result"`
}

// confirmBatch is how many candidates one sys_idIN query confirms (about
// 3.3 KB of URL, well under the instance's 8 KB limit).
const confirmBatch = 100

// presence runs the presence scan of table. skip holds ids whose delete
// this pass already published from sys_audit_delete.
func (r *Reconciler) presence(ctx context.Context, table string, skip map[string]bool, opts PassOptions, sum *Summary) (PresenceScan, error) {
	ps := PresenceScan{Table: table, Started: r.cfg.Now().UTC(), Total: -1}
	err := r.presenceScan(ctx, &ps, skip, opts, sum)
	ps.Finished = r.cfg.Now().UTC()
	ps.Duration = ps.Finished.Sub(ps.Started)
	return ps, err
}

func (r *Reconciler) presenceScan(ctx context.Context, ps *PresenceScan, skip map[string]bool, opts PassOptions, sum *Summary) error {
	table := ps.Table
	// The snapshot comes first: a record created while the scan runs is
	// not in it, so it cannot look deleted.
	ids, err := r.versions.RecordIDs(ctx, table)
	if err != nil {
		return fmt.Errorf("ids bridge_state knows for %s: %w", table, err)
	}
	known := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		known[id] = struct{}{}
	}
	ps.Known = len(known)
	ids = nil
	if err := r.wait(ctx); err != nil {
		return err
	}
	q := Query{Table: table, ByID: true, Fields: []string{"sys_id"}, PageSize: r.cfg.IDPageSize}
	err = r.pager.Scan(ctx, q, func(rows []events.Fields, total int) error {
		ps.Requests++
		sum.Requests++
		r.m.presencePages.WithLabelValues(table).Inc()
		if total >= 0 {
			ps.Total = max(ps.Total, total)
		}
		for _, row := range rows {
			delete(known, row["sys_id"])
		}
		ps.Scanned += len(rows)
		if opts.PresenceProgress != nil {
			opts.PresenceProgress(table, ps.Scanned, ps.Total)
		}
		return r.wait(ctx)
	})
	if err != nil {
		return fmt.Errorf("sys_id scan of %s: %w", table, err)
	}
	r.noteVisibility(table, table, ps.Scanned, ps.Total, sum)
	if ps.Scanned == 0 && ps.Total > 0 {
		ps.Result = fmt.Sprintf("hidden: %s is hidden from the integration user (%d rows counted, none returned); no delete concluded", table, ps.Total)
		return nil
	}
	ps.Result = PresenceComplete

	var missing []string
	for id := range known {
		if !skip[id] {
			missing = append(missing, id)
		}
	}
	slices.Sort(missing)
	live, versions, err := r.liveCandidates(ctx, table, missing)
	if err != nil {
		return err
	}
	ps.Candidates = len(live)
	if len(live) == 0 {
		return nil
	}
	gone, err := r.confirmGone(ctx, table, live, ps, sum)
	if err != nil {
		return err
	}
	when := ps.Started.Format(events.SNTimeLayout)
	dels := make([]*events.SNEvent, 0, len(gone))
	for _, id := range gone {
		dels = append(dels, r.deleteEvent(table, id, versions[id], when))
	}
	if err := r.publish(ctx, dels, sum); err != nil {
		return err
	}
	ps.Deleted = len(gone)
	r.m.candidates.WithLabelValues(table, "deleted").Add(float64(ps.Deleted))
	r.m.candidates.WithLabelValues(table, "hidden").Add(float64(ps.Hidden))
	r.m.candidates.WithLabelValues(table, "present").Add(float64(ps.Present))
	if ps.Hidden > 0 {
		r.cfg.Logger.Warn("presence scan: records the bridge knows are counted by ServiceNow but hidden from the integration user (a row ACL); they are not treated as deleted",
			"table", table, "hidden", ps.Hidden)
	}
	return nil
}

// liveCandidates keeps the ids bridge_state still holds as live (not
// deleted, not forgotten since the snapshot) with their last versions.
func (r *Reconciler) liveCandidates(ctx context.Context, table string, ids []string) ([]string, map[string]int64, error) {
	type answer struct {
		v    int64
		live bool
	}
	answers := make([]answer, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.cfg.Lookups)
	for i, id := range ids {
		g.Go(func() error {
			v, known, deleted, err := r.versions.LastVersion(gctx, table, id)
			if err != nil {
				return fmt.Errorf("last version of %s/%s: %w", table, id, err)
			}
			answers[i] = answer{v: v, live: known && !deleted}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	var live []string
	versions := map[string]int64{}
	for i, a := range answers {
		if a.live {
			live = append(live, ids[i])
			versions[ids[i]] = a.v
		}
	}
	return live, versions, nil
}

// confirmGone asks the instance about each candidate and returns those it
// no longer has, a sys_idIN query per confirmBatch candidates. ServiceNow
// counts the rows a row ACL hides (X-Total-Count) but does not return them:
// a batch whose count matches the rows returned settles every id in it (the
// others are gone); one whose unreturned ids are all counted is all hidden;
// otherwise its unreturned ids are split in two and asked again, down to
// single ids (counted without a row: hidden; not counted: gone).
func (r *Reconciler) confirmGone(ctx context.Context, table string, ids []string, ps *PresenceScan, sum *Summary) ([]string, error) {
	var gone []string
	var settle func(batch []string) error
	settle = func(batch []string) error {
		shown, total, err := r.lookupIDs(ctx, table, batch, ps, sum)
		if err != nil {
			return err
		}
		var unshown []string
		for _, id := range batch {
			if shown[id] {
				ps.Present++
			} else {
				unshown = append(unshown, id)
			}
		}
		hidden := total - len(shown)
		switch {
		case len(unshown) == 0:
		case total >= 0 && hidden <= 0:
			gone = append(gone, unshown...)
		case total < 0 || hidden >= len(unshown):
			// Every one counted, or nothing counted to tell: not deletes.
			ps.Hidden += len(unshown)
		default:
			half := len(unshown) / 2
			if err := settle(unshown[:half]); err != nil {
				return err
			}
			return settle(unshown[half:])
		}
		return nil
	}
	for start := 0; start < len(ids); start += confirmBatch {
		if err := settle(ids[start:min(start+confirmBatch, len(ids))]); err != nil {
			return nil, err
		}
	}
	return gone, nil
}

// lookupIDs runs a sys_idIN query: the ids returned and the instance's count.
func (r *Reconciler) lookupIDs(ctx context.Context, table string, ids []string, ps *PresenceScan, sum *Summary) (map[string]bool, int, error) {
	if err := r.wait(ctx); err != nil {
		return nil, 0, err
	}
	shown := map[string]bool{}
	total := -1
	err := r.pager.Scan(ctx, Query{Table: table, ByID: true, IDs: ids, Fields: []string{"sys_id"}, PageSize: len(ids)}, func(rows []events.Fields, tot int) error {
		ps.Requests++
		sum.Requests++
		if tot >= 0 {
			total = max(total, tot)
		}
		for _, row := range rows {
			shown[row["sys_id"]] = true
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("confirm %d presence candidates of %s: %w", len(ids), table, err)
	}
	return shown, total, nil
}

// DeleteReport says in one line, for people (bridge reconcile, bridge
// status), how the pass checked deletes and what it found.
func (s Summary) DeleteReport() string {
	if s.DeleteScan == "off" {
		return "off: deletes not checked"
	}
	var parts []string
	switch p := s.Presence; {
	case p != nil && p.Result == PresenceComplete:
		line := fmt.Sprintf("presence scan: %d of %d records the bridge knows are gone from ServiceNow (%d delete events); %d sys_ids read, %d counted, in %d requests, %s",
			p.Deleted, p.Known, p.Deleted, p.Scanned, p.Total, p.Requests, p.Duration.Round(time.Millisecond))
		if p.Hidden > 0 {
			line += fmt.Sprintf("; %d hidden by a row ACL (not deleted)", p.Hidden)
		}
		parts = append(parts, line)
	case p != nil:
		parts = append(parts, p.Result)
	case strings.HasPrefix(s.DeleteScan, "error: "):
		parts = append(parts, s.DeleteScan)
	}
	switch {
	case s.Audit == AuditReadable:
		parts = append(parts, "sys_audit_delete readable (checked every pass)")
	case s.Audit == AuditEmpty:
		parts = append(parts, "sys_audit_delete has no rows")
	case s.Audit == AuditHidden:
		parts = append(parts, "sys_audit_delete hidden (grant the integration user read on it to find deletes on every pass)")
	case s.Audit != "":
		parts = append(parts, "sys_audit_delete "+s.Audit)
	}
	switch {
	case !s.PresenceNext.IsZero():
		parts = append(parts, "next presence scan due "+s.PresenceNext.UTC().Format(events.SNTimeLayout)+" UTC")
	case s.Presence == nil && s.PresenceLast.IsZero():
		parts = append(parts, "no presence scan yet (BRIDGE_DELETE_SCAN_INTERVAL=0: run `bridge reconcile --once --full`)")
	case s.Presence == nil:
		parts = append(parts, "last presence scan "+s.PresenceLast.UTC().Format(events.SNTimeLayout)+" UTC (no schedule: BRIDGE_DELETE_SCAN_INTERVAL=0)")
	}
	return strings.Join(parts, "; ")
}

// Result is the pass's verdict in a word or a sentence: "ok" only when
// nothing it had to read was hidden and nothing failed.
func (s Summary) Result() string {
	switch {
	case s.Error != "":
		return "error: " + s.Error
	case slices.Contains(s.Hidden, s.Table):
		return "hidden: ServiceNow counts " + s.Table + " rows but returns none to the integration user (grant it read on " + s.Table + ")"
	case strings.HasPrefix(s.DeleteScan, "hidden: "):
		return "records ok; " + s.DeleteScan
	}
	return "ok"
}
