package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// Outcome says what one app change did.
type Outcome string

// Outcomes, also the "outcome" label of bridge_writeback_messages_total.
const (
	OutcomeUpdated  Outcome = "updated"   // PATCH sent
	OutcomeCreated  Outcome = "created"   // POST sent, link stored
	OutcomeDeleted  Outcome = "deleted"   // DELETE sent, or resolved/closed
	OutcomeNoChange Outcome = "no_change" // nothing differed from ServiceNow
	OutcomeEcho     Outcome = "echo"      // the app republished what the bridge applied
	OutcomeStale    Outcome = "stale"     // older than the version already written
	OutcomeSkipped  Outcome = "skipped"   // e.g. delete of a record never linked
)

// Change is one app message to write back.
type Change struct {
	Entity string
	Action string // events.AppUpsert or events.AppDelete
	events.AppChange

	// Stored is when APP_EVENTS stored the message (zero when unknown).
	// A version the apply pipeline handed the app after that was applied
	// over this change on the app's side.
	Stored time.Time
	// Seq is the message's APP_EVENTS sequence (0 when unknown). Changes
	// of one id are handled in stream order, so an older version at or
	// before the last sequence handled is a redelivery, not a late change.
	Seq uint64
	// Delivered is how many times JetStream has delivered the message (1:
	// first time). A redelivered change may have been written by an
	// attempt whose answer was lost.
	Delivered uint64
	// Source is where the change came from for the decision log: "" is
	// the app (trace.SourceApp), else trace.SourceDLQRetry or
	// trace.SourceReplay.
	Source string

	linkedNow bool // the message's sys_id linked the record just now
}

// Result describes what Apply did.
type Result struct {
	Outcome   Outcome
	Table     string
	SysID     string
	ModCount  int64
	Number    string            // the record's number: ServiceNow's answer, else what bridge_state knows
	Sent      map[string]string // the fields written
	Conflicts []Conflict

	// Reply is what the app is told of the change: its result on
	// bridge.result.<entity>.<outcome>. A redelivery of the last change
	// written back is stale, and its Reply the one first given; a
	// redelivery of an earlier one is stale with no Reply (empty Outcome):
	// the app heard its result before the later change was handled.
	Reply events.Result

	// Unclaimed says why the write was not claimed as the app's own echo
	// (a reason of bridge_writeback_unclaimed_total): its version reaches
	// the app. "" when claimed, or when nothing was written.
	Unclaimed string

	holdBack string // why the write must not be claimed whatever ServiceNow answers
	modKnown bool   // ModCount says which version ServiceNow holds
}

// Reasons a write is not claimed as the app's own (bridge_writeback_unclaimed_total).
const (
	reasonHandedOverAfter      = "handed_over_after"
	reasonHandedOverJustBefore = "handed_over_just_before"
	reasonNotNextVersion       = "not_next_version"
	reasonNotKeptAsSent        = "not_kept_as_sent"
	reasonSideEffects          = "side_effects"
)

// Writer applies app changes to ServiceNow. It is safe for concurrent use
// for different entity ids; changes to one id must be applied one at a time
// (the consumer guarantees it).
type Writer struct {
	cfg        Config
	api        TableAPI
	mapping    Mapping
	states     States
	links      Links
	progress   progressStore
	dedupe     *dedupe.Cache
	closeCodes *CloseCodes
	log        *slog.Logger
	metrics    *metrics
	trace      *trace.Recorder
}

// permanentError marks a change that can never succeed as it is (bad
// mapping, a value ServiceNow rejects): it goes to the dead-letter stream.
type permanentError struct {
	err    error
	status int
	body   string
	hint   string
}

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(format string, a ...any) error {
	return &permanentError{err: fmt.Errorf(format, a...)}
}

// Apply writes one app change to ServiceNow. Errors are classified by the
// consumer: permanent (dead letter), breaker open (pause), else retry.
func (w *Writer) Apply(ctx context.Context, ch Change) (Result, error) {
	if ch.ExternalID == "" {
		return Result{}, permanent("app change without external_id")
	}
	table, ok := w.mapping.Table(ch.Entity)
	if !ok {
		return Result{}, permanent("entity %q is not mapped to a ServiceNow table (check the mapping files)", ch.Entity)
	}
	res := Result{Table: table}
	prog, progRev, err := w.progress.get(ctx, ch.Entity, ch.ExternalID)
	if err != nil {
		return res, err
	}
	if ch.Version > 0 && ch.Version <= prog.Version {
		res.Outcome, res.SysID = OutcomeStale, prog.SysID
		switch {
		case ch.Seq != 0 && ch.Seq < prog.Seq:
			// Handled before the change the bookmark holds: its result was
			// stored then.
		case ch.Version == prog.Version && prog.Result != nil && prog.Result.Action == ch.Action && (ch.Seq == prog.Seq || prog.Seq == 0):
			// Redelivered: the app hears again what it was told, under the
			// same result id, so the stream drops it (or stores it now, if
			// it could not before).
			res.Reply = *prog.Result
		default:
			res.Reply = w.reply(ctx, ch, &res) // a late change: stale
		}
		return res, nil
	}
	sysID, linkedNow, err := w.resolveLink(ctx, ch, table)
	if err != nil {
		return res, err
	}
	res.SysID = sysID
	ch.linkedNow = linkedNow
	switch ch.Action {
	case events.AppDelete:
		err = w.delete(ctx, ch, &res)
	case events.AppUpsert:
		if sysID == "" {
			err = w.create(ctx, ch, &res)
		} else {
			err = w.update(ctx, ch, &res)
		}
	default:
		return res, permanent("unknown app action %q (want upsert or delete)", ch.Action)
	}
	if err != nil {
		return res, err
	}
	switch res.Outcome {
	case OutcomeUpdated, OutcomeCreated, OutcomeNoChange:
		// The app holds its own values now, whichever side won a conflict
		// (the apply pipeline brings it ServiceNow's where ServiceNow won)
		// -- unless it took a version after sending them, which replaced
		// them there: then what it was told stays the truth about it.
		if res.holdBack == "" {
			w.dedupe.MergeApplied(ch.Entity, ch.ExternalID, w.appState(ch, table))
		}
	}
	res.Reply = w.reply(ctx, ch, &res)
	if ch.Version > 0 {
		p := progress{Version: ch.Version, UpdatedAt: ch.UpdatedAt, Table: table, SysID: res.SysID, Deleted: res.Outcome == OutcomeDeleted, Result: &res.Reply, Seq: ch.Seq}
		if err := w.progress.put(ctx, ch.Entity, ch.ExternalID, p, progRev); err != nil {
			// The write happened; a redelivery finds nothing to change.
			w.log.Warn("writeback progress not stored", "external_id", ch.ExternalID, "err", err)
		}
	}
	return res, nil
}

// known takes the number and version of the record ServiceNow answered
// with (or the one read before deciding).
func (r *Result) known(rec map[string]string) {
	r.Number = rec["number"]
	if mc, err := strconv.ParseInt(rec["sys_mod_count"], 10, 64); err == nil {
		r.ModCount, r.modKnown = mc, true
	}
}

// resolveLink finds the record an external id is linked to: the message's
// own sys_id (the app linking a record created in ServiceNow), the link
// bucket, or the mapping's link field in ServiceNow (correlation_id for the
// shipped tables), so a lost bucket never creates duplicates. "" means not
// in ServiceNow. linkedNow says the message's sys_id made a new link, whose
// link field the write should carry.
func (w *Writer) resolveLink(ctx context.Context, ch Change, table string) (sysID string, linkedNow bool, err error) {
	if events.ValidSysID(ch.SysID) {
		_, linked, ok, err := w.links.SysID(ctx, ch.Entity, ch.ExternalID)
		if err != nil {
			return "", false, err
		}
		if ok && linked == ch.SysID {
			return ch.SysID, false, nil
		}
		if err := w.links.Link(ctx, ch.Entity, ch.ExternalID, table, ch.SysID); err != nil {
			return "", false, err
		}
		w.log.Info("record linked by the app", "table", table, "sys_id", ch.SysID, "external_id", ch.ExternalID)
		return ch.SysID, true, nil
	}
	t, sysID, ok, err := w.links.SysID(ctx, ch.Entity, ch.ExternalID)
	if err != nil {
		return "", false, err
	}
	if ok && (t == "" || t == table) {
		return sysID, false, nil
	}
	field := w.table(table).LinkField
	if field == "" {
		return "", false, nil // the mapping links through bridge_links alone
	}
	sysID, err = w.api.FindByCorrelation(ctx, table, field, ch.ExternalID)
	if err != nil {
		return "", false, fmt.Errorf("look up %s by %s %s: %w", table, field, ch.ExternalID, err)
	}
	if sysID != "" {
		w.log.Info("link restored from the link field", "table", table, "sys_id", sysID, "external_id", ch.ExternalID, "field", field)
		if err := w.links.Link(ctx, ch.Entity, ch.ExternalID, table, sysID); err != nil {
			return "", false, err
		}
	}
	return sysID, false, nil
}

// table is the mapping of a ServiceNow table; every table the writer
// writes to is mapped (Apply refuses an entity without one), so a missing
// one is the zero Table: no link field, no journal fields.
func (w *Writer) table(name string) *mapping.Table {
	if t, ok := w.mapping.ForTable(name); ok {
		return t
	}
	return &mapping.Table{Name: name}
}

// isJournal reports whether a write appends to field of table (a comment
// is an action, not state: it is never diffed, and reads render it).
func (w *Writer) isJournal(table, field string) bool { return w.table(table).Kind(field).Journal() }

// appState is the app's message without journal entries (comments are
// actions, not state) and without fields the mapping does not know.
func (w *Writer) appState(ch Change, table string) map[string]string {
	out := make(map[string]string, len(ch.Fields))
	for k, v := range ch.Fields {
		sn, err := w.mapping.ToServiceNow(ch.Entity, map[string]string{k: v})
		if err != nil || len(sn) != 1 {
			continue
		}
		for f := range sn {
			if !w.isJournal(table, f) {
				out[k] = v
			}
		}
	}
	return out
}

// split maps the app's fields to ServiceNow's and separates journal fields.
func (w *Writer) split(ch Change, table string) (plain, journal map[string]string, err error) {
	sn, err := w.mapping.ToServiceNow(ch.Entity, ch.Fields)
	if err != nil {
		return nil, nil, &permanentError{err: fmt.Errorf("map %s %s: %w", ch.Entity, ch.ExternalID, err)}
	}
	t := w.table(table)
	plain, journal = map[string]string{}, map[string]string{}
	for f, v := range sn {
		if t.Kind(f).Journal() {
			journal[f] = v
		} else {
			plain[f] = v
		}
	}
	// The link is the bridge's, not the app's to change.
	if t.LinkField != "" {
		delete(plain, t.LinkField)
	}
	delete(plain, "sys_id")
	return plain, journal, nil
}

func (w *Writer) create(ctx context.Context, ch Change, res *Result) error {
	plain, journal, err := w.split(ch, res.Table)
	if err != nil {
		return err
	}
	t := w.table(res.Table)
	if t.LinkField == "" {
		// Without it a lost bridge_links entry would create the record again.
		return permanent("the mapping of %s (%s) has no link.field: the bridge cannot create records it could not find again", res.Table, t.Source)
	}
	body := maps.Clone(plain)
	maps.Copy(body, journal)
	body[t.LinkField] = ch.ExternalID
	if w.cfg.CorrelationDisplay != "" && t.LinkDisplayField != "" {
		body[t.LinkDisplayField] = w.cfg.CorrelationDisplay
	}
	if err := w.addCloseFields(ctx, res.Table, body, nil, ch, ""); err != nil {
		return err
	}
	pend := w.dedupe.BeginWrite(res.Table, "", ch.ExternalID, body)
	rec, err := w.api.Create(ctx, res.Table, body)
	if err != nil {
		pend.Cancel()
		return fmt.Errorf("create %s for %s: %w", res.Table, ch.ExternalID, err)
	}
	w.metrics.writes.WithLabelValues("POST").Inc()
	sysID := rec["sys_id"]
	mc, _ := strconv.ParseInt(rec["sys_mod_count"], 10, 64)
	res.Outcome, res.SysID, res.ModCount, res.Sent = OutcomeCreated, sysID, mc, body
	res.Number, res.modKnown = rec["number"], true
	if !events.ValidSysID(sysID) {
		pend.Cancel()
		return permanent("create %s for %s: response has no valid sys_id", res.Table, ch.ExternalID)
	}
	if err := w.links.Link(ctx, ch.Entity, ch.ExternalID, res.Table, sysID); err != nil {
		// ServiceNow has the record; the correlation_id lookup finds it on redelivery.
		pend.Done(sysID, mc)
		return fmt.Errorf("store link %s -> %s/%s: %w", ch.ExternalID, res.Table, sysID, err)
	}
	w.finish(ctx, pend, res, body, rec, nil, false)
	return nil
}

func (w *Writer) update(ctx context.Context, ch Change, res *Result) error {
	// A change that does not map is refused first, echo or not; the fields
	// are split again below, once stale ones are put right.
	if _, _, err := w.split(ch, res.Table); err != nil {
		return err
	}
	if w.dedupe.IsAppEcho(ch.Entity, ch.ExternalID, ch.Fields) {
		res.Outcome = OutcomeEcho
		return nil
	}
	st, _, haveState, err := w.states.Get(ctx, res.Table, res.SysID)
	if err != nil {
		return err
	}
	if haveState && st.Deleted {
		return permanent("%s/%s was deleted in ServiceNow; the app's change to %s has nowhere to go", res.Table, res.SysID, ch.ExternalID)
	}
	// Asked after the state read: the apply pipeline records what it hands
	// the app before it moves the state, so a state at version k means the
	// hand-over of k is visible here.
	claim := claimable(st, haveState)
	if w.holdBack(&ch, res) {
		// Not claimed, and what the app holds stays what it was handed.
		claim = -1
	}
	plain, journal, err := w.split(ch, res.Table)
	if err != nil {
		return err
	}
	if journal, err = w.journalNotWritten(ctx, ch, res.Table, res.SysID, journal); err != nil {
		return err
	}
	in, err := w.updateInput(ctx, ch, res.Table, res.SysID, plain, journal, st, haveState)
	if err != nil {
		return err
	}
	p := plan(in)
	w.keepLink(p, in, ch, res.Table)
	w.noteConflicts(p.Conflicts, in, ch, res)
	if len(p.Patch) == 0 {
		res.Outcome = OutcomeNoChange
		switch {
		case in.Current != nil:
			res.known(in.Current)
		case haveState:
			res.Number, res.ModCount, res.modKnown = st.Fields["number"], st.Version, true
		}
		return nil
	}
	return w.patch(ctx, ch, res, in, p.Patch, st, haveState, claim)
}

// JournalReader lists a record's journal entries (snclient.Client does).
type JournalReader interface {
	JournalEntries(ctx context.Context, table, sysID, field string, since time.Time, limit int) ([]string, error)
}

// journalNotWritten drops from a redelivered change the journal entries an
// earlier attempt already appended. Plain fields a retry compares with the
// record (read before writing), but a journal entry is appended whatever
// the record shows: after a crash between ServiceNow's commit and the
// bookmark, or an answer lost on the way, the retry would add it again. So
// a change delivered before asks sys_journal_field for entries of the field
// created since the change was stored, and drops an entry whose text is
// there. (An app that sends the same text twice within that time on one
// record, and has the second change redelivered, gets it once.)
func (w *Writer) journalNotWritten(ctx context.Context, ch Change, table, sysID string, journal map[string]string) (map[string]string, error) {
	jr, ok := w.api.(JournalReader)
	if len(journal) == 0 || ch.Stored.IsZero() || !ok {
		return journal, nil
	}
	// A crashed bridge's change comes back after the ack wait, and its
	// delivery count is not always kept (a consumer updated at restart
	// shows 1): a change older than half the ack wait is checked too.
	if ch.Delivered <= 1 && time.Since(ch.Stored) < w.cfg.AckWait/2 {
		return journal, nil
	}
	out := maps.Clone(journal)
	for f, v := range journal {
		// ServiceNow keeps times to the second: a second's margin.
		entries, err := jr.JournalEntries(ctx, table, sysID, f, ch.Stored.Add(-time.Second), 100)
		if err != nil {
			return nil, fmt.Errorf("check whether an earlier attempt wrote the %s entry: %w", f, err)
		}
		if slices.Contains(entries, v) {
			delete(out, f)
			w.log.Info("journal entry already written by an earlier attempt; not appended again",
				"table", table, "sys_id", sysID, "field", f, "external_id", ch.ExternalID, "version", ch.Version, "deliveries", ch.Delivered)
		}
	}
	return out, nil
}

// holdBack decides whether the write must reach the app as news because of
// a hand-over around the change (res.holdBack says why), and puts back the
// fields the app cannot have changed when it was handed a newer version
// after sending the change.
func (w *Writer) holdBack(ch *Change, res *Result) bool {
	ho, ok := w.dedupe.LastHandOver(ch.Entity, ch.ExternalID)
	switch {
	case !ok:
	case ch.Stored.IsZero() || !ho.At.Before(ch.Stored):
		// The app was handed a version after it sent this change and
		// applies it over the change: the version this write makes
		// must reach it, and fields the app could not have changed
		// are not written back.
		res.holdBack = reasonHandedOverAfter
		ch.Fields = w.unseen(*ch, ho)
	case ch.Stored.Sub(ho.At) < w.cfg.HandOverGrace:
		// Sent just after a hand-over, perhaps before the app took it.
		res.holdBack = reasonHandedOverJustBefore
	}
	return res.holdBack != ""
}

// updateInput gathers what the write decision needs: the base both sides
// last agreed on and, when deciding needs it (and writes are not blind),
// ServiceNow's record now.
func (w *Writer) updateInput(ctx context.Context, ch Change, table, sysID string, plain, journal map[string]string, st state.Record, haveState bool) (planInput, error) {
	in := planInput{Desired: plain, Journal: journal, AppUpdatedAt: ch.UpdatedAt, Policy: w.cfg.policy}
	if haveState {
		in.Base = st.Fields
	}
	// What the app was last told (or wrote) is the freshest base: the apply
	// pipeline records it right after the app has a version, and writes
	// bridge_state only after that.
	if told, ok := w.dedupe.Applied(ch.Entity, ch.ExternalID); ok {
		if sn, err := w.mapping.ToServiceNow(ch.Entity, told); err == nil {
			b := maps.Clone(in.Base)
			if b == nil {
				b = map[string]string{}
			}
			for f, v := range sn {
				if !w.isJournal(table, f) {
					b[f] = v
				}
			}
			in.Base = b
		}
	}
	if needsCurrent(in) && (!w.cfg.BlindWrites || !haveState) {
		cur, err := w.api.Get(ctx, table, sysID)
		if err != nil {
			return in, fmt.Errorf("read %s/%s before writing: %w", table, sysID, err)
		}
		in.Current = cur
		in.SNUpdatedAt, _ = time.ParseInLocation(events.SNTimeLayout, cur["sys_updated_on"], time.UTC)
	}
	return in, nil
}

// keepLink adds the link field to the patch when the message's sys_id made
// a new link the record does not show yet: the link survives losing
// bridge_links only on the record.
func (w *Writer) keepLink(p writePlan, in planInput, ch Change, table string) {
	if !ch.linkedNow {
		return
	}
	cur := in.Current
	if cur == nil {
		cur = in.Base
	}
	if link := w.table(table).LinkField; link != "" && cur[link] != ch.ExternalID {
		p.Patch[link] = ch.ExternalID
	}
}

// noteConflicts counts and logs the fields changed on both sides and keeps
// them in the result.
func (w *Writer) noteConflicts(conflicts []Conflict, in planInput, ch Change, res *Result) {
	for _, c := range conflicts {
		w.metrics.conflicts.WithLabelValues(c.Field).Inc()
		w.log.Info("conflict: field changed on both sides since the last sync",
			"table", res.Table, "sys_id", res.SysID, "external_id", ch.ExternalID, "field", c.Field,
			"base", c.Base, "servicenow", c.ServiceNow, "saas", c.SaaS, "policy", string(c.Policy), "winner", c.Winner,
			"sys_updated_on", in.SNUpdatedAt, "updated_at", ch.UpdatedAt)
	}
	res.Conflicts = conflicts
}

// patch sends the planned fields (with the close fields a closing write
// needs) and settles the write; claim is the version the write may be
// claimed at (-1: none).
func (w *Writer) patch(ctx context.Context, ch Change, res *Result, in planInput, fields map[string]string, st state.Record, haveState bool, claim int64) error {
	cur := in.Current
	if cur == nil {
		cur = in.Base
	}
	if err := w.addCloseFields(ctx, res.Table, fields, cur, ch, ""); err != nil {
		return err
	}
	pend := w.dedupe.BeginUpdate(res.Table, res.SysID, claim, fields, w.unchanged(res.Table, in.Base, fields))
	rec, err := w.api.Update(ctx, res.Table, res.SysID, fields)
	if err != nil {
		pend.Cancel()
		return fmt.Errorf("patch %s/%s: %w", res.Table, res.SysID, err)
	}
	w.metrics.writes.WithLabelValues("PATCH").Inc()
	mc, _ := strconv.ParseInt(rec["sys_mod_count"], 10, 64)
	res.Outcome, res.ModCount, res.Sent = OutcomeUpdated, mc, fields
	res.known(rec)
	if haveState && mc == st.Version {
		// ServiceNow found nothing to change: no new version, no webhook.
		pend.Cancel()
		res.Outcome = OutcomeNoChange
		return nil
	}
	w.finish(ctx, pend, res, fields, rec, in.Base, claim >= 0 && mc == claim)
	return nil
}

// finish settles a successful write. When the new version follows the one
// the bridge last knew directly and ServiceNow kept every value as sent, the
// version is purely ours: its webhook is an echo and bridge_state moves to
// it, so reconcile does not resurrect it either. Otherwise ServiceNow holds
// something the app has not seen (a change by someone else in between, or a
// value the platform computed, like priority): the webhook must flow to the
// app, so the version is not claimed and the state is left to the apply
// pipeline.
func (w *Writer) finish(ctx context.Context, pend *dedupe.Pending, res *Result, sent, rec, base map[string]string, contiguous bool) {
	created := res.Outcome == OutcomeCreated
	why := res.holdBack
	switch {
	case why != "":
	case !created && !contiguous:
		why = reasonNotNextVersion
	case !w.keptAsSent(res.Table, sent, rec):
		why = reasonNotKeptAsSent
	case w.sideEffects(res.Table, sent, rec, base):
		why = reasonSideEffects
	}
	if why != "" {
		res.Unclaimed = why
		w.metrics.unclaimed.WithLabelValues(why).Inc()
		pend.Cancel()
		w.dedupe.Forget(res.Table, res.SysID, res.ModCount)
		if mc, ok := pend.Matched(); ok && mc == res.ModCount {
			// The webhook showed nothing the app lacks, but the full record
			// does (a field the business rule does not send): reconcile
			// finds the version unclaimed and delivers it.
			w.log.Warn("write not claimed as an echo, but its webhook was already answered as one; reconcile will deliver the version",
				"table", res.Table, "sys_id", res.SysID, "sys_mod_count", res.ModCount, "reason", why)
			return
		}
		w.log.Debug("write not claimed as an echo: ServiceNow holds changes the app has not seen",
			"table", res.Table, "sys_id", res.SysID, "sys_mod_count", res.ModCount, "reason", why)
		return
	}
	pend.Done(res.SysID, res.ModCount)
	fields := map[string]string{}
	for _, f := range w.mapping.Fields(res.Table) {
		if v, ok := rec[f]; ok {
			fields[f] = v
		}
	}
	st := state.Record{Version: res.ModCount, Fields: fields, UpdatedOn: rec["sys_updated_on"]}
	if _, err := w.states.Advance(ctx, res.Table, res.SysID, st); err != nil {
		// The echo is suppressed by the cache; reconcile will re-read the
		// record and find the version in the cache too.
		w.log.Warn("state not advanced after write", "table", res.Table, "sys_id", res.SysID, "sys_mod_count", res.ModCount, "err", err)
	}
}

// unseen returns the change's fields with those the app cannot have
// changed put back to the value it was handed after sending the change: a
// field still showing the value that hand-over replaced was built on the
// older version, and writing it would undo the newer one in ServiceNow.
func (w *Writer) unseen(ch Change, ho dedupe.HandOver) map[string]string {
	told, ok := w.dedupe.Applied(ch.Entity, ch.ExternalID)
	if !ok {
		return ch.Fields
	}
	out := maps.Clone(ch.Fields)
	for f, old := range ho.Replaced {
		if now, ok := told[f]; ok && out[f] == old {
			if _, sent := out[f]; sent {
				out[f] = now
			}
		}
	}
	return out
}

// claimable is the only version an update may produce and still be claimed
// as the bridge's own (finish's contiguity rule): the one after the version
// bridge_state holds. -1 when the bridge knows no version: nothing is
// claimed, so no webhook may be matched as the write's echo either.
func claimable(st state.Record, haveState bool) int64 {
	if !haveState {
		return -1
	}
	return st.Version + 1
}

// unchanged is what a write leaves alone: the base without the fields sent
// and without journal fields (rendered differently on every read).
func (w *Writer) unchanged(table string, base, sent map[string]string) map[string]string {
	out := make(map[string]string, len(base))
	for f, v := range base {
		if _, ours := sent[f]; !ours && !w.isJournal(table, f) {
			out[f] = v
		}
	}
	return out
}

// sideEffects reports whether the write changed a mapped field it did not
// send (priority computed from impact and urgency, a business rule's
// change): the app knows base plus what it sent, and must hear of the rest.
func (w *Writer) sideEffects(table string, sent, rec, base map[string]string) bool {
	for f, b := range base {
		if _, ours := sent[f]; ours || w.isJournal(table, f) {
			continue
		}
		if got, ok := rec[f]; ok && got != b {
			return true
		}
	}
	return false
}

// keptAsSent reports whether the record holds every plain value we sent
// (journal fields append and are rendered differently; omitted fields are
// an ACL matter, not a change).
func (w *Writer) keptAsSent(table string, sent, rec map[string]string) bool {
	for f, v := range sent {
		if w.isJournal(table, f) {
			continue
		}
		if got, ok := rec[f]; ok && got != v {
			return false
		}
	}
	return true
}

// delete applies an app delete as the table's mapping says (delete.mode,
// delete.state), BRIDGE_WRITEBACK_DELETE and BRIDGE_WRITEBACK_DELETE_STATE
// overriding it.
func (w *Writer) delete(ctx context.Context, ch Change, res *Result) error {
	if res.SysID == "" {
		res.Outcome = OutcomeSkipped
		return nil
	}
	t := w.table(res.Table)
	rule, err := w.cfg.deleteRule(t)
	if err != nil {
		return &permanentError{err: fmt.Errorf("delete %s/%s for %s: %w", res.Table, res.SysID, ch.ExternalID, err)}
	}
	if rule.Mode == DeleteRecord {
		pend := w.dedupe.BeginWrite(res.Table, res.SysID, "", nil)
		err := w.api.Delete(ctx, res.Table, res.SysID)
		pend.Cancel()
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s/%s: %w", res.Table, res.SysID, err)
		}
		w.metrics.writes.WithLabelValues("DELETE").Inc()
		res.Outcome = OutcomeDeleted
		if err := w.links.Unlink(ctx, ch.Entity, ch.ExternalID); err != nil {
			w.log.Warn("link not removed after delete", "external_id", ch.ExternalID, "err", err)
		}
		return nil
	}
	// Resolve (or close/cancel) instead of deleting: the record, its history
	// and its SLA stay in ServiceNow.
	ch.Fields = nil
	st, _, haveState, err := w.states.Get(ctx, res.Table, res.SysID)
	if err != nil {
		return err
	}
	cur, err := w.api.Get(ctx, res.Table, res.SysID)
	if err != nil {
		if isNotFound(err) {
			res.Outcome = OutcomeSkipped
			return nil
		}
		return fmt.Errorf("read %s/%s before resolving: %w", res.Table, res.SysID, err)
	}
	if cur[mapping.StateField] == rule.State {
		res.Outcome = OutcomeNoChange
		res.known(cur)
		return nil
	}
	patch := map[string]string{mapping.StateField: rule.State}
	if err := w.addCloseFields(ctx, res.Table, patch, cur, ch, rule.CloseCode); err != nil {
		return err
	}
	pend := w.dedupe.BeginUpdate(res.Table, res.SysID, claimable(st, haveState), patch, w.unchanged(res.Table, st.Fields, patch))
	rec, err := w.api.Update(ctx, res.Table, res.SysID, patch)
	if err != nil {
		pend.Cancel()
		return fmt.Errorf("resolve %s/%s: %w", res.Table, res.SysID, err)
	}
	w.metrics.writes.WithLabelValues("PATCH").Inc()
	mc, _ := strconv.ParseInt(rec["sys_mod_count"], 10, 64)
	res.Outcome, res.ModCount, res.Sent = OutcomeDeleted, mc, patch
	res.known(rec)
	w.finish(ctx, pend, res, patch, rec, st.Fields, haveState && mc == st.Version+1)
	res.Outcome = OutcomeDeleted
	return nil
}

// SetCorrelation writes the app's id to a record's link field (the
// mapping's link.field, correlation_id in the shipped ones) as a write of
// the bridge's own (its webhook is an echo). The apply pipeline calls it
// when a link exists only in bridge_links (apply.LinkWriter).
func (w *Writer) SetCorrelation(ctx context.Context, table, sysID, externalID string) error {
	link := w.table(table).LinkField
	if link == "" {
		return permanent("the mapping of %s has no link.field to write %s to", table, externalID)
	}
	st, _, haveState, err := w.states.Get(ctx, table, sysID)
	if err != nil {
		return err
	}
	patch := map[string]string{link: externalID}
	pend := w.dedupe.BeginUpdate(table, sysID, claimable(st, haveState), patch, w.unchanged(table, st.Fields, patch))
	rec, err := w.api.Update(ctx, table, sysID, patch)
	if err != nil {
		pend.Cancel()
		return fmt.Errorf("write %s of %s/%s: %w", link, table, sysID, err)
	}
	w.metrics.writes.WithLabelValues("PATCH").Inc()
	mc, _ := strconv.ParseInt(rec["sys_mod_count"], 10, 64)
	res := &Result{Outcome: OutcomeUpdated, Table: table, SysID: sysID, ModCount: mc, Sent: patch}
	w.finish(ctx, pend, res, patch, rec, st.Fields, haveState && mc == st.Version+1)
	return nil
}

// addCloseFields completes a write that moves a record into one of its
// table's closing states (the mapping's close rule) with the code and the
// notes fields ServiceNow's data policy requires. All are always sent: the
// write's own, else the record's (current: its values now, or the last the
// bridge knew), else the instance's default code (deleteCode, a delete's
// own close code, preferred when active) and generated notes -- so the data
// policy never finds them missing, whatever a stale base said.
func (w *Writer) addCloseFields(ctx context.Context, table string, patch, current map[string]string, ch Change, deleteCode string) error {
	rule := w.mapping.Close(table)
	if rule == nil || !rule.Closes(patch[mapping.StateField]) {
		return nil
	}
	if patch[rule.CodeField] == "" {
		code, err := w.closeCodes.For(ctx, table, rule.Preferring(deleteCode), current[rule.CodeField])
		if err != nil {
			if errors.Is(err, ErrCloseCode) || errors.Is(err, snclient.ErrACLHidden) {
				// Retrying cannot fix it: an operator must set or grant.
				return &permanentError{err: fmt.Errorf("close %s: %w", table, err), hint: snclient.Hint(err)}
			}
			return fmt.Errorf("close %s: %w", table, err)
		}
		patch[rule.CodeField] = code
	}
	for _, f := range rule.NotesFor(patch[rule.CodeField]) {
		if patch[f] != "" {
			continue
		}
		notes := current[f]
		if notes == "" {
			notes = w.closeNotes(ch)
		}
		patch[f] = notes
	}
	return nil
}

func (w *Writer) closeNotes(ch Change) string {
	if w.cfg.CloseNotes != "" {
		return w.cfg.CloseNotes
	}
	return fmt.Sprintf("Resolved in %s %s (synced by nowbridge)", ch.Entity, ch.ExternalID)
}
