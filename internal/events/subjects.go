package events

import (
	"strconv"
	"strings"
)

// Stream, bucket and subject names (SPEC §3).
const (
	StreamSN    = "SN_EVENTS"
	StreamApp   = "APP_EVENTS"
	StreamApply = "BRIDGE_APPLY"
	StreamDLQ   = "BRIDGE_DLQ"

	BucketLinks = "bridge_links"
	BucketState = "bridge_state"

	SNSubjects    = "sn.>"
	AppSubjects   = "app.>"
	ApplySubjects = "bridge.apply.>"
	DLQSubjects   = "bridge.dlq.>"
)

// Header names the bridge sets on JetStream messages besides Nats-Msg-Id.
const (
	HeaderMsgID       = "Nats-Msg-Id"
	HeaderSource      = "Bridge-Source"      // webhook | reconcile | replay
	HeaderDLQReason   = "Bridge-Dlq-Reason"  // why a message was dead-lettered
	HeaderDLQStatus   = "Bridge-Dlq-Status"  // HTTP status of the failed call, if any
	HeaderDLQSubject  = "Bridge-Dlq-Subject" // the subject the message came from
	HeaderDLQStream   = "Bridge-Dlq-Stream"
	HeaderDLQSeq      = "Bridge-Dlq-Seq"
	HeaderDLQHint     = "Bridge-Dlq-Hint"
	HeaderDLQResponse = "Bridge-Dlq-Response" // the remote side's response body
)

// SNSubject is "sn.<table>.<action>".
func SNSubject(table, action string) string { return "sn." + table + "." + action }

// AppSubject is "app.<entity>.<action>".
func AppSubject(entity, action string) string { return "app." + entity + "." + action }

// ApplySubject is "bridge.apply.<entity>.<action>".
func ApplySubject(entity, action string) string { return "bridge.apply." + entity + "." + action }

// DLQSubject is "bridge.dlq.<pipeline>".
func DLQSubject(pipeline string) string { return "bridge.dlq." + pipeline }

// MsgID is "<table>:<sys_id>:<sys_mod_count>:<action>", the id the business
// rule sends as webhook-id and SN_EVENTS de-duplicates on.
func MsgID(table, sysID string, modCount int64, action string) string {
	var b strings.Builder
	b.Grow(len(table) + len(sysID) + len(action) + 24)
	b.WriteString(table)
	b.WriteByte(':')
	b.WriteString(sysID)
	b.WriteByte(':')
	b.WriteString(strconv.FormatInt(modCount, 10))
	b.WriteByte(':')
	b.WriteString(action)
	return b.String()
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
