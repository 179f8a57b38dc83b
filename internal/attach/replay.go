package attach

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/replay"
)

// Replay is `bridge replay`'s path for attachment messages: the live
// consumers' own handling (HandleSN, HandleApp and the app's result), so a
// replayed window changes what it would change live — nothing, when both
// sides already hold what the messages say. Other messages go to Next.
type Replay struct {
	S    *Syncer
	Next replay.Handler // the stream's record path (replay.Apply, replay.Writeback); nil: attachments only
}

func isSNAttachment(subject string) bool {
	return strings.HasPrefix(subject, "sn."+events.TableAttachment+".")
}

func (h Replay) mine(m replay.Message) bool {
	return isSNAttachment(m.Subject) || events.IsAttachmentSubject(m.Subject)
}

// Check says what the attachment's record already holds: a copy known or
// removed is skipped (handled before); anything else would be handled.
func (h Replay) Check(ctx context.Context, m replay.Message) (replay.Check, error) {
	if !h.mine(m) {
		if h.Next == nil {
			return replay.Check{Record: m.Subject, Verdict: replay.VerdictSkip, Reason: "not an attachment message"}, nil
		}
		return h.Next.Check(ctx, m)
	}
	if isSNAttachment(m.Subject) {
		var ev events.SNEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return replay.Check{Record: "?"}, fmt.Errorf("decode %s: %w", m.Subject, err)
		}
		a, err := snFileOf(&ev)
		if err != nil {
			return replay.Check{Record: "?"}, err
		}
		c := replay.Check{Record: fmt.Sprintf("%s/%s attachment %s %s", a.Table, a.SysID, a.ID, ev.Action), Verdict: replay.VerdictApply}
		rec, _, err := h.S.files.load(ctx, a.Table, a.SysID)
		if err != nil {
			return c, err
		}
		switch {
		case rec.removedHas(sideSN, a.ID):
			c.Verdict, c.Reason = replay.VerdictSkip, "removed since"
		case ev.Action == events.ActionInsert && rec.bySN(a.ID) != nil:
			c.Verdict, c.Reason = replay.VerdictSkip, "already synced"
		}
		return c, nil
	}
	am, err := decodeAppMessage(m.Subject, m.Data)
	if err != nil {
		return replay.Check{Record: "?"}, err
	}
	return replay.Check{Record: fmt.Sprintf("%s/%s attachment %s %s", am.Entity, am.ExternalID, resultKey(am), am.Action), Verdict: replay.VerdictApply}, nil
}

// Handle handles the message as the live consumer does (force changes
// nothing: the files' state, not a version guard, decides).
func (h Replay) Handle(ctx context.Context, m replay.Message, force bool) (string, error) {
	if !h.mine(m) {
		if h.Next == nil {
			return "skipped", nil
		}
		return h.Next.Handle(ctx, m, force)
	}
	if isSNAttachment(m.Subject) {
		var ev events.SNEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return "", fmt.Errorf("decode %s: %w", m.Subject, err)
		}
		out, err := h.S.HandleSN(ctx, &ev)
		return string(out), err
	}
	am, err := decodeAppMessage(m.Subject, m.Data)
	if err != nil {
		return "", err
	}
	r, err := h.S.HandleApp(ctx, am)
	if err != nil {
		return "", err
	}
	if err := h.S.results.publish(ctx, r, resultID(am, r, m.Header)); err != nil {
		return r.Outcome, err
	}
	return r.Outcome, nil
}

// Skipped passes the version guard's skips of record messages on to Next,
// which records them in the decision log (replay.SkipRecorder).
func (h Replay) Skipped(ctx context.Context, m replay.Message, chk replay.Check) {
	if sr, ok := h.Next.(replay.SkipRecorder); ok && !h.mine(m) {
		sr.Skipped(ctx, m, chk)
	}
}
