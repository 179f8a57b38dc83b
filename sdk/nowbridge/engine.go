package nowbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/consume"
)

// Consume and durable Results run on the bridge's own consumer engine
// (internal/consume): messages of one record (one key) are handled one at a
// time and in stream order, a retried message holds back the later ones of
// its record, and every message held is kept owned with in-progress acks.
// What is the SDK's: decoding a message, the version guard, mapping the
// app's Permanent and RetryAfter onto the engine's, terminating instead of
// dead-lettering (an app has no dead-letter stream), and the consumer's
// pinned priority group, which lets one instance of the app consume at a
// time so that order holds across instances too.

// pinGroup is the priority group of the SDK's durable consumers.
const pinGroup = "nowbridge"

// handler adapts a decoder and an app handler to consume.Handler.
type handler[T any] struct {
	// decode parses a message and names its record ("" for none: no order).
	decode func(jetstream.Msg) (T, string, error)
	handle func(context.Context, T) error
	// describe adds the message's ids to a log line.
	describe func(T) []any
	log      *slog.Logger
}

// Key decodes the message for its record; one that cannot be decoded has
// none, and Handle refuses it.
func (h *handler[T]) Key(msg jetstream.Msg) string {
	_, key, err := h.decode(msg)
	if err != nil {
		return ""
	}
	return key
}

// Handle runs the app's handler; the engine logs what it then does (the
// retry with its delay, or the Term).
func (h *handler[T]) Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	v, _, err := h.decode(msg)
	if err != nil {
		return consume.Permanent(err, "fix the publisher: no retry can change a message that cannot be decoded")
	}
	err = h.call(ctx, v)
	switch {
	case err == nil:
		return nil
	case IsPermanent(err):
		h.log.Debug("nowbridge: handler refused the message for good", append(h.describe(v), "seq", meta.Sequence.Stream)...)
		return consume.Permanent(err, "")
	}
	ra, given := retryAfterOf(err)
	if given {
		ra = max(ra, time.Nanosecond) // the app's wait, even "none", replaces the backoff
	}
	return consume.RetryAfter(err, ra)
}

// call runs the handler, turning a panic into an error to retry.
func (h *handler[T]) call(ctx context.Context, v T) (err error) {
	defer func() {
		if r := recover(); r != nil {
			h.log.Error("nowbridge: handler panicked; will retry", append(h.describe(v), "panic", r, "stack", string(debug.Stack()))...)
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h.handle(ctx, v)
}

// durableConsumer is one of the SDK's durable consumers.
type durableConsumer[T any] struct {
	js                  *Client
	stream, name, desc  string
	filters             []string
	workers             int
	ackWait, takeover   time.Duration
	retryBase, retryMax time.Duration
	h                   *handler[T]
}

// run consumes until ctx ends, then stops pulling, hands back what it holds
// and waits for the handlers running (10s at most).
func (d durableConsumer[T]) run(ctx context.Context) error {
	batch := batchSize(d.workers)
	e, err := consume.New(consume.Config{
		JS: d.js.js, Stream: d.stream, Pipeline: "nowbridge-" + d.name, Handler: d.h,
		Consumer: jetstream.ConsumerConfig{
			Durable: d.name, Description: d.desc, FilterSubjects: d.filters,
			PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{pinGroup}, PinnedTTL: d.takeover,
		},
		Tuning: consume.Tuning{
			Workers: d.workers, Batch: batch, MaxAckPending: 4 * batch,
			AckWait: d.ackWait, RetryBase: d.retryBase, RetryMax: d.retryMax,
		},
		NoDeadLetters: true,
		PriorityGroup: pinGroup,
		Logger:        d.h.log,
	})
	if err != nil {
		return fmt.Errorf("nowbridge: %w", err)
	}
	err = e.Run(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("consumer %s: stream %s does not exist; the bridge creates it at start, so start the bridge (or point this app at the bridge's NATS server): %w", d.name, d.stream, jetstream.ErrStreamNotFound)
	}
	return err
}

// batchSize is how many messages one pull asks for: enough to keep the
// workers busy while a record's messages wait behind each other.
func batchSize(workers int) int { return min(max(4*workers, 32), 512) }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// truncate cuts s to at most n bytes without splitting a character.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
