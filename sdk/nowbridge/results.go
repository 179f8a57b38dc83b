package nowbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

// ResultHandler takes one outcome of one of the app's changes (show the
// ServiceNow number and link, mark the record synced, pending or rejected
// with the reason). Its errors are treated as ApplyHandler's.
type ResultHandler func(ctx context.Context, r *Result) error

// ResultsOptions tunes Results; the zero value follows new results with an
// ordered consumer.
type ResultsOptions struct {
	// Durable names a durable consumer on BRIDGE_RESULTS: JetStream keeps
	// its position, so the app misses no result across restarts, and each
	// result is acknowledged after the handler returned nil (recommended
	// for an app that records sync state). Instances sharing the name take
	// turns as Consume's do. Empty: an ordered consumer, which keeps no state
	// on the server and starts at Since (a live view).
	Durable string
	// Since is where an ordered consumer starts: results stored from this
	// time on (zero: only results published from now on). Ignored with
	// Durable, which starts at the stream's first result.
	Since time.Time
	// Entities limits the results to these entities (default: all).
	Entities []string
	// Workers is how many handlers run at once with Durable (default 4);
	// the results of one app record are handled one at a time, in order.
	// An ordered consumer has one.
	Workers int
	// AckWait, RetryBase, RetryMax and Takeover are as in ConsumeOptions.
	AckWait, RetryBase, RetryMax, Takeover time.Duration
	// Logger overrides the client's.
	Logger *slog.Logger
}

// Results follows the outcomes of the app's changes: it consumes
// bridge.result.> (stream BRIDGE_RESULTS, written by the bridge's writeback)
// and calls h for each, until ctx ends; it returns nil after a clean stop.
//
// Every app change gets one final result (created, updated, unchanged,
// stale, conflict or rejected) and, before it, at most one retrying result
// when the change waits on ServiceNow. Results of one record arrive in the
// order the bridge decided them. A result is published once per (external
// id, version, outcome) whatever the redeliveries, but the handler should
// still be idempotent: a durable consumer redelivers a result whose ack was
// lost.
//
// With a durable consumer, a failed handler's result comes back after a
// growing delay (NakWithDelay), holding back later results of the same
// record; Permanent terminates it. With an ordered consumer, the handler is
// retried in place with the same delays (later results wait), and Permanent
// skips the result.
func (c *Client) Results(ctx context.Context, h ResultHandler, opts ResultsOptions) error {
	if h == nil {
		return errors.New("nowbridge: Results needs a handler")
	}
	co := ConsumeOptions{
		Durable: opts.Durable, Workers: opts.Workers, AckWait: opts.AckWait,
		RetryBase: opts.RetryBase, RetryMax: opts.RetryMax, Takeover: opts.Takeover, Logger: opts.Logger,
	}
	if co.Workers <= 0 {
		co.Workers = 4
	}
	durable := co.Durable
	co = co.withDefaults(c)
	filters, err := entitySubjects(opts.Entities, wire.ResultSubject)
	if err != nil {
		return err
	}
	describe := func(r *Result) []any {
		return []any{"entity", r.Entity, "external_id", r.ExternalID, "version", r.Version, "outcome", r.Outcome}
	}
	if durable == "" {
		return c.followResults(ctx, h, filters, opts.Since, co, describe)
	}
	if err := checkDurable(durable); err != nil {
		return err
	}
	return durableConsumer[*Result]{
		js: c, stream: wire.StreamResults, name: durable, filters: filters,
		desc:    "nowbridge SDK: outcomes of the app's changes",
		workers: co.Workers, ackWait: co.AckWait, takeover: co.Takeover,
		retryBase: co.RetryBase, retryMax: co.RetryMax,
		h: &handler[*Result]{decode: decodeResult, describe: describe, handle: h, log: co.Logger},
	}.run(ctx)
}

// followResults runs an ordered consumer: no acks, one handler at a time,
// retried in place.
func (c *Client) followResults(ctx context.Context, h ResultHandler, filters []string, since time.Time, o ConsumeOptions, describe func(*Result) []any) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: filters, DeliverPolicy: jetstream.DeliverNewPolicy}
	if !since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := c.js.OrderedConsumer(ctx, wire.StreamResults, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("follow results: stream %s does not exist; the bridge creates it at start, so start the bridge (or point this app at the bridge's NATS server): %w", wire.StreamResults, err)
		}
		return fmt.Errorf("follow results on %s: %w", wire.StreamResults, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow results on %s: %w", wire.StreamResults, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	hd := &handler[*Result]{describe: describe, handle: h, log: o.Logger}
	for {
		msg, err := it.Next()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, jetstream.ErrNoHeartbeat):
				continue
			}
			return fmt.Errorf("follow results on %s: %w", wire.StreamResults, err)
		}
		r, _, err := decodeResult(msg)
		if err != nil {
			o.Logger.Error("nowbridge: result cannot be decoded; skipped", "subject", msg.Subject(), "err", err)
			continue
		}
		for attempt := uint64(1); ctx.Err() == nil; attempt++ {
			err := hd.call(ctx, r)
			if err == nil {
				break
			}
			if IsPermanent(err) {
				o.Logger.Error("nowbridge: handler refused the result for good; skipped", append(describe(r), "err", err)...)
				break
			}
			ra, given := retryAfterOf(err)
			if given {
				ra = max(ra, time.Nanosecond)
			}
			d := consume.RetryDelay(o.RetryBase, o.RetryMax, attempt, ra)
			o.Logger.Warn("nowbridge: result handler failed; will retry", append(describe(r), "attempt", attempt, "retry_in", d, "err", err)...)
			sleep(ctx, d)
		}
	}
}

// decodeResult parses a bridge.result.<entity>.<outcome> message; its
// record is the app's (entity and external id).
func decodeResult(msg jetstream.Msg) (*Result, string, error) {
	r := &Result{}
	if err := json.Unmarshal(msg.Data(), r); err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", msg.Subject(), err)
	}
	if entity, outcome, ok := subjectParts(msg.Subject(), "bridge.result."); ok {
		if r.Entity == "" {
			r.Entity = entity
		}
		if r.Outcome == "" {
			r.Outcome = outcome
		}
	}
	key := ""
	if r.ExternalID != "" {
		key = r.Entity + "/" + r.ExternalID
	}
	return r, key, nil
}
