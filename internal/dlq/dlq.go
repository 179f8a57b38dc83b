// Package dlq lets operators inspect, retry and purge the dead letters both
// pipelines leave in BRIDGE_DLQ. A retry republishes the message to the
// subject it came from under a Nats-Msg-Id of its own, and removes the dead
// letter only once the origin stream has stored it again.
package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// HeaderRetryOf names the dead letter (stream:seq) a retried message came
// from, so the consumer's logs and a second dead letter can be traced back.
const HeaderRetryOf = "Bridge-Retry-Of"

// HeaderRetryMsgID carries, on a retried message, the Nats-Msg-Id the
// message first had (its own is RetryID): a consumer that hands messages on
// under their id (the results delivery's webhook-id) keeps using that one.
const HeaderRetryMsgID = "Bridge-Retry-Msg-Id"

// RetryTag is what a consumer appends to the ids of what it publishes for
// a message `bridge dlq retry` republished (":retry-of:BRIDGE_DLQ:<seq>"),
// so that what the retry produced is told apart from what the first
// delivery did (the writeback's late result is news, not a duplicate); ""
// for a message that is not a retry.
func RetryTag(h nats.Header) string {
	if of := h.Get(HeaderRetryOf); of != "" {
		return ":retry-of:" + of
	}
	return ""
}

// HeaderResponse carries the failing side's answer (the apply pipeline
// keeps the app's response body there).
const HeaderResponse = "Bridge-Dlq-Response"

// ErrNotFound means no dead letter has that sequence (never existed, retried
// or purged).
var ErrNotFound = errors.New("no dead letter with that sequence")

// Entry is one dead letter.
type Entry struct {
	Seq      uint64      `json:"seq"`
	Pipeline string      `json:"pipeline"`
	Subject  string      `json:"subject"`        // bridge.dlq.<pipeline>
	Origin   string      `json:"origin_subject"` // where it came from and where retry sends it
	Stream   string      `json:"origin_stream,omitempty"`
	OrigSeq  uint64      `json:"origin_seq,omitempty"`
	Record   string      `json:"record"` // table/sys_id or entity/external_id, with the version
	Status   int         `json:"status,omitempty"`
	Reason   string      `json:"reason"`
	Hint     string      `json:"hint,omitempty"`
	Response string      `json:"response,omitempty"` // the failing side's answer, when the pipeline kept it
	Time     time.Time   `json:"time"`
	Headers  nats.Header `json:"headers,omitempty"`
	Data     []byte      `json:"-"`
}

// Age is how long ago the message was dead-lettered.
func (e Entry) Age(now time.Time) time.Duration { return now.Sub(e.Time) }

func entry(seq uint64, subject string, h nats.Header, data []byte, t time.Time) Entry {
	e := Entry{Seq: seq, Subject: subject, Headers: h, Data: data, Time: t.UTC()}
	e.Pipeline = strings.TrimPrefix(subject, "bridge.dlq.")
	e.Origin = h.Get(events.HeaderDLQSubject)
	e.Stream = h.Get(events.HeaderDLQStream)
	e.OrigSeq, _ = strconv.ParseUint(h.Get(events.HeaderDLQSeq), 10, 64)
	e.Status, _ = strconv.Atoi(h.Get(events.HeaderDLQStatus))
	e.Reason = h.Get(events.HeaderDLQReason)
	e.Hint = h.Get(events.HeaderDLQHint)
	e.Response = h.Get(HeaderResponse)
	e.Record = describeRecord(e.Origin, data)
	return e
}

// describeRecord names the record a message is about, best effort.
func describeRecord(origin string, data []byte) string {
	if strings.HasPrefix(origin, "sn.") {
		var ev events.SNEvent
		if json.Unmarshal(data, &ev) == nil && ev.SysID != "" {
			return fmt.Sprintf("%s/%s #%d", ev.Table, ev.SysID, ev.SysModCount)
		}
	}
	var ch events.AppChange
	if json.Unmarshal(data, &ch) == nil && ch.ExternalID != "" {
		_, entity, _, _ := events.ParseSubject(origin)
		if entity == "" {
			entity = "?"
		}
		return fmt.Sprintf("%s/%s v%d", entity, ch.ExternalID, ch.Version)
	}
	var ev events.SNEvent
	if json.Unmarshal(data, &ev) == nil && ev.SysID != "" {
		return fmt.Sprintf("%s/%s #%d", ev.Table, ev.SysID, ev.SysModCount)
	}
	return "?"
}

func filter(pipeline string) string {
	if pipeline == "" {
		return events.DLQSubjects
	}
	return events.DLQSubject(pipeline)
}

// List returns the dead letters of one pipeline ("" for all), oldest first,
// read with an ordered ephemeral consumer that disturbs nothing.
func List(ctx context.Context, js jetstream.JetStream, pipeline string) ([]Entry, error) {
	st, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", events.StreamDLQ, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter(pipeline)))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", events.StreamDLQ, err)
	}
	if info.State.Msgs == 0 || len(info.State.Subjects) == 0 {
		return nil, nil // none at all, or none of this pipeline
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter(pipeline)}})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", events.StreamDLQ, err)
	}
	var out []Entry
	wait := false
	for {
		// What the stream holds now: a batch that waited to fill up would
		// make every listing take its whole wait. Only when nothing came at
		// once is one batch waited for.
		var batch jetstream.MessageBatch
		if wait {
			batch, err = cons.Fetch(256, jetstream.FetchMaxWait(time.Second))
		} else {
			batch, err = cons.FetchNoWait(256)
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", events.StreamDLQ, err)
		}
		var pending uint64 = 1
		n := 0
		for msg := range batch.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				return nil, err
			}
			out = append(out, entry(meta.Sequence.Stream, msg.Subject(), msg.Headers(), msg.Data(), meta.Timestamp))
			pending = meta.NumPending
			if meta.Sequence.Stream >= info.State.LastSeq {
				pending = 0
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("read %s: %w", events.StreamDLQ, err)
		}
		if pending == 0 || (n == 0 && wait) || ctx.Err() != nil {
			return out, ctx.Err()
		}
		wait = n == 0
	}
}

// Get returns one dead letter.
func Get(ctx context.Context, js jetstream.JetStream, seq uint64) (Entry, error) {
	st, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		return Entry{}, fmt.Errorf("open %s: %w", events.StreamDLQ, err)
	}
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Entry{}, fmt.Errorf("%w: %d (see `bridge dlq ls`)", ErrNotFound, seq)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("get dead letter %d: %w", seq, err)
	}
	return entry(m.Sequence, m.Subject, m.Header, m.Data, m.Time), nil
}

// RetryID is the Nats-Msg-Id a retried dead letter is published under. The
// origin stream de-duplicates on ids for its whole window, and a dead
// letter usually still carries (or replaced) the id the origin stream
// already stored: republished under it, the retry would be acked as a
// duplicate and silently dropped. An id of its own per dead letter makes
// every retry land once — and retrying the same dead letter twice (a crash
// between publish and removal) still lands once.
func RetryID(e Entry) string {
	base := e.Headers.Get(events.HeaderMsgID)
	if base == "" {
		base = e.Stream + ":" + strconv.FormatUint(e.OrigSeq, 10)
	}
	return base + ":retry:" + strconv.FormatUint(e.Seq, 10)
}

// RetryResult says where a retried dead letter went.
type RetryResult struct {
	Seq       uint64 `json:"seq"`
	Subject   string `json:"subject"`
	Stream    string `json:"stream"`
	StreamSeq uint64 `json:"stream_seq"`
	MsgID     string `json:"msg_id"`
	Duplicate bool   `json:"duplicate,omitempty"` // already retried before; now removed
	// Result is the writeback's result of the retried change, when
	// AwaitResults found it.
	Result *events.Result `json:"result,omitempty"`
}

// Retry republishes one dead letter to its origin subject and removes it
// from BRIDGE_DLQ once the origin stream acked it.
func Retry(ctx context.Context, js jetstream.JetStream, seq uint64) (RetryResult, error) {
	e, err := Get(ctx, js, seq)
	if err != nil {
		return RetryResult{Seq: seq}, err
	}
	return retry(ctx, js, e)
}

func retry(ctx context.Context, js jetstream.JetStream, e Entry) (RetryResult, error) {
	res := RetryResult{Seq: e.Seq, Subject: e.Origin}
	if e.Origin == "" {
		return res, fmt.Errorf("dead letter %d has no %s header: cannot tell where it came from", e.Seq, events.HeaderDLQSubject)
	}
	msg := nats.NewMsg(e.Origin)
	msg.Data = e.Data
	for k, v := range e.Headers {
		// The DLQ's own headers and JetStream's control headers (expected
		// sequence, TTL, ...) do not belong on the republished message.
		if strings.HasPrefix(k, "Bridge-Dlq-") || strings.HasPrefix(k, "Nats-") {
			continue
		}
		msg.Header[k] = v
	}
	res.MsgID = RetryID(e)
	msg.Header.Set(events.HeaderMsgID, res.MsgID)
	msg.Header.Set(HeaderRetryOf, events.StreamDLQ+":"+strconv.FormatUint(e.Seq, 10))
	if orig := e.Headers.Get(events.HeaderDLQOrigMsgID); orig != "" {
		msg.Header.Set(HeaderRetryMsgID, orig)
	}
	var opts []jetstream.PublishOpt
	if e.Stream != "" {
		opts = append(opts, jetstream.WithExpectStream(e.Stream))
	}
	ack, err := js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		return res, fmt.Errorf("republish dead letter %d to %s: %w", e.Seq, e.Origin, err)
	}
	res.Stream, res.StreamSeq, res.Duplicate = ack.Stream, ack.Sequence, ack.Duplicate
	st, err := js.Stream(ctx, events.StreamDLQ)
	if err == nil {
		err = st.DeleteMsg(ctx, e.Seq)
	}
	if err != nil && !alreadyGone(err) {
		return res, fmt.Errorf("dead letter %d was republished to %s (seq %d) but not removed: %w; retrying it again is safe", e.Seq, e.Origin, ack.Sequence, err)
	}
	return res, nil
}

// RetryAll retries every dead letter of pipeline ("" for all), oldest
// first, and returns what went out; it goes on past failures and returns
// them joined.
func RetryAll(ctx context.Context, js jetstream.JetStream, pipeline string) ([]RetryResult, error) {
	entries, err := List(ctx, js, pipeline)
	if err != nil {
		return nil, err
	}
	var out []RetryResult
	var errs []error
	for _, e := range entries {
		res, err := retry(ctx, js, e)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		out = append(out, res)
	}
	return out, errors.Join(errs...)
}

// Count returns how many dead letters each pipeline holds.
func Count(ctx context.Context, js jetstream.JetStream) (map[string]uint64, error) {
	st, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", events.StreamDLQ, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.DLQSubjects))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", events.StreamDLQ, err)
	}
	out := map[string]uint64{}
	for subj, n := range info.State.Subjects {
		out[strings.TrimPrefix(subj, "bridge.dlq.")] += n
	}
	return out, nil
}

// Purge removes the dead letters of pipeline ("" for all) and returns how
// many there were.
func Purge(ctx context.Context, js jetstream.JetStream, pipeline string) (uint64, error) {
	counts, err := Count(ctx, js)
	if err != nil {
		return 0, err
	}
	var n uint64
	for p, c := range counts {
		if pipeline == "" || p == pipeline {
			n += c
		}
	}
	st, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		return 0, err
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(filter(pipeline))); err != nil {
		return 0, fmt.Errorf("purge %s: %w", filter(pipeline), err)
	}
	return n, nil
}

// PurgeThrough removes the dead letters of pipeline ("" for all) up to and
// including sequence last, and returns how many there were. A purge
// confirmed by a person who saw the list up to last leaves the dead letters
// that arrived after it alone.
func PurgeThrough(ctx context.Context, js jetstream.JetStream, pipeline string, last uint64) (uint64, error) {
	entries, err := List(ctx, js, pipeline)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, e := range entries {
		if e.Seq <= last {
			n++
		}
	}
	st, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", events.StreamDLQ, err)
	}
	// WithPurgeSequence removes the messages below it.
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(filter(pipeline)), jetstream.WithPurgeSequence(last+1)); err != nil {
		return 0, fmt.Errorf("purge %s through %d: %w", filter(pipeline), last, err)
	}
	return n, nil
}

// alreadyGone reports a delete of a message that is no longer there (the
// server answers 10057 "no message found").
func alreadyGone(err error) bool {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true
	}
	// The client formats the server's answer into the error text.
	return errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) && strings.Contains(err.Error(), "no message found")
}

// AwaitResults waits until BRIDGE_RESULTS holds the final result of each
// retried writeback dead letter (one republished to app.>), or ctx ends,
// and sets it on retried. It reads with an ordered consumer from since (a
// moment before the retries), matching each result's id on the retry's
// RetryTag. The others (apply's dead letters: their outcome is the app's
// answer, not a result) are left alone. It returns how many are still
// without a result.
func AwaitResults(ctx context.Context, js jetstream.JetStream, since time.Time, retried []RetryResult) (int, error) {
	want := map[string]int{} // retry tag -> index in retried
	for i, r := range retried {
		if strings.HasPrefix(r.Subject, "app.") && r.Result == nil {
			want[":retry-of:"+events.StreamDLQ+":"+strconv.FormatUint(r.Seq, 10)] = i
		}
	}
	if len(want) == 0 {
		return 0, nil
	}
	st, err := js.Stream(ctx, events.StreamResults)
	if err != nil {
		return len(want), fmt.Errorf("open %s: %w", events.StreamResults, err)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.ResultsSubjects},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &since,
	})
	if err != nil {
		return len(want), fmt.Errorf("read %s: %w", events.StreamResults, err)
	}
	for len(want) > 0 {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		switch {
		case ctx.Err() != nil:
			return len(want), nil
		case errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout):
			continue
		case err != nil:
			return len(want), fmt.Errorf("read %s: %w", events.StreamResults, err)
		}
		id := msg.Headers().Get(events.HeaderMsgID)
		i := strings.LastIndex(id, ":retry-of:")
		if i < 0 {
			continue
		}
		idx, ok := want[id[i:]]
		if !ok {
			continue
		}
		var r events.Result
		if json.Unmarshal(msg.Data(), &r) != nil || !r.Final() {
			continue // retrying: the final result follows
		}
		retried[idx].Result = &r
		delete(want, id[i:])
	}
	return 0, nil
}
