package outbound

import (
	"maps"
	"slices"
	"strings"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// unclaimedWhy explains each reason a write is not claimed as the app's
// own (docs/operations.md, "Echoes and changes that cross").
var unclaimedWhy = map[string]string{
	reasonSideEffects:          "ServiceNow changed a field that was not sent (a computed field, a business rule)",
	reasonNotKeptAsSent:        "ServiceNow did not keep a value as sent (an ACL, a business rule)",
	reasonNotNextVersion:       "someone else changed the record between the bridge's last view and the write",
	reasonHandedOverAfter:      "the app was handed a newer ServiceNow version after it sent the change and applies it over the change",
	reasonHandedOverJustBefore: "the change was stored within the hand-over grace after the app was handed a version of the record",
}

// Record puts what Apply did with ch (res) in the decision log: written,
// unchanged, stale or conflict (each field, its policy and the winner),
// and, for a write not claimed as the app's echo, why its version goes to
// the app. resultSeq is the change's result in BRIDGE_RESULTS (0: none).
// The consumer records every change it handles; `bridge replay` records
// what it replays.
func (w *Writer) Record(ch Change, res Result, resultSeq uint64) {
	if w.trace == nil {
		return
	}
	e := trace.Entry{
		Stage: trace.StageWriteback, Source: ch.Source, Table: res.Table, SysID: res.SysID, Number: res.Number,
		Entity: ch.Entity, ExternalID: ch.ExternalID, Action: ch.Action, Version: trace.NoVersion, AppVersion: ch.Version,
		Stored: ch.Stored,
	}
	if e.Source == "" {
		e.Source = trace.SourceApp
	}
	if e.Number == "" {
		e.Number = res.Reply.Number
	}
	if res.modKnown && res.Outcome != OutcomeStale {
		e.Version = res.ModCount
	}
	if resultSeq != 0 {
		e.Refs = append(e.Refs, trace.Ref{Stream: events.StreamResults, Seq: resultSeq})
	}
	if ch.Seq != 0 {
		e.Refs = append(e.Refs, trace.Ref{Stream: events.StreamApp, Seq: ch.Seq})
	}
	e.Decision, e.Reason = writeDecision(res)
	if len(res.Conflicts) > 0 && res.Outcome != OutcomeStale {
		e.Decision = trace.Conflict
		e.Reason = conflictReason(res.Conflicts) + "; then " + e.Reason
	}
	w.trace.Record(e)
	if res.Unclaimed != "" {
		u := e
		u.Decision = trace.Unclaimed
		u.Reason = res.Unclaimed + ": " + unclaimedWhy[res.Unclaimed] + "; its webhook goes to the app like any ServiceNow change"
		w.trace.Record(u)
	}
}

// writeDecision is the decision and reason of an outcome.
func writeDecision(res Result) (decision, reason string) {
	switch res.Outcome {
	case OutcomeCreated:
		return trace.Written, "created (POST " + sentFields(res.Sent) + ")"
	case OutcomeUpdated:
		return trace.Written, "updated (PATCH " + sentFields(res.Sent) + ")"
	case OutcomeDeleted:
		if len(res.Sent) == 0 {
			return trace.Written, "the app's delete: record deleted"
		}
		return trace.Written, "the app's delete: PATCH " + sentFields(res.Sent)
	case OutcomeNoChange:
		return trace.Unchanged, "nothing differed from ServiceNow: no write"
	case OutcomeEcho:
		return trace.Unchanged, "the app republished what the bridge handed it (its echo): no write"
	case OutcomeSkipped:
		return trace.Unchanged, "a delete of a record never linked, or already gone: no write"
	case OutcomeStale:
		if res.Reply.Outcome == "" {
			return trace.Stale, "a redelivery of a change handled before a later one of the id: nothing to do"
		}
		return trace.Stale, "not newer than the version last written back for this id (a redelivery or a late change): no write"
	}
	return string(res.Outcome), ""
}

func sentFields(sent map[string]string) string {
	if len(sent) == 0 {
		return "nothing"
	}
	return strings.Join(slices.Sorted(maps.Keys(sent)), ", ")
}

// conflictReason names each field changed on both sides, the two values,
// the policy and the winner.
func conflictReason(cs []Conflict) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		parts = append(parts, c.Field+": ServiceNow "+quote(c.ServiceNow)+", app "+quote(c.SaaS)+" (base "+quote(c.Base)+") -> "+
			string(c.Policy)+", "+c.Winner+" wins")
	}
	return "changed on both sides: " + strings.Join(parts, "; ")
}

func quote(s string) string {
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return `"` + s + `"`
}

// RecordFailed puts in the decision log that applying ch failed with err
// where nothing retries it (`bridge replay`); the consumer's failures are
// recorded by the consume engine (retrying, dead-lettered).
func (w *Writer) RecordFailed(ch Change, err error) {
	if w.trace == nil || err == nil {
		return
	}
	e := trace.Entry{
		Stage: trace.StageWriteback, Source: ch.Source, Entity: ch.Entity, ExternalID: ch.ExternalID, Action: ch.Action,
		Version: trace.NoVersion, AppVersion: ch.Version, Stored: ch.Stored, Decision: trace.Failed, Reason: err.Error(), Hint: snclient.Hint(err),
	}
	if e.Source == "" {
		e.Source = trace.SourceApp
	}
	if table, ok := w.mapping.Table(ch.Entity); ok && events.ValidSysID(ch.SysID) {
		e.Table, e.SysID = table, ch.SysID
	}
	if ch.Seq != 0 {
		e.Refs = []trace.Ref{{Stream: events.StreamApp, Seq: ch.Seq}}
	}
	w.trace.Record(e)
}

// RecordReplaySkip records in the decision log that `bridge replay` left
// ch to the writeback's version guard, which said why.
func (w *Writer) RecordReplaySkip(ch Change, why string) {
	if w.trace == nil {
		return
	}
	e := trace.Entry{
		Stage: trace.StageWriteback, Source: ch.Source, Entity: ch.Entity, ExternalID: ch.ExternalID, Action: ch.Action,
		Version: trace.NoVersion, AppVersion: ch.Version, Stored: ch.Stored, Decision: trace.Stale,
		Reason: "skipped by the version guard: " + why,
	}
	if ch.Seq != 0 {
		e.Refs = []trace.Ref{{Stream: events.StreamApp, Seq: ch.Seq}}
	}
	w.trace.Record(e)
}
