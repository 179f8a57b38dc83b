package replay

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/events"
)

// Apply replays SN_EVENTS through the apply pipeline's per-event path, the
// code its durable consumer runs for each message.
type Apply struct{ R *apply.Runner }

func decodeSN(m Message) (*events.SNEvent, error) {
	var ev events.SNEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return nil, fmt.Errorf("decode %s: %w", m.Subject, err)
	}
	return &ev, nil
}

func snRecord(ev *events.SNEvent) string {
	return fmt.Sprintf("%s/%s #%d %s", ev.Table, ev.SysID, ev.SysModCount, ev.Action)
}

// Check asks the apply path's version guard (bridge_state).
func (h Apply) Check(ctx context.Context, m Message) (Check, error) {
	ev, err := decodeSN(m)
	if err != nil {
		return Check{Record: "?"}, err
	}
	c := Check{Record: snRecord(ev), Verdict: VerdictApply}
	stale, applied, err := h.R.Stale(ctx, ev)
	if err != nil {
		return c, err
	}
	if stale {
		c.Verdict, c.Reason = VerdictSkip, fmt.Sprintf("version %d already applied", applied)
	}
	return c, nil
}

// Handle applies the event; force goes around the guard. The decision log
// records the outcome with the source replay.
func (h Apply) Handle(ctx context.Context, m Message, force bool) (string, error) {
	ev, err := decodeSN(m)
	if err != nil {
		return "", err
	}
	out, err := h.R.Replay(ctx, ev, m.Seq, m.Time, force)
	return string(out), err
}

// Skipped records in the decision log that the replay left the event to
// the version guard (stale, source replay).
func (h Apply) Skipped(_ context.Context, m Message, chk Check) {
	if ev, err := decodeSN(m); err == nil {
		h.R.RecordReplaySkip(ev, m.Seq, m.Time, chk.Reason)
	}
}
