// Package trace is the bridge's decision log: each part records what it
// decided about a record where it decides it (stored, echo suppressed,
// applied, stale, written, conflict, unclaimed, dead-lettered, a gap found
// by reconcile...), in the BRIDGE_TRACE stream on one subject per record,
// and Store reads one record's story back by that subject, joined with the
// messages the entries point at (bridge trace, the console).
//
// # Where entries go
//
//	bridge.trace.<table>.<sys_id>              every entry about a ServiceNow record
//	bridge.trace.app.<entity>.<id-token>       an app change not tied to a record when decided
//	bridge.trace.index.number.<number-token>   {"table","sys_id"}: the number index
//
// A token is the id itself when it is made of [A-Za-z0-9_-], else "=" and
// its base64url form (events.Subject tokens must not hold '.', '*', '>' or
// spaces). The stream keeps at most events.TraceMaxPerRecord entries per
// subject, events.TraceMaxAge and events.TraceMaxBytes in all.
//
// Recording never blocks or fails the pipeline (Recorder): an entry that
// cannot be stored is dropped and counted in bridge_trace_write_failures_total.
package trace

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/jsonw"
)

// Stages: the part of the bridge that decided.
const (
	StageIngest     = "ingest"     // the webhook receiver
	StageApply      = "apply"      // SN_EVENTS -> the app
	StageWriteback  = "writeback"  // APP_EVENTS -> ServiceNow
	StageReconcile  = "reconcile"  // the reconcile scans
	StageDLQ        = "dlq"        // a consumer gave up on a message
	StageReplay     = "replay"     // bridge replay
	StageResults    = "results"    // the results delivery (BRIDGE_RESULTS_URL)
	StageAttachment = "attachment" // attachments
)

// Sources: where the message a decision is about came from.
const (
	SourceWebhook   = events.SourceWebhook   // a business-rule webhook
	SourceReconcile = events.SourceReconcile // found by reconcile
	SourceReplay    = "replay"               // bridge replay
	SourceApp       = "app"                  // the app's change (APP_EVENTS)
	SourceDLQRetry  = "dlq_retry"            // bridge dlq retry put it back
)

// Decisions.
const (
	Stored         = "stored"          // SN_EVENTS holds the event (shown from the apply entry)
	EchoSuppressed = "echo_suppressed" // the bridge's own write coming back: not sent on
	Applied        = "applied"         // the app has the version
	Stale          = "stale"           // an older (or the same) version than the one handled
	Duplicate      = "duplicate"       // the app side had this very message already
	AlreadyNewer   = "already_newer"   // the app said it holds a newer version (409)
	Written        = "written"         // the app's change was written to ServiceNow
	Unchanged      = "unchanged"       // the app's change needed no write
	Conflict       = "conflict"        // a field changed on both sides: the policy decided
	Unclaimed      = "unclaimed"       // a write not claimed as the app's echo: its version flows to the app
	Rejected       = "rejected"        // the other side refused the change: dead-lettered
	DeadLettered   = "dead_lettered"   // given up on for another reason
	Retrying       = "retrying"        // handed back for a later attempt
	GapFound       = "gap_found"       // reconcile found a version SN_EVENTS lacked and stored it
	DeleteFound    = "delete_found"    // reconcile found a delete and stored it
	Failed         = "failed"          // a replay's attempt failed (nothing is retried)
)

// NoVersion is Entry.Version (and Step.Version) when the step has no
// ServiceNow version: sys_mod_count 0 is a record's first version.
const NoVersion int64 = -1

// Ref points at a message a decision is about, by stream sequence.
type Ref struct {
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
}

// Entry is one decision. Table and SysID name the record; an app change not
// linked to one names Entity and ExternalID instead.
type Entry struct {
	Time       time.Time `json:"time"`
	Stage      string    `json:"stage"`
	Source     string    `json:"source,omitempty"`
	Table      string    `json:"table,omitempty"`
	SysID      string    `json:"sys_id,omitempty"`
	Number     string    `json:"number,omitempty"`
	Entity     string    `json:"entity,omitempty"`
	ExternalID string    `json:"external_id,omitempty"`
	Action     string    `json:"action,omitempty"`
	// Version is ServiceNow's sys_mod_count (NoVersion: none); AppVersion
	// the app change's version (0: none).
	Version    int64  `json:"version"`
	AppVersion int64  `json:"app_version,omitempty"`
	Decision   string `json:"decision"`
	// Reason says why: the policy of a conflict, why a write was not
	// claimed, ServiceNow's message of a rejection.
	Reason string `json:"reason,omitempty"`
	Hint   string `json:"hint,omitempty"` // what a person should do
	// Stored is when the message the decision is about was stored in its
	// stream (the apply entry's event: its "stored" step).
	Stored time.Time `json:"stored,omitzero"`
	Refs   []Ref     `json:"refs,omitempty"`
}

// Subject is where e is recorded: its record's subject, or its app id's
// while it has no record. "" when it names neither (not recorded).
func (e *Entry) Subject() string {
	switch {
	case events.ValidTable(e.Table) && events.ValidSysID(e.SysID):
		return RecordSubject(e.Table, e.SysID)
	case events.ValidTable(e.Entity) && e.ExternalID != "":
		return AppSubject(e.Entity, e.ExternalID)
	}
	return ""
}

// Subject prefixes.
const (
	subjectPrefix = "bridge.trace."
	appPrefix     = subjectPrefix + "app."
	numberPrefix  = subjectPrefix + "index.number."
)

// RecordSubject is a ServiceNow record's subject.
func RecordSubject(table, sysID string) string { return subjectPrefix + table + "." + sysID }

// AppSubject is the subject of an app id's entries the bridge could not
// tie to a record when it decided (before the id was linked, or a failed
// change naming no sys_id); Store reads it with the record's once linked.
func AppSubject(entity, externalID string) string {
	return appPrefix + entity + "." + Token(externalID)
}

// NumberSubject is the number index entry of a record number.
func NumberSubject(number string) string { return numberPrefix + Token(number) }

// Token is id as a subject token: itself when it is made of [A-Za-z0-9_-],
// else "=" and its unpadded base64url form.
func Token(id string) string {
	if id != "" && plainToken(id) {
		return id
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

func plainToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// appendJSON appends e's JSON form: what json.Marshal writes, without its
// reflection (the apply pipeline records every event).
func (e *Entry) appendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","stage":`...)
	b = jsonw.AppendString(b, e.Stage)
	b = appendField(b, "source", e.Source)
	b = appendField(b, "table", e.Table)
	b = appendField(b, "sys_id", e.SysID)
	b = appendField(b, "number", e.Number)
	b = appendField(b, "entity", e.Entity)
	b = appendField(b, "external_id", e.ExternalID)
	b = appendField(b, "action", e.Action)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, e.Version, 10)
	if e.AppVersion != 0 {
		b = append(b, `,"app_version":`...)
		b = strconv.AppendInt(b, e.AppVersion, 10)
	}
	b = append(b, `,"decision":`...)
	b = jsonw.AppendString(b, e.Decision)
	b = appendField(b, "reason", e.Reason)
	b = appendField(b, "hint", e.Hint)
	if !e.Stored.IsZero() {
		b = append(b, `,"stored":"`...)
		b = e.Stored.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if len(e.Refs) > 0 {
		b = append(b, `,"refs":[`...)
		for i, r := range e.Refs {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"stream":`...)
			b = jsonw.AppendString(b, r.Stream)
			b = append(b, `,"seq":`...)
			b = strconv.AppendUint(b, r.Seq, 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// decodeEntry reads an entry as appendJSON wrote it (or json.Marshal would).
func decodeEntry(data []byte) (Entry, error) {
	e := Entry{Version: NoVersion}
	err := json.Unmarshal(data, &e)
	return e, err
}

func appendField(b []byte, name, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return jsonw.AppendString(b, v)
}
