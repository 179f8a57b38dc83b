package replay

import (
	"context"
	"fmt"

	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// Writeback replays APP_EVENTS through the writeback's Writer, the code the
// live consumer runs for each message.
type Writeback struct{ W *outbound.Writer }

// Check asks the writeback's version guard (its per-entity bookmark).
func (h Writeback) Check(ctx context.Context, m Message) (Check, error) {
	ch, err := outbound.DecodeChange(m.Subject, m.Data)
	if err != nil {
		return Check{Record: "?"}, err
	}
	c := Check{Record: fmt.Sprintf("%s/%s v%d", ch.Entity, ch.ExternalID, ch.Version), Verdict: VerdictApply}
	stale, written, err := h.W.Stale(ctx, ch)
	if err != nil {
		return c, err
	}
	if stale {
		c.Verdict, c.Reason = VerdictSkip, fmt.Sprintf("version %d already written back", written)
	}
	return c, nil
}

// Handle applies the change; force goes around the guard. The decision log
// records the outcome with the source replay.
func (h Writeback) Handle(ctx context.Context, m Message, force bool) (string, error) {
	ch, err := outbound.DecodeChange(m.Subject, m.Data)
	if err != nil {
		return "", err
	}
	ch.Stored, ch.Source = m.Time, trace.SourceReplay
	var res outbound.Result
	if force {
		res, err = h.W.ApplyForced(ctx, ch)
	} else {
		res, err = h.W.Apply(ctx, ch)
	}
	// The decision log names the message replayed; Apply itself must not
	// see its sequence (the live consumer's redelivery rule keys on it).
	ch.Seq = m.Seq
	if err != nil {
		h.W.RecordFailed(ch, err)
	} else {
		h.W.Record(ch, res, 0)
	}
	return string(res.Outcome), err
}

// Skipped records in the decision log that the replay left the change to
// the version guard (stale, source replay).
func (h Writeback) Skipped(_ context.Context, m Message, chk Check) {
	if ch, err := outbound.DecodeChange(m.Subject, m.Data); err == nil {
		ch.Stored, ch.Source, ch.Seq = m.Time, trace.SourceReplay, m.Seq
		h.W.RecordReplaySkip(ch, chk.Reason)
	}
}
