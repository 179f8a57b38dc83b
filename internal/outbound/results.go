package outbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snclient"
)

// Results: the app hears the outcome of every change it publishes, on
// bridge.result.<entity>.<outcome> (BRIDGE_RESULTS). The consumer publishes
// a change's final result, awaiting the stream's ack, before it acks the
// change, so none is lost: a result that could not be stored leaves the
// change to be delivered again, and a redelivered change publishes the
// result it was first given under the same id, which the stream drops as a
// duplicate. A change that waits on a retryable failure (429, 5xx, an open
// breaker, the network, a token) first gets one retrying result; a change
// dead-lettered gets a rejected one, stored before the change is
// terminated.

// replyOutcome is the result outcome of a writer outcome.
func replyOutcome(res *Result) string {
	if len(res.Conflicts) > 0 && res.Outcome != OutcomeStale {
		return events.OutcomeConflict
	}
	switch res.Outcome {
	case OutcomeCreated:
		return events.OutcomeCreated
	case OutcomeUpdated, OutcomeDeleted:
		return events.OutcomeUpdated
	case OutcomeStale:
		return events.OutcomeStale
	}
	return events.OutcomeUnchanged // no_change, echo, skipped
}

// reply is the result the app is told of ch, which Apply handled as res:
// the record's number and version from ServiceNow's answer, else from
// bridge_state, its link on the instance, and for a conflict each field in
// the app's names and values with the policy that decided it.
func (w *Writer) reply(ctx context.Context, ch Change, res *Result) events.Result {
	r := w.replyHead(ch, replyOutcome(res))
	r.Table, r.SysID, r.Number = res.Table, res.SysID, res.Number
	if res.modKnown && res.Outcome != OutcomeStale {
		mc := res.ModCount
		r.SysModCount = &mc
	}
	if r.SysID != "" && (r.Number == "" || r.SysModCount == nil) {
		w.recordKnown(ctx, &r)
	}
	r.URL = events.RecordURL(w.cfg.InstanceURL, r.Table, r.SysID)
	if r.Outcome == events.OutcomeConflict {
		r.Conflicts = w.appConflicts(ch.Entity, res.Table, res.Conflicts)
	}
	return r
}

func (w *Writer) replyHead(ch Change, outcome string) events.Result {
	return events.Result{
		ExternalID: ch.ExternalID, Version: ch.Version, Entity: ch.Entity, Action: ch.Action,
		Outcome: outcome, At: time.Now().UTC(),
	}
}

// recordKnown completes r's number and version from what bridge_state
// knows of its record (best effort: a result is not held up by it).
func (w *Writer) recordKnown(ctx context.Context, r *events.Result) {
	st, _, ok, err := w.states.Get(ctx, r.Table, r.SysID)
	if err != nil || !ok {
		return
	}
	if r.Number == "" {
		r.Number = st.Fields["number"]
	}
	if r.SysModCount == nil && r.Outcome != events.OutcomeStale && !st.Deleted {
		mc := st.Version
		r.SysModCount = &mc
	}
}

// recordOf is the record an app change is about, as far as the bridge
// knows without asking ServiceNow: the linked sys_id, its number and
// version (for the results of changes that were not written).
func (w *Writer) recordOf(ctx context.Context, ch Change) (r events.Result) {
	r.Table, _ = w.mapping.Table(ch.Entity)
	if r.Table == "" {
		return r
	}
	if events.ValidSysID(ch.SysID) {
		r.SysID = ch.SysID
	} else if t, sysID, ok, err := w.links.SysID(ctx, ch.Entity, ch.ExternalID); err == nil && ok && (t == "" || t == r.Table) {
		r.SysID = sysID
	}
	if r.SysID != "" {
		w.recordKnown(ctx, &r)
		r.URL = events.RecordURL(w.cfg.InstanceURL, r.Table, r.SysID)
	}
	return r
}

// failureReply is the result of a change that failed: rejected (it was
// dead-lettered) or retrying. ServiceNow's own message and detail are kept
// apart when it refused the change; otherwise the message is the bridge's.
func (w *Writer) failureReply(ctx context.Context, ch Change, outcome string, d consume.Decision, cause error) events.Result {
	rec := w.recordOf(ctx, ch)
	r := w.replyHead(ch, outcome)
	r.Table, r.SysID, r.Number, r.SysModCount, r.URL = rec.Table, rec.SysID, rec.Number, rec.SysModCount, rec.URL
	e := &events.ResultError{Status: d.Status, Hint: d.Hint}
	var ae *snclient.APIError
	switch {
	case cause == nil:
		e.Message = "ServiceNow's circuit breaker is open after repeated failures; the change waits until it closes"
	case errors.As(cause, &ae) && ae.Message != "" && snclient.IsPermanent(cause):
		e.Message, e.Detail = ae.Message, ae.Detail
	default:
		e.Message = cause.Error()
		if errors.As(cause, &ae) {
			e.Detail = ae.Detail
		}
	}
	if e.Hint == "" {
		e.Hint = snclient.Hint(cause)
	}
	if outcome == events.OutcomeRejected {
		e.DeadLettered = true
	} else {
		e.Reason = retryingReason(d.Reason)
	}
	r.Error = e
	return r
}

// appConflicts renders conflicts in the app's field names and values where
// the mapping knows them.
func (w *Writer) appConflicts(entity, table string, cs []Conflict) []events.ResultConflict {
	t, _ := w.mapping.ForTable(table)
	out := make([]events.ResultConflict, 0, len(cs))
	for _, c := range cs {
		rc := events.ResultConflict{Field: c.Field, Policy: string(c.Policy), Winner: c.Winner, ServiceNow: c.ServiceNow, SaaS: c.SaaS}
		if t != nil {
			if f, ok := t.FieldByServiceNow(c.Field); ok {
				rc.Field = f.SaaS
				if v, ok := f.ValueToSaaS(c.ServiceNow); ok {
					rc.ServiceNow = v
				}
				if v, ok := f.ValueToSaaS(c.SaaS); ok {
					rc.SaaS = v
				}
			}
		}
		out = append(out, rc)
	}
	return out
}

// retryingReason is the reason a retrying result names, "" for retries the
// app is not told of: the bridge's own (NATS, a shutdown) and a change
// waiting behind an earlier one of its record.
func retryingReason(reason string) string {
	switch reason {
	case consume.ReasonRateLimited, consume.ReasonServerError, consume.ReasonNetwork, consume.ReasonAuth, consume.ReasonBreakerOpen:
		return reason
	case consume.ReasonPaused:
		return consume.ReasonBreakerOpen
	}
	return ""
}

// resultMsgID is the Nats-Msg-Id of r, the result of msg: one per external
// id, version and outcome. A change without a version gets one final
// result (and one retrying) per APP_EVENTS message, whatever its outcome;
// a change an operator retried from the DLQ starts over (its result after
// the retry is news, even when it is the same outcome again).
func resultMsgID(r events.Result, msg jetstream.Msg, meta *jetstream.MsgMetadata) string {
	id := events.ResultMsgID(r.Entity, r.ExternalID, r.Version, r.Outcome)
	if r.Version <= 0 {
		kind := "final"
		if r.Outcome == events.OutcomeRetrying {
			kind = events.OutcomeRetrying
		}
		id = events.ResultMsgID(r.Entity, r.ExternalID, 0, kind) + ":" + meta.Stream + ":" + strconv.FormatUint(meta.Sequence.Stream, 10)
	}
	return id + dlq.RetryTag(msg.Headers())
}

// resultPublishTimeout bounds one result's publish and ack.
const resultPublishTimeout = 10 * time.Second

// resultSink publishes results to BRIDGE_RESULTS and remembers which
// changes were told "retrying", so each is told once per process (the
// stream's de-duplication covers restarts).
type resultSink struct {
	js      jetstream.JetStream
	metrics *metrics

	mu        sync.Mutex
	announced map[string]struct{} // retrying result ids published
}

// announcedMax bounds the retrying ids remembered; past it they are
// forgotten at once (the stream's de-duplication still drops a repeat).
const announcedMax = 100_000

func newResultSink(js jetstream.JetStream, m *metrics) *resultSink {
	return &resultSink{js: js, metrics: m, announced: map[string]struct{}{}}
}

// publish stores r under id and waits for the stream's ack; seq is its
// BRIDGE_RESULTS sequence (for a duplicate, the first copy's).
func (s *resultSink) publish(ctx context.Context, r events.Result, id string) (seq uint64, err error) {
	body, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("encode result: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, resultPublishTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: events.ResultSubject(r.Entity, r.Outcome), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, id)
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamResults))
	if err != nil {
		s.metrics.resultFailures.Inc()
		return 0, fmt.Errorf("publish result %s to %s: %w", id, events.StreamResults, err)
	}
	if ack.Duplicate {
		s.metrics.resultDuplicates.Inc()
	} else {
		s.metrics.results.WithLabelValues(r.Outcome).Inc()
	}
	return ack.Sequence, nil
}

// announce reports whether the retrying result id is new to this process,
// and remembers it.
func (s *resultSink) announce(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.announced[id]; ok {
		return false
	}
	if len(s.announced) >= announcedMax {
		clear(s.announced)
	}
	s.announced[id] = struct{}{}
	return true
}

// forget drops a retrying result id: its change is settled, or its result
// could not be stored and may be tried again.
func (s *resultSink) forget(id string) {
	s.mu.Lock()
	delete(s.announced, id)
	s.mu.Unlock()
}

// retryingID is the id of the retrying result of the change r answers.
func retryingID(r events.Result, msg jetstream.Msg, meta *jetstream.MsgMetadata) string {
	r.Outcome = events.OutcomeRetrying
	return resultMsgID(r, msg, meta)
}

// Retrying implements consume.Observer: the first time a change waits on
// ServiceNow (429, 5xx, an open breaker, the network, a token) the app is
// told it is pending. A result that cannot be stored is logged; the change
// is retried anyway and its final result follows.
func (h handler) Retrying(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d consume.Decision, err error) {
	if retryingReason(d.Reason) == "" {
		return
	}
	ch, ok := changeOf(msg.Subject(), msg.Data())
	if !ok {
		return
	}
	head := h.w.replyHead(ch, events.OutcomeRetrying)
	id := resultMsgID(head, msg, meta)
	if !h.results.announce(id) {
		return
	}
	r := h.w.failureReply(ctx, ch, events.OutcomeRetrying, d, err)
	if _, perr := h.results.publish(ctx, r, id); perr != nil {
		h.results.forget(id)
		h.w.log.Warn("retrying result not stored; the change's final result will follow", "external_id", ch.ExternalID, "version", ch.Version, "err", perr)
	}
}

// DeadLettered implements consume.Observer: a change dead-lettered is
// rejected, with ServiceNow's message and detail and snclient's hint. An
// error keeps the change in APP_EVENTS until its result is stored. A
// message that names no external id has no one to tell.
func (h handler) DeadLettered(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d consume.Decision, cause error) error {
	ch, ok := changeOf(msg.Subject(), msg.Data())
	if !ok {
		return nil
	}
	r := h.w.failureReply(ctx, ch, events.OutcomeRejected, d, cause)
	if _, err := h.results.publish(ctx, r, resultMsgID(r, msg, meta)); err != nil {
		return err
	}
	h.results.forget(retryingID(r, msg, meta))
	return nil
}

// changeOf decodes a message as the consumer does, or failing that (an
// action the writeback does not know, a field of the wrong type) as far as
// its entity, external id and version, so the app hears why it was refused.
func changeOf(subject string, data []byte) (Change, bool) {
	if ch, err := decodeChange(subject, data); err == nil {
		return ch, true
	}
	_, entity, action, ok := splitAppSubject(subject)
	var probe struct {
		ExternalID string `json:"external_id"`
		Version    int64  `json:"version"`
	}
	if !ok || entity == "" || json.Unmarshal(data, &probe) != nil || probe.ExternalID == "" {
		return Change{}, false
	}
	ch := Change{Entity: entity, Action: action}
	ch.ExternalID, ch.Version = probe.ExternalID, probe.Version
	return ch, true
}
