package trace

import (
	"encoding/json"
	"math/bits"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Headers read from a message to tell where it came from (the dlq
// package's names; kept here so the log does not depend on it).
const (
	headerRetryOf    = "Bridge-Retry-Of"
	headerRetryMsgID = "Bridge-Retry-Msg-Id"
)

// ConsumerDecision is what a consumer engine decided about a message its
// handler could not handle.
type ConsumerDecision struct {
	Pipeline string // apply, writeback, results
	Decision string // DeadLettered, Rejected or Retrying
	Reason   string // the handler's error, ServiceNow's or the app's message in it
	Hint     string
	Status   int    // the peer's HTTP status, 0 when none
	DLQSeq   uint64 // the dead letter's BRIDGE_DLQ sequence
}

// Consumer records d about msg, a message of SN_EVENTS, APP_EVENTS or
// BRIDGE_RESULTS, naming its record from the message itself. A retry is
// recorded at the first delivery and then at every doubling (2, 4, 8...),
// so a change waiting out a long outage does not push the record's older
// entries out of its subject's limit. The message is decoded only here,
// off the pipelines' usual path (a failure).
func (r *Recorder) Consumer(msg jetstream.Msg, meta *jetstream.MsgMetadata, d ConsumerDecision) {
	if r == nil || meta == nil {
		return
	}
	if d.Decision == Retrying && bits.OnesCount64(meta.NumDelivered) != 1 {
		return
	}
	e := Entry{Version: NoVersion, Decision: d.Decision, Reason: d.Reason, Hint: d.Hint, Stored: meta.Timestamp}
	if d.Decision == Retrying {
		e.Stage = stageOf(d.Pipeline)
		e.Reason = "delivery " + strconv.FormatUint(meta.NumDelivered, 10) + ": " + d.Reason
	} else {
		e.Stage = StageDLQ
		if d.DLQSeq > 0 {
			e.Refs = append(e.Refs, Ref{Stream: events.StreamDLQ, Seq: d.DLQSeq})
		}
		e.Reason = d.Pipeline + ": " + d.Reason
	}
	if d.Status != 0 && !strings.Contains(d.Reason, strconv.Itoa(d.Status)) {
		e.Reason += " (HTTP " + strconv.Itoa(d.Status) + ")"
	}
	e.Refs = append(e.Refs, Ref{Stream: meta.Stream, Seq: meta.Sequence.Stream})
	h := msg.Headers()
	switch meta.Stream {
	case events.StreamSN:
		e.Source = snSource(h.Get(events.HeaderSource), h.Get(headerRetryOf) != "")
		identifySN(&e, h.Get(events.HeaderMsgID), h.Get(headerRetryMsgID), msg.Data())
	case events.StreamApp:
		e.Source = SourceApp
		if h.Get(headerRetryOf) != "" {
			e.Source = SourceDLQRetry
		}
		identifyApp(&e, msg.Subject(), msg.Data())
	case events.StreamResults:
		e.Source = SourceApp
		identifyResult(&e, msg.Data())
	default:
		return
	}
	r.Record(e)
}

// SourceOf is the source of an SN_EVENTS message: webhook or reconcile as
// its Bridge-Source header says (falling back to the event's own), or
// dlq_retry when `bridge dlq retry` put it back.
func SourceOf(header map[string][]string, eventSource string) string {
	get := func(k string) string {
		if v := header[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	src := get(events.HeaderSource)
	if src == "" {
		src = eventSource
	}
	return snSource(src, get(headerRetryOf) != "")
}

func snSource(src string, retried bool) string {
	switch {
	case retried:
		return SourceDLQRetry
	case src == "":
		return SourceWebhook
	}
	return src
}

func stageOf(pipeline string) string {
	switch pipeline {
	case "apply":
		return StageApply
	case "writeback":
		return StageWriteback
	case "results":
		return StageResults
	}
	return pipeline
}

// identifySN names the record of an SN_EVENTS message: its message id
// (<table>:<sys_id>:<count>:<action>), the one it had before a DLQ retry,
// or its body.
func identifySN(e *Entry, msgID, retryMsgID string, data []byte) {
	var probe struct {
		Table       string          `json:"table"`
		SysID       string          `json:"sys_id"`
		Action      string          `json:"action"`
		SysModCount events.ModCount `json:"sys_mod_count"`
		Record      struct {
			Number string `json:"number"`
		} `json:"record"`
	}
	bodyOK := json.Unmarshal(data, &probe) == nil
	e.Number = probe.Record.Number
	for _, id := range []string{msgID, retryMsgID} {
		parts := strings.Split(id, ":")
		if len(parts) != 4 || !events.ValidTable(parts[0]) || !events.ValidSysID(parts[1]) {
			continue
		}
		v, err := strconv.ParseInt(parts[2], 10, 64)
		if err != nil {
			continue
		}
		e.Table, e.SysID, e.Version, e.Action = parts[0], parts[1], v, parts[3]
		return
	}
	if bodyOK {
		e.Table, e.SysID, e.Action, e.Version = probe.Table, probe.SysID, probe.Action, int64(probe.SysModCount)
	}
}

// identifyApp names the app id (and the record, when the change names its
// table and sys_id) of an APP_EVENTS message.
func identifyApp(e *Entry, subject string, data []byte) {
	if _, entity, action, ok := events.ParseSubject(subject); ok {
		e.Entity, e.Action = entity, action
	}
	var probe struct {
		ExternalID string `json:"external_id"`
		SysID      string `json:"sys_id"`
		Table      string `json:"table"`
		Version    int64  `json:"version"`
	}
	_ = json.Unmarshal(data, &probe)
	e.ExternalID, e.AppVersion = probe.ExternalID, probe.Version
	if probe.Table != "" && events.ValidSysID(probe.SysID) {
		e.Table, e.SysID = probe.Table, probe.SysID
	}
}

// identifyResult names the record and app id of a BRIDGE_RESULTS message.
func identifyResult(e *Entry, data []byte) {
	var r events.Result
	if json.Unmarshal(data, &r) != nil {
		return
	}
	e.Entity, e.ExternalID, e.AppVersion, e.Action = r.Entity, r.ExternalID, r.Version, r.Action
	e.Table, e.SysID, e.Number = r.Table, r.SysID, r.Number
	if r.SysModCount != nil {
		e.Version = *r.SysModCount
	}
}
