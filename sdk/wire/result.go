package wire

import (
	"strconv"
	"strings"
	"time"
)

// Outcomes of an app change: the last token of its result's subject.
const (
	OutcomeCreated   = "created"   // a record was created in ServiceNow and linked
	OutcomeUpdated   = "updated"   // the record was written (an app delete resolves or deletes it)
	OutcomeUnchanged = "unchanged" // nothing to write: ServiceNow already holds it, or it was the app's echo
	OutcomeStale     = "stale"     // an older version than one already written: skipped
	OutcomeConflict  = "conflict"  // a field changed on both sides; Conflicts says which policy decided
	OutcomeRejected  = "rejected"  // ServiceNow or the mapping refused it; Error says why
	OutcomeRetrying  = "retrying"  // waiting on a retryable failure (429, 5xx, breaker); a final result follows
)

// Outcomes lists every outcome, in the order above.
var Outcomes = []string{OutcomeCreated, OutcomeUpdated, OutcomeUnchanged, OutcomeStale, OutcomeConflict, OutcomeRejected, OutcomeRetrying}

// Result is one outcome of one app change, in the body of a
// bridge.result.<entity>.<outcome> message (stream BRIDGE_RESULTS) and of
// the HTTP results POST. For every app change the bridge publishes one
// final result (every outcome but retrying), so the app can show per-item
// sync status, the ServiceNow number and link, and why a change was
// refused; a change that first waits on a retryable failure (429, 5xx, an
// open breaker) also gets one retrying result, so the app can show
// "pending".
type Result struct {
	ExternalID string `json:"external_id"`
	Version    int64  `json:"version"` // the app version this result answers
	Entity     string `json:"entity"`
	Action     string `json:"action"` // upsert or delete
	Outcome    string `json:"outcome"`

	// The ServiceNow record, where one is known.
	Table       string `json:"table,omitempty"`
	SysID       string `json:"sys_id,omitempty"`
	Number      string `json:"number,omitempty"`
	SysModCount *int64 `json:"sys_mod_count,omitempty"` // the version the write produced (or ServiceNow holds)
	URL         string `json:"url,omitempty"`           // the record on the instance

	Conflicts []ResultConflict `json:"conflicts,omitempty"` // for conflict
	Error     *ResultError     `json:"error,omitempty"`     // for rejected and retrying
	// Attachment is set on the result of an attachment message
	// (app.<entity>.attachment; Action is then "attachment" and Version 0).
	Attachment *ResultAttachment `json:"attachment,omitempty"`

	At time.Time `json:"at"` // when the bridge decided
}

// ResultConflict is one field both sides changed, and what decided it.
type ResultConflict struct {
	Field      string `json:"field"` // the app's field name
	Policy     string `json:"policy"`
	Winner     string `json:"winner"` // servicenow or saas
	ServiceNow string `json:"servicenow"`
	SaaS       string `json:"saas"`
}

// ResultError says why a change was refused or is waiting.
type ResultError struct {
	Status       int    `json:"status,omitempty"` // ServiceNow's HTTP status, 0 when the bridge refused it itself
	Message      string `json:"message"`          // ServiceNow's error.message, or the bridge's reason
	Detail       string `json:"detail,omitempty"` // ServiceNow's error.detail
	Hint         string `json:"hint,omitempty"`   // what to do about it
	DeadLettered bool   `json:"dead_lettered,omitempty"`
	Reason       string `json:"reason,omitempty"` // retrying: rate_limited, server_error, breaker_open, network, auth
}

// ResultMsgID is the Nats-Msg-Id of a result: one per (external id, app
// version, outcome), so a redelivered app change publishes no second result.
func ResultMsgID(entity, externalID string, version int64, outcome string) string {
	return "result:" + entity + ":" + externalID + ":" + strconv.FormatInt(version, 10) + ":" + outcome
}

// RecordURL is the record's page on the instance:
// https://<instance>/nav_to.do?uri=<table>.do?sys_id=<id>. instance is the
// instance URL (BRIDGE_SN_INSTANCE_URL); "" when any part is missing.
func RecordURL(instance, table, sysID string) string {
	if instance == "" || table == "" || sysID == "" {
		return ""
	}
	// As ServiceNow's own links write it: the inner "?" unescaped.
	return strings.TrimRight(instance, "/") + "/nav_to.do?uri=" + table + ".do?sys_id=" + sysID
}

// Final reports whether the outcome ends the change's story (everything but
// retrying).
func (r Result) Final() bool { return r.Outcome != OutcomeRetrying }
