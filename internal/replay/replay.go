// Package replay re-runs a window of SN_EVENTS or APP_EVENTS through the
// live consumer's own per-message code (the apply or writeback path),
// reading with an ordered ephemeral consumer so the durable consumers are
// not disturbed. The version guard decides as it does live; a dry run only
// asks it, and force bypasses it.
package replay

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

// Message is one stored message being replayed.
type Message struct {
	Seq     uint64
	Subject string
	Header  nats.Header
	Data    []byte
	Time    time.Time
}

// Verdicts of the version guard, and what replay did.
const (
	VerdictApply = "apply" // newer than what the target has: would be applied
	VerdictSkip  = "skip"  // the guard skips it: the target already has this version or a newer one
)

// Check is the guard's answer for one message, without side effects.
type Check struct {
	Record  string // table/sys_id or entity/external_id, for people
	Verdict string // VerdictApply or VerdictSkip
	Reason  string // e.g. "already applied version 5"
}

// Handler is the live consumer's per-message path.
type Handler interface {
	// Check asks the version guard about msg without applying anything.
	Check(ctx context.Context, msg Message) (Check, error)
	// Handle applies msg exactly as the live consumer would; force applies
	// it even when the guard would skip it. outcome says what happened.
	Handle(ctx context.Context, msg Message, force bool) (outcome string, err error)
}

// SkipRecorder is what a Handler may also implement to hear of each
// message the version guard skipped on a replay that is not a dry run (the
// decision log records it; a dry run decides nothing). A Handler wrapping
// another should pass it on.
type SkipRecorder interface {
	Skipped(ctx context.Context, msg Message, chk Check)
}

// Selection picks the messages to replay. Zero fields select everything.
type Selection struct {
	Stream     string    // events.StreamSN or events.StreamApp
	Since      time.Time // stored at or after
	Until      time.Time // stored at or before
	FromSeq    uint64    // stream sequence range, inclusive
	ToSeq      uint64
	Name       string // table (SN_EVENTS) or entity (APP_EVENTS)
	SysID      string
	ExternalID string
}

// Validate checks the selection.
func (s Selection) Validate() error {
	switch s.Stream {
	case events.StreamSN, events.StreamApp:
	default:
		return fmt.Errorf("stream must be %s or %s, got %q", events.StreamSN, events.StreamApp, s.Stream)
	}
	if s.ToSeq != 0 && s.FromSeq > s.ToSeq {
		return fmt.Errorf("sequence range %d-%d is empty", s.FromSeq, s.ToSeq)
	}
	if !s.Since.IsZero() && !s.Until.IsZero() && s.Until.Before(s.Since) {
		return errors.New("--until is before --since")
	}
	if s.Name != "" && !events.ValidTable(s.Name) {
		return fmt.Errorf("%q is not a table or entity name", s.Name)
	}
	if s.SysID != "" && !events.ValidSysID(s.SysID) {
		return fmt.Errorf("sys_id %q is not 32 lowercase hex characters", s.SysID)
	}
	return nil
}

func (s Selection) filter() string {
	prefix := "sn"
	if s.Stream == events.StreamApp {
		prefix = "app"
	}
	if s.Name == "" {
		return prefix + ".>"
	}
	return prefix + "." + s.Name + ".>"
}

// matches applies the record filters that need the body.
func (s Selection) matches(data []byte) bool {
	if s.SysID == "" && s.ExternalID == "" {
		return true
	}
	var body struct {
		SysID      string        `json:"sys_id"`
		ExternalID string        `json:"external_id"`
		Record     events.Fields `json:"record"`
	}
	if json.Unmarshal(data, &body) != nil {
		return false
	}
	if s.SysID != "" && body.SysID != s.SysID {
		return false
	}
	ext := body.ExternalID
	if ext == "" {
		ext = body.Record["correlation_id"] // the link ServiceNow keeps
	}
	return s.ExternalID == "" || ext == s.ExternalID
}

// Options change what a replay does.
type Options struct {
	DryRun bool // only ask the guard
	Force  bool // apply what the guard would skip (the caller confirms first)
	// Progress is called after each message with the count so far and the
	// most that can follow (an upper bound before record filters).
	Progress func(done, total int)
}

// Item is one replayed message.
type Item struct {
	Seq     uint64    `json:"seq"`
	Subject string    `json:"subject"`
	Time    time.Time `json:"time"`
	Record  string    `json:"record"`
	Verdict string    `json:"verdict"`           // the guard's answer
	Outcome string    `json:"outcome,omitempty"` // what happened (not on a dry run)
	Reason  string    `json:"reason,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// Summary is what a replay did.
type Summary struct {
	Stream   string        `json:"stream"`
	DryRun   bool          `json:"dry_run"`
	Force    bool          `json:"force"`
	FirstSeq uint64        `json:"first_seq,omitempty"`
	LastSeq  uint64        `json:"last_seq,omitempty"`
	Selected int           `json:"selected"`
	Apply    int           `json:"would_apply"` // the guard's verdicts
	Skip     int           `json:"would_skip"`
	Applied  int           `json:"applied"`
	Skipped  int           `json:"skipped"`
	Failed   int           `json:"failed"`
	Duration time.Duration `json:"duration_ns"`
	Items    []Item        `json:"items"`
}

// Run replays the selected messages through h, in stream order.
func Run(ctx context.Context, js jetstream.JetStream, sel Selection, h Handler, opts Options) (Summary, error) {
	start := time.Now()
	sum := Summary{Stream: sel.Stream, DryRun: opts.DryRun, Force: opts.Force, Items: []Item{}}
	if err := sel.Validate(); err != nil {
		return sum, err
	}
	cons, last, err := openWindow(ctx, js, sel)
	if err != nil {
		return sum, err
	}
	if cons == nil {
		sum.Duration = time.Since(start)
		return sum, nil
	}
	r := &replayer{sel: sel, h: h, opts: opts, last: last, total: -1, sum: &sum}
	if err := r.readAll(ctx, cons); err != nil {
		return sum, err
	}
	sum.Duration = time.Since(start)
	if err := ctx.Err(); err != nil {
		return sum, err
	}
	if len(r.errs) > 0 {
		return sum, fmt.Errorf("%d of %d messages failed; first: %w", len(r.errs), sum.Selected, r.errs[0])
	}
	return sum, nil
}

// openWindow opens an ordered consumer on the selection's start and says
// the last sequence to replay: what is stored now (what arrives meanwhile
// goes to the live consumers anyway). A nil consumer: nothing to replay.
func openWindow(ctx context.Context, js jetstream.JetStream, sel Selection) (jetstream.Consumer, uint64, error) {
	st, err := js.Stream(ctx, sel.Stream)
	if err != nil {
		return nil, 0, fmt.Errorf("stream %s: %w", sel.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("stream %s: %w", sel.Stream, err)
	}
	last := info.State.LastSeq
	if sel.ToSeq != 0 && sel.ToSeq < last {
		last = sel.ToSeq
	}
	if info.State.Msgs == 0 || last < max(sel.FromSeq, info.State.FirstSeq) {
		return nil, last, nil
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{sel.filter()}, InactiveThreshold: time.Minute}
	switch {
	case sel.FromSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, sel.FromSeq
	case !sel.Since.IsZero():
		t := sel.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	default:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("ordered consumer on %s: %w", sel.Stream, err)
	}
	return cons, last, nil
}

// replayer is one replay's progress through its window.
type replayer struct {
	sel   Selection
	h     Handler
	opts  Options
	last  uint64 // the window's last sequence
	done  int    // messages read in the window
	total int    // messages in the window; -1 until the first is read
	errs  []error
	sum   *Summary
}

// readAll reads the window in batches until its end.
func (r *replayer) readAll(ctx context.Context, cons jetstream.Consumer) error {
	empty := 0
	for ctx.Err() == nil {
		// Everything up to last is stored: take what is there, and wait a
		// little only when an answer comes back empty before the end.
		var batch jetstream.MessageBatch
		var err error
		if empty == 0 {
			batch, err = cons.FetchNoWait(128)
		} else {
			batch, err = cons.Fetch(128, jetstream.FetchMaxWait(time.Second))
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", r.sel.Stream, err)
		}
		n, finished, err := r.batch(ctx, batch)
		if err != nil {
			return err
		}
		if finished || (n == 0 && empty > 0) {
			return nil
		}
		if n == 0 {
			empty++
		} else {
			empty = 0
		}
	}
	return nil
}

// batch replays the selected messages of one batch; finished says the
// window's end was reached.
func (r *replayer) batch(ctx context.Context, batch jetstream.MessageBatch) (n int, finished bool, err error) {
	for msg := range batch.Messages() {
		n++
		meta, err := msg.Metadata()
		if err != nil {
			return n, finished, err
		}
		seq := meta.Sequence.Stream
		if seq > r.last || (!r.sel.Until.IsZero() && meta.Timestamp.After(r.sel.Until)) {
			finished = true
			continue // drain the batch; nothing past the window is replayed
		}
		if r.total < 0 {
			r.total = int(min(meta.NumPending, r.last-seq)) + 1
		}
		r.done++
		if seq == r.last || meta.NumPending == 0 {
			finished = true
		}
		if !r.sel.matches(msg.Data()) {
			progress(r.opts, r.done, r.total)
			continue
		}
		m := Message{Seq: seq, Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data(), Time: meta.Timestamp}
		item, err := one(ctx, r.h, m, r.opts, r.sum)
		r.sum.Items = append(r.sum.Items, item)
		if err != nil {
			r.errs = append(r.errs, err)
		}
		progress(r.opts, r.done, r.total)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
		return n, finished, fmt.Errorf("read %s: %w", r.sel.Stream, err)
	}
	return n, finished, nil
}

func progress(opts Options, done, total int) {
	if opts.Progress != nil {
		opts.Progress(done, total)
	}
}

func one(ctx context.Context, h Handler, m Message, opts Options, sum *Summary) (Item, error) {
	item := Item{Seq: m.Seq, Subject: m.Subject, Time: m.Time.UTC()}
	if sum.FirstSeq == 0 {
		sum.FirstSeq = m.Seq
	}
	sum.LastSeq = m.Seq
	sum.Selected++
	chk, err := h.Check(ctx, m)
	if err != nil {
		sum.Failed++
		item.Verdict, item.Error = "error", err.Error()
		return item, fmt.Errorf("seq %d: %w", m.Seq, err)
	}
	item.Record, item.Verdict, item.Reason = chk.Record, chk.Verdict, chk.Reason
	if chk.Verdict == VerdictSkip {
		sum.Skip++
	} else {
		sum.Apply++
	}
	if opts.DryRun {
		return item, nil
	}
	if chk.Verdict == VerdictSkip && !opts.Force {
		sum.Skipped++
		item.Outcome = "skipped"
		if sr, ok := h.(SkipRecorder); ok {
			sr.Skipped(ctx, m, chk)
		}
		return item, nil
	}
	outcome, err := h.Handle(ctx, m, opts.Force)
	item.Outcome = outcome
	if err != nil {
		sum.Failed++
		item.Error = err.Error()
		return item, fmt.Errorf("seq %d (%s): %w", m.Seq, chk.Record, err)
	}
	sum.Applied++
	return item, nil
}

// ParseTime reads --since/--until: RFC 3339, or a duration ("2h", "90m")
// meaning that long before now.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-11-28T10:00:00Z) nor a duration (2h)", s)
}

// ParseSeqRange reads --seq: "A-B", "A-" or "A".
func ParseSeqRange(s string) (from, to uint64, err error) {
	if s == "" {
		return 0, 0, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	from, err = strconv.ParseUint(strings.TrimSpace(a), 10, 64)
	if err != nil || from == 0 {
		return 0, 0, fmt.Errorf("--seq %q: want A-B, A- or A with stream sequence numbers", s)
	}
	if !isRange {
		return from, from, nil
	}
	if strings.TrimSpace(b) == "" {
		return from, 0, nil
	}
	to, err = strconv.ParseUint(strings.TrimSpace(b), 10, 64)
	if err != nil || to < from {
		return 0, 0, fmt.Errorf("--seq %q: want A-B with A <= B", s)
	}
	return from, to, nil
}
