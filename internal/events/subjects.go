package events

import (
	"strings"

	"github.com/nowbridge/nowbridge/sdk/wire"
)

// Stream, bucket and subject names (SPEC §3).
const (
	StreamSN    = "SN_EVENTS"
	StreamApp   = wire.StreamApp
	StreamApply = wire.StreamApply
	StreamDLQ   = "BRIDGE_DLQ"
	// StreamTrace is the decision log (internal/trace): what the bridge
	// decided about each record, on bridge.trace.<table>.<sys_id>.
	StreamTrace = "BRIDGE_TRACE"

	BucketLinks = "bridge_links"
	BucketState = "bridge_state"

	SNSubjects    = "sn.>"
	AppSubjects   = wire.AppSubjects
	ApplySubjects = wire.ApplySubjects
	DLQSubjects   = "bridge.dlq.>"
	TraceSubjects = "bridge.trace.>"
)

// Header names the bridge sets on JetStream messages besides Nats-Msg-Id.
const (
	HeaderMsgID       = wire.HeaderMsgID
	HeaderSource      = "Bridge-Source"      // webhook | reconcile | replay
	HeaderDLQReason   = "Bridge-Dlq-Reason"  // why a message was dead-lettered
	HeaderDLQStatus   = "Bridge-Dlq-Status"  // HTTP status of the failed call, if any
	HeaderDLQSubject  = "Bridge-Dlq-Subject" // the subject the message came from
	HeaderDLQStream   = "Bridge-Dlq-Stream"
	HeaderDLQSeq      = "Bridge-Dlq-Seq"
	HeaderDLQHint     = "Bridge-Dlq-Hint"
	HeaderDLQResponse = "Bridge-Dlq-Response" // the remote side's response body
)

// Headers of the HTTP applier's POST besides the Standard Webhooks ones.
const (
	HeaderIdempotencyKey = wire.HeaderIdempotencyKey
	HeaderEntity         = wire.HeaderEntity
	HeaderAction         = wire.HeaderAction
)

// Handled is the last version of a record a consumer handled, and decides
// whether a version carries news (Supersedes); the app SDK's version guard
// uses the same rule.
type Handled = wire.Handled

// SNSubject is "sn.<table>.<action>".
func SNSubject(table, action string) string { return "sn." + table + "." + action }

// AppSubject is "app.<entity>.<action>".
func AppSubject(entity, action string) string { return wire.AppSubject(entity, action) }

// ApplySubject is "bridge.apply.<entity>.<action>".
func ApplySubject(entity, action string) string { return wire.ApplySubject(entity, action) }

// DLQSubject is "bridge.dlq.<pipeline>".
func DLQSubject(pipeline string) string { return "bridge.dlq." + pipeline }

// MsgID is "<table>:<sys_id>:<sys_mod_count>:<action>", the id the business
// rule sends as webhook-id and SN_EVENTS de-duplicates on.
func MsgID(table, sysID string, modCount int64, action string) string {
	return wire.MsgID(table, sysID, modCount, action)
}

// ParseSubject splits "<prefix>.<a>.<b>" into a and b (table/entity and action).
func ParseSubject(subject string) (kind, name, action string, ok bool) {
	parts := strings.Split(subject, ".")
	switch {
	case len(parts) == 3:
		return parts[0], parts[1], parts[2], true
	case len(parts) == 4 && parts[0] == "bridge":
		return parts[0] + "." + parts[1], parts[2], parts[3], true
	}
	return "", "", "", false
}

// HeaderDLQOrigMsgID keeps the origin message's Nats-Msg-Id on a dead letter.
const HeaderDLQOrigMsgID = "Bridge-Dlq-Orig-Msg-Id"

// DeadLetterHeaders copies a message's headers for its dead letter, leaving
// out the server-interpreted Nats-* ones: a Nats-Expected-Stream of the
// origin stream would make JetStream reject the BRIDGE_DLQ publish, and the
// origin's Nats-Msg-Id is kept under HeaderDLQOrigMsgID instead.
func DeadLetterHeaders(src map[string][]string) map[string][]string {
	out := make(map[string][]string, len(src)+8)
	for k, v := range src {
		if strings.HasPrefix(k, "Nats-") {
			continue
		}
		out[k] = v
	}
	if id := src[HeaderMsgID]; len(id) > 0 {
		out[HeaderDLQOrigMsgID] = id
	}
	return out
}
