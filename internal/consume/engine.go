// Package consume is the bridge's one JetStream consumer engine: a durable
// pull consumer, a worker pool that handles one record's messages one at a
// time and in stream order, and the mapping of a handler's classified
// errors onto acks, delayed NAKs, dead letters and pauses.
//
// The apply pipeline (SN_EVENTS -> the app) and the writeback (APP_EVENTS
// -> ServiceNow) plug a Handler into it: the handler only says which record
// a message changes and what handling it did; Classify decides what a
// failure means and the engine does the rest.
package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// Handler is what a pipeline plugs into the engine.
type Handler interface {
	// Key names the record msg changes. Messages with one key are handled
	// one at a time, in stream order; "" (the message cannot tell) is
	// handled on its own. Key runs on the fetching goroutine: keep it cheap.
	Key(msg jetstream.Msg) string
	// Handle does the message's work; nil acks it. A failure is classified
	// by Classify: build it with Permanent, RetryAfter or Pause, or return
	// the snclient, NATS or network error as it came.
	Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error
}

// Observer is what a Handler may also implement to hear what the engine
// decided about a message it could not handle, before the engine acts on
// it (the writeback tells the app that its change is pending or refused).
// Both run while the message is still held, so what they publish is stored
// before the message can come back or end.
type Observer interface {
	// Retrying: msg goes back to JetStream for a later delivery. d says why
	// (d.Reason: rate_limited, server_error, breaker_open, paused, ...);
	// err is the handler's error (nil for ReasonPaused: handed back
	// unhandled while fetching is paused). Called for every such retry;
	// not for a message waiting behind an earlier one of its record
	// (ReasonOrdering).
	Retrying(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d Decision, err error)
	// DeadLettered: msg is stored in BRIDGE_DLQ and about to be
	// terminated. An error keeps it instead: it is handed back and, failing
	// again, dead-lettered again under the same dead-letter id.
	DeadLettered(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d Decision, err error) error
}

// Metrics are the pipeline's own collectors the engine updates (they keep
// the names the pipeline has always had); a nil one is not updated.
type Metrics struct {
	Retries     *prometheus.CounterVec // one label: the Decision's Reason
	DeadLetters prometheus.Counter
	Redelivered prometheus.Counter
	Paused      prometheus.Gauge
	Latency     prometheus.Observer // seconds per Handle
}

// Config wires and tunes an Engine. JS, Stream, Consumer.Durable, Pipeline
// and Handler are required; zero tuning values take the defaults.
type Config struct {
	JS     jetstream.JetStream
	Stream string
	// Consumer names and filters the durable consumer (Durable,
	// Description, FilterSubject or FilterSubjects); the engine sets its
	// ack, delivery and pending settings from the Tuning.
	Consumer jetstream.ConsumerConfig
	// Pipeline names the dead letters' subject: bridge.dlq.<Pipeline>.
	Pipeline string
	Handler  Handler
	Tuning

	// NoDeadLetters is for a consumer without a dead-letter stream: a
	// message the engine would dead-letter is terminated (JetStream Term,
	// with a fixed reason: no handler error leaves the process) and logged.
	// Observer.DeadLettered is still called before the Term.
	NoDeadLetters bool
	// PriorityGroup names the priority group the pulls ask in, for a
	// Consumer with PriorityGroups. With PriorityPolicyPinned the engine
	// releases its pin when it stops, so a standby takes over at once
	// instead of after the consumer's PinnedTTL.
	PriorityGroup string

	Logger  *slog.Logger
	Metrics Metrics
	// Trace records the engine's decisions about messages the handler
	// could not handle (dead letters with their BRIDGE_DLQ sequence,
	// retries) in the decision log; nil records nothing.
	Trace *trace.Recorder
}

// Tuning are the engine's knobs, which a pipeline's configuration embeds.
type Tuning struct {
	Workers int // messages handled at once (default 4)
	Batch   int // messages pulled ahead (default 64)
	// MaxAckPending bounds messages delivered and not yet acked, retries
	// waiting for their delay included (default Workers*Batch*2).
	MaxAckPending int
	// AckWait is how long JetStream waits for an ack before it redelivers
	// (a crashed bridge); messages held longer are kept with in-progress
	// acks every AckWait/3 (default 30s).
	AckWait time.Duration
	// MaxDeliver dead-letters a message still failing at that many
	// deliveries (0: never; only permanent errors dead-letter).
	MaxDeliver int
	// RetryBase and RetryMax shape the jittered exponential delay before a
	// retry: between half and all of RetryBase*2^(deliveries-1), capped at
	// RetryMax (defaults 500ms, 1m). A peer's Retry-After replaces it, up
	// to RetryMax.
	RetryBase time.Duration
	RetryMax  time.Duration
	// PauseDefault is how long fetching pauses for a Pause that does not
	// say (default 5s).
	PauseDefault time.Duration
	// HandleTimeout bounds one Handle call (0: unbounded; in-progress acks
	// keep a long one owned).
	HandleTimeout time.Duration
	// StopGrace is how long handlers running when the engine stops may
	// finish before their context is cancelled (default 10s): an abandoned
	// call would only be redone by the next owner.
	StopGrace time.Duration
	// SetupWait is how long Run keeps trying to create its consumer while
	// JetStream does not answer (a stream leader being elected after a node
	// was lost, a restart) before it gives up (default 1m). A missing
	// stream is an error at once.
	SetupWait time.Duration
}

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.Batch <= 0 {
		c.Batch = 64
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = c.Workers * c.Batch * 2
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Minute
	}
	if c.PauseDefault <= 0 {
		c.PauseDefault = 5 * time.Second
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 10 * time.Second
	}
	if c.SetupWait <= 0 {
		c.SetupWait = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every missing part and invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.JS == nil || c.Stream == "" || c.Consumer.Durable == "" || c.Pipeline == "" || c.Handler == nil {
		errs = append(errs, errors.New("consume: JS, Stream, Consumer.Durable, Pipeline and Handler are all required"))
	}
	d := c.withDefaults()
	if d.MaxDeliver < 0 {
		errs = append(errs, fmt.Errorf("%s max deliver %d: must be 0 (never give up) or positive", c.Pipeline, d.MaxDeliver))
	}
	if d.MaxAckPending < d.Workers+d.Batch {
		errs = append(errs, fmt.Errorf("%s max ack pending %d: must be at least workers + batch (%d), or the workers starve", c.Pipeline, d.MaxAckPending, d.Workers+d.Batch))
	}
	if d.RetryMax < d.RetryBase {
		errs = append(errs, fmt.Errorf("%s retry max %v is below retry base %v", c.Pipeline, d.RetryMax, d.RetryBase))
	}
	return errors.Join(errs...)
}

// Engine consumes one stream through one handler. Build it with New; Run
// consumes until its context ends.
type Engine struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	order *order[item]
	// inFlight are the messages with a worker; they get in-progress acks
	// with the ones waiting in order.
	inFlight map[jetstream.Msg]struct{}
	// backlog are the messages pulled and not yet admitted, oldest first,
	// and admitting the one being handed to a worker; both get in-progress
	// acks too. The pull loop only appends here and never waits for a
	// worker: nats.go's subscription channel is one pull batch deep, and a
	// reconnect or a missed heartbeat makes it ask for a whole batch again
	// while the messages of the earlier request may still be in it or on
	// the way; a full channel drops them ("slow consumer") until the ack
	// wait. The backlog is bounded by the consumer's MaxAckPending, which
	// counts every message delivered and not yet acked.
	backlog   []jetstream.Msg
	admitting jetstream.Msg
	pulled    chan struct{} // the backlog grew

	pinID atomic.Pointer[string] // the pin JetStream gave this engine, if any

	pausedUntil atomic.Int64 // unix ns
	pauses      atomic.Int64 // pauses begun, so a pull knows a pause drained it
	drainPull   atomic.Pointer[func()]
}

// New validates cfg and builds the engine.
func New(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Engine{
		cfg: cfg, log: cfg.Logger.With("pipeline", cfg.Pipeline),
		order:    newOrder[item](cfg.AckWait, max(cfg.RetryBase/2, 10*time.Millisecond)),
		inFlight: map[jetstream.Msg]struct{}{},
		pulled:   make(chan struct{}, 1),
	}, nil
}

// ConsumerConfig is the durable consumer's definition. It sets no BackOff:
// a consumer BackOff makes JetStream wait BackOff[n] - AckWait + the delay
// for a NakWithDelay at the n-th delivery (31 s for a 1 s Retry-After with
// BackOff 30s, 1m), so the engine's own delays would not be honoured.
func (e *Engine) ConsumerConfig() jetstream.ConsumerConfig {
	c := e.cfg.Consumer
	c.AckPolicy = jetstream.AckExplicitPolicy
	c.AckWait = e.cfg.AckWait
	c.BackOff = nil
	c.MaxDeliver = -1
	if e.cfg.MaxDeliver > 0 {
		c.MaxDeliver = e.cfg.MaxDeliver
	}
	c.MaxAckPending = e.cfg.MaxAckPending
	c.DeliverPolicy = jetstream.DeliverAllPolicy
	return c
}

// item is a message on its way to a worker.
type item struct {
	msg  jetstream.Msg
	meta *jetstream.MsgMetadata
	key  string
}

// Run consumes until ctx ends, then stops pulling, hands back the messages
// not started and waits for the ones being handled (StopGrace at most). An
// error means the consumer could not be created within SetupWait (a missing
// stream, no JetStream): a setup to fix.
func (e *Engine) Run(ctx context.Context) error {
	cons, err := e.createConsumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("create consumer %s on stream %s: %w (does the stream exist? `bridge status` lists them)", e.cfg.Consumer.Durable, e.cfg.Stream, err)
	}
	// Handlers outlive the stop by StopGrace at most.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()

	ready := make(chan item, e.cfg.Workers)
	var workers, beating sync.WaitGroup
	for range e.cfg.Workers {
		workers.Go(func() { e.work(ctx, hctx, ready) })
	}
	beat := make(chan struct{})
	beating.Go(func() { e.heartbeat(beat) })
	fetched := make(chan struct{})
	var dispatching sync.WaitGroup
	dispatching.Go(func() { e.dispatch(ctx, ready, fetched) })

	e.fetch(ctx, cons)

	close(fetched)
	dispatching.Wait()
	close(ready)
	grace := time.AfterFunc(e.cfg.StopGrace, cancelHandlers)
	defer grace.Stop()
	workers.Wait()
	close(beat) // after the workers: a handler finishing after the stop stays owned
	beating.Wait()
	e.unpin()
	return nil
}

// createConsumer creates or updates the durable consumer, trying again with
// jittered backoff for SetupWait while JetStream does not answer: a cluster
// electing a stream leader after losing a node refuses for a few seconds,
// and a replica must not stop over that (with one sync owner, it would hand
// every record's work to another after a lease TTL, for nothing).
func (e *Engine) createConsumer(ctx context.Context) (jetstream.Consumer, error) {
	deadline := time.Now().Add(e.cfg.SetupWait)
	delay := 100 * time.Millisecond
	for {
		cons, err := e.js().CreateOrUpdateConsumer(ctx, e.cfg.Stream, e.ConsumerConfig())
		// A missing stream is a setup to fix, not a stall to wait out.
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return cons, err
		}
		wait := delay/2 + rand.N(delay/2+1)
		e.log.Warn("consumer not created yet; trying again", "consumer", e.cfg.Consumer.Durable, "stream", e.cfg.Stream,
			"retry_in", wait, "gives_up_at", deadline.Format(time.RFC3339), "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// unpin releases the consumer's pin at stop when this engine holds it.
func (e *Engine) unpin() {
	pin := e.pinID.Load()
	if pin == nil || e.cfg.PriorityGroup == "" || e.cfg.Consumer.PriorityPolicy != jetstream.PriorityPolicyPinned {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cons, err := e.js().Consumer(ctx, e.cfg.Stream, e.cfg.Consumer.Durable)
	if err != nil {
		return
	}
	for _, g := range cons.CachedInfo().PriorityGroups {
		if g.Group != e.cfg.PriorityGroup || g.PinnedClientID != *pin {
			continue
		}
		s, err := e.js().Stream(ctx, e.cfg.Stream)
		if err == nil {
			err = s.UnpinConsumer(ctx, e.cfg.Consumer.Durable, e.cfg.PriorityGroup)
		}
		if err != nil {
			e.log.Debug("unpin at stop failed; a standby takes over after the pinned TTL", "consumer", e.cfg.Consumer.Durable, "err", err)
		}
	}
}

func (e *Engine) js() jetstream.JetStream { return e.cfg.JS }

// fetch pulls messages and admits each until ctx ends, pausing while a
// handler said the peer refuses every call, and pulling again after the
// subscription fails (NATS reconnecting, the consumer deleted).
func (e *Engine) fetch(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		if d := e.pauseLeft(); d > 0 {
			e.setPaused(true)
			sleep(ctx, d)
			continue
		}
		e.setPaused(false)
		err := e.pull(ctx, cons)
		if err == nil || ctx.Err() != nil {
			continue
		}
		e.log.Warn("consumer interrupted; pulling again", "stream", e.cfg.Stream, "consumer", e.cfg.Consumer.Durable, "err", err)
		sleep(ctx, time.Second)
		if c, cerr := e.js().CreateOrUpdateConsumer(ctx, e.cfg.Stream, e.ConsumerConfig()); cerr == nil {
			cons = c
		} else if ctx.Err() == nil {
			e.log.Warn("consumer not recreated; retrying", "stream", e.cfg.Stream, "consumer", e.cfg.Consumer.Durable, "err", cerr)
		}
	}
	e.setPaused(false)
}

// pull runs one pull subscription until ctx ends or a pause starts (nil),
// or it fails.
func (e *Engine) pull(ctx context.Context, cons jetstream.Consumer) error {
	opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(e.cfg.Batch)}
	if e.cfg.PriorityGroup != "" {
		opts = append(opts, jetstream.PullPriorityGroup(e.cfg.PriorityGroup))
	}
	it, err := cons.Messages(opts...)
	if err != nil {
		return fmt.Errorf("pull from %s: %w", e.cfg.Stream, err)
	}
	pauses := e.pauses.Load()
	drain := it.Drain
	e.drainPull.Store(&drain)
	defer e.drainPull.Store(nil)
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	defer it.Stop()
	if e.pauseLeft() > 0 {
		it.Drain() // a pause began while this subscription was being made
	}
	for {
		msg, err := it.Next()
		if err != nil {
			switch {
			case errors.Is(err, jetstream.ErrMsgIteratorClosed) && (ctx.Err() != nil || e.pauses.Load() != pauses):
				return nil
			case errors.Is(err, jetstream.ErrNoHeartbeat):
				e.log.Debug("pull missed heartbeats; still waiting", "stream", e.cfg.Stream, "err", err)
				continue
			}
			return fmt.Errorf("pull from %s: %w", e.cfg.Stream, err)
		}
		if ctx.Err() != nil {
			_ = msg.Nak() // drained after the stop: redelivered to whoever runs next
			continue
		}
		if e.cfg.PriorityGroup != "" {
			if pin := msg.Headers().Get(pinHeader); pin != "" {
				if cur := e.pinID.Load(); cur == nil || *cur != pin {
					e.pinID.Store(&pin)
				}
			}
		}
		e.mu.Lock()
		e.backlog = append(e.backlog, msg)
		e.mu.Unlock()
		select {
		case e.pulled <- struct{}{}:
		default:
		}
	}
}

// dispatch admits the backlog's messages in the order they were pulled
// until fetched is closed (the pull loop has stopped), handing back what is
// left once ctx has ended.
func (e *Engine) dispatch(ctx context.Context, ready chan<- item, fetched <-chan struct{}) {
	for {
		e.mu.Lock()
		var msg jetstream.Msg
		if len(e.backlog) > 0 {
			msg = e.backlog[0]
			e.backlog[0] = nil
			e.backlog = e.backlog[1:]
			e.admitting = msg
		}
		e.mu.Unlock()
		if msg != nil {
			if ctx.Err() != nil {
				_ = msg.Nak() // pulled, never started: redelivered to whoever runs next
			} else {
				e.admit(ctx, msg, ready)
			}
			e.mu.Lock()
			e.admitting = nil
			e.mu.Unlock()
			continue
		}
		select {
		case <-e.pulled:
		case <-fetched:
			e.mu.Lock()
			rest := e.backlog
			e.backlog = nil
			e.mu.Unlock()
			for _, m := range rest {
				_ = m.Nak()
			}
			return
		}
	}
}

// admit orders one pulled message: to a worker, behind its record's
// current message, or back to JetStream until an earlier message of its
// record was retried.
func (e *Engine) admit(ctx context.Context, msg jetstream.Msg, ready chan<- item) {
	meta, err := msg.Metadata()
	if err != nil {
		e.log.Error("message without JetStream metadata; terminated", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	it := item{msg: msg, meta: meta, key: e.cfg.Handler.Key(msg)}
	e.mu.Lock()
	v, delay := e.order.admit(tracked[item]{msg: it, seq: meta.Sequence.Stream, key: it.key}, time.Now())
	if v == run {
		e.inFlight[msg] = struct{}{}
	}
	e.mu.Unlock()
	switch v {
	case queued:
		return
	case later:
		if e.cfg.MaxDeliver > 0 && int(meta.NumDelivered) >= e.cfg.MaxDeliver {
			cause := fmt.Errorf("gave up after %d deliveries waiting behind an earlier message of the same record that kept failing (see that one's retries)", meta.NumDelivered)
			if e.deadLetter(it, Decision{Action: ActionDeadLetter}, cause) {
				e.mu.Lock()
				e.order.forget(it.key, meta.Sequence.Stream)
				e.mu.Unlock()
				return
			}
			// Not stored: it comes back behind the earlier one and tries again.
		}
		e.countRetry(ReasonOrdering)
		e.nak(msg, delay)
		return
	}
	select {
	case ready <- it:
	case <-ctx.Done():
		e.abandon(it)
	}
}

// work handles messages, and after each the next waiting message of the
// same record, until ready is closed.
func (e *Engine) work(ctx, hctx context.Context, ready <-chan item) {
	for it := range ready {
		for next, ok := it, true; ok; {
			if ctx.Err() != nil {
				e.abandon(next)
				break
			}
			next, ok = e.handle(hctx, next)
		}
	}
}

// abandon hands a message not started back at stop, with the ones waiting
// behind it.
func (e *Engine) abandon(it item) {
	e.mu.Lock()
	delete(e.inFlight, it.msg)
	rest := e.order.drop(it.key)
	e.mu.Unlock()
	_ = it.msg.Nak()
	for _, q := range rest {
		_ = q.msg.msg.Nak()
	}
}

// handle runs the handler on one message and acts on its decision. It
// returns the record's next waiting message, if any.
func (e *Engine) handle(hctx context.Context, it item) (item, bool) {
	if e.cfg.Metrics.Redelivered != nil && it.meta.NumDelivered > 1 {
		e.cfg.Metrics.Redelivered.Inc()
	}
	if d := e.pauseLeft(); d > 0 {
		e.observeRetry(hctx, it, Decision{Action: ActionPause, Delay: d, Reason: ReasonPaused}, nil)
		e.retry(it, e.pauseDelay(d), ReasonPaused)
		return item{}, false
	}
	ctx, cancel := hctx, context.CancelFunc(func() {})
	if e.cfg.HandleTimeout > 0 {
		ctx, cancel = context.WithTimeout(hctx, e.cfg.HandleTimeout)
	}
	start := time.Now()
	err := e.cfg.Handler.Handle(ctx, it.msg, it.meta)
	cancel()
	if e.cfg.Metrics.Latency != nil {
		e.cfg.Metrics.Latency.Observe(time.Since(start).Seconds())
	}
	d := Classify(err)
	if d.Action != ActionAck && d.Action != ActionDeadLetter && e.cfg.MaxDeliver > 0 && int(it.meta.NumDelivered) >= e.cfg.MaxDeliver {
		err = fmt.Errorf("gave up after %d deliveries: %w", it.meta.NumDelivered, err)
		d.Action = ActionDeadLetter
	}
	switch d.Action {
	case ActionAck:
		if err := it.msg.Ack(); err != nil {
			e.log.Warn("ack failed; the message will be redelivered and found done", "subject", it.msg.Subject(), "seq", it.meta.Sequence.Stream, "err", err)
		}
	case ActionDeadLetter:
		if !e.deadLetter(it, d, err) {
			e.retry(it, e.cfg.RetryMax, ReasonNATS)
			return item{}, false
		}
	case ActionPause:
		p := min(d.Delay, e.cfg.RetryMax)
		if p <= 0 {
			p = e.cfg.PauseDefault
		}
		e.pause(p)
		e.logRetry(it, d.Reason, p, err)
		e.observeRetry(hctx, it, d, err)
		e.traceRetry(it, d, err)
		e.retry(it, p, d.Reason)
		return item{}, false
	default:
		delay := e.retryDelay(it.meta.NumDelivered, d.Delay)
		if d.Reason == ReasonCanceled && hctx.Err() != nil {
			delay = 0 // stopping: the next owner may take it at once
		}
		e.logRetry(it, d.Reason, delay, err)
		if d.Reason != ReasonCanceled || hctx.Err() == nil {
			e.observeRetry(hctx, it, d, err)
			e.traceRetry(it, d, err)
		}
		e.retry(it, delay, d.Reason)
		return item{}, false
	}
	e.mu.Lock()
	delete(e.inFlight, it.msg)
	next, ok := e.order.done(it.key)
	if ok {
		e.inFlight[next.msg.msg] = struct{}{}
	}
	e.mu.Unlock()
	return next.msg, ok
}

func (e *Engine) logRetry(it item, reason string, delay time.Duration, err error) {
	e.log.Warn("handling failed; will retry", "subject", it.msg.Subject(), "seq", it.meta.Sequence.Stream, "key", it.key,
		"reason", reason, "delivered", it.meta.NumDelivered, "retry_in", delay, "err", err)
}

// observeRetry tells the handler, when it is an Observer, that it.msg is
// about to be retried.
func (e *Engine) observeRetry(ctx context.Context, it item, d Decision, err error) {
	if o, ok := e.cfg.Handler.(Observer); ok {
		o.Retrying(ctx, it.msg, it.meta, d, err)
	}
}

// traceRetry records in the decision log that it.msg is handed back for
// a later attempt, and why.
func (e *Engine) traceRetry(it item, d Decision, err error) {
	if e.cfg.Trace == nil {
		return
	}
	reason := d.Reason
	if err != nil {
		reason += ": " + err.Error()
	}
	e.cfg.Trace.Consumer(it.msg, it.meta, trace.ConsumerDecision{Pipeline: e.cfg.Pipeline, Decision: trace.Retrying, Reason: reason, Hint: d.Hint, Status: d.Status})
}

// traceDeadLetter records in the decision log that it.msg was dead-lettered
// (dlqSeq: its BRIDGE_DLQ sequence, 0 when terminated without one): rejected
// when the peer refused it (a 4xx), dead_lettered otherwise.
func (e *Engine) traceDeadLetter(it item, d Decision, cause error, dlqSeq uint64) {
	if e.cfg.Trace == nil {
		return
	}
	decision := trace.DeadLettered
	if d.Status >= 400 && d.Status < 500 {
		decision = trace.Rejected
	}
	e.cfg.Trace.Consumer(it.msg, it.meta, trace.ConsumerDecision{Pipeline: e.cfg.Pipeline, Decision: decision, Reason: cause.Error(), Hint: d.Hint, Status: d.Status, DLQSeq: dlqSeq})
}

// retry hands the message back to be redelivered after delay, and the
// messages of its record waiting behind it to come back after it.
func (e *Engine) retry(it item, delay time.Duration, reason string) {
	e.mu.Lock()
	delete(e.inFlight, it.msg)
	back, delays := e.order.retried(it.key, it.meta.Sequence.Stream, delay, time.Now())
	e.mu.Unlock()
	e.countRetry(reason)
	e.nak(it.msg, delay)
	for i, q := range back {
		e.countRetry(ReasonOrdering)
		e.nak(q.msg.msg, delays[i])
	}
}

func (e *Engine) nak(msg jetstream.Msg, delay time.Duration) {
	var err error
	if delay > 0 {
		err = msg.NakWithDelay(delay)
	} else {
		err = msg.Nak()
	}
	if err != nil {
		e.log.Warn("nak failed; JetStream redelivers after the ack wait", "subject", msg.Subject(), "ack_wait", e.cfg.AckWait, "err", err)
	}
}

func (e *Engine) countRetry(reason string) {
	if e.cfg.Metrics.Retries != nil {
		e.cfg.Metrics.Retries.WithLabelValues(reason).Inc()
	}
}

func (e *Engine) retryDelay(delivered uint64, retryAfter time.Duration) time.Duration {
	return RetryDelay(e.cfg.RetryBase, e.cfg.RetryMax, delivered, retryAfter)
}

// RetryDelay is the wait before the next attempt: the peer's Retry-After
// when it gave one (never earlier, with up to a tenth more so that many
// retries do not land at once), else between half and all of
// base*2^(delivered-1); both capped at maxDelay. Exported for a consumer
// that retries in place (an ordered consumer cannot hand a message back).
func RetryDelay(base, maxDelay time.Duration, delivered uint64, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		d := min(retryAfter, maxDelay)
		return d + rand.N(d/10+1)
	}
	d := base
	for i := uint64(1); i < delivered && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	return d/2 + rand.N(d/2+1)
}

// pauseDelay is when a message handed back during a pause comes back:
// after the pause, spread over a tenth of it.
func (e *Engine) pauseDelay(left time.Duration) time.Duration {
	return left + rand.N(left/10+1)
}

// deadLetter stores the message in BRIDGE_DLQ with why, then terminates
// it. It returns false when the dead letter could not be stored: the
// message is not terminated and the caller hands it back.
func (e *Engine) deadLetter(it item, d Decision, cause error) bool {
	if e.cfg.NoDeadLetters {
		return e.terminate(it, d, cause)
	}
	out := dlq.NewMessage(e.cfg.Pipeline, it.msg, it.meta, dlq.Failure{Reason: cause.Error(), Status: d.Status, Hint: d.Hint, Response: d.Response})
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := e.js().PublishMsg(pctx, out)
	if err != nil {
		e.log.Error("dead letter not stored; the message stays in its stream for a retry", "subject", it.msg.Subject(), "seq", it.meta.Sequence.Stream, "err", err)
		return false
	}
	if o, ok := e.cfg.Handler.(Observer); ok {
		if err := o.DeadLettered(pctx, it.msg, it.meta, d, cause); err != nil {
			// Stored under its dead-letter id, so storing it again on the
			// next delivery keeps one copy.
			e.log.Error("dead letter stored but its handler could not finish it; the message stays in its stream for a retry",
				"subject", it.msg.Subject(), "seq", it.meta.Sequence.Stream, "err", err)
			return false
		}
	}
	if e.cfg.Metrics.DeadLetters != nil {
		e.cfg.Metrics.DeadLetters.Inc()
	}
	e.traceDeadLetter(it, d, cause, ack.Sequence)
	e.log.Error("message dead-lettered (see `bridge dlq ls`)", "subject", it.msg.Subject(), "seq", it.meta.Sequence.Stream, "key", it.key,
		"status", d.Status, "reason", cause.Error(), "hint", d.Hint)
	if err := it.msg.Term(); err != nil {
		e.log.Warn("term failed; the message will be redelivered and dead-lettered again under the same id", "seq", it.meta.Sequence.Stream, "err", err)
	}
	return true
}

// terminate ends a message for good without a dead letter (NoDeadLetters).
// It returns false when the handler's Observer could not finish it: the
// message is not terminated and the caller hands it back.
func (e *Engine) terminate(it item, d Decision, cause error) bool {
	if o, ok := e.cfg.Handler.(Observer); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := o.DeadLettered(ctx, it.msg, it.meta, d, cause)
		cancel()
		if err != nil {
			e.log.Error("message refused for good but its handler could not finish it; the message stays in its stream for a retry",
				"subject", it.msg.Subject(), "seq", it.meta.Sequence.Stream, "err", err)
			return false
		}
	}
	e.traceDeadLetter(it, d, cause, 0)
	e.log.Error("message refused for good; terminated (no retry can change it)", "subject", it.msg.Subject(), "seq", it.meta.Sequence.Stream, "key", it.key,
		"reason", cause.Error(), "hint", d.Hint)
	if err := it.msg.TermWithReason(e.cfg.Pipeline + ": the handler refused the message for good"); err != nil {
		e.log.Warn("term failed; the message will be redelivered and refused again", "seq", it.meta.Sequence.Stream, "err", err)
	}
	return true
}

// pause stops fetching for d and hands back what was pulled ahead.
func (e *Engine) pause(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		cur := e.pausedUntil.Load()
		if cur >= until || e.pausedUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	e.pauses.Add(1)
	e.setPaused(true)
	if drain := e.drainPull.Load(); drain != nil {
		(*drain)()
	}
}

func (e *Engine) pauseLeft() time.Duration {
	return time.Until(time.Unix(0, e.pausedUntil.Load()))
}

func (e *Engine) setPaused(on bool) {
	if e.cfg.Metrics.Paused == nil {
		return
	}
	if on {
		e.cfg.Metrics.Paused.Set(1)
	} else {
		e.cfg.Metrics.Paused.Set(0)
	}
}

// heartbeat sends in-progress acks for every message the engine holds
// (with a worker, or waiting behind another of its record), so none is
// redelivered while it is still owned, and drops lapsed retry marks.
func (e *Engine) heartbeat(stop <-chan struct{}) {
	t := time.NewTicker(max(e.cfg.AckWait/3, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		// Under the lock: a worker takes a message out of the engine's
		// hands (under it too) before its NAK, so no in-progress ack can
		// follow a NakWithDelay and reset its delay to the ack wait.
		e.mu.Lock()
		for _, w := range e.order.waiting() {
			_ = w.msg.InProgress()
		}
		for m := range e.inFlight {
			_ = m.InProgress()
		}
		for _, m := range e.backlog {
			_ = m.InProgress()
		}
		if e.admitting != nil {
			_ = e.admitting.InProgress()
		}
		e.order.sweep(time.Now())
		e.mu.Unlock()
	}
}

// pinHeader carries the pin id of a pinned priority group's pulls.
const pinHeader = "Nats-Pin-Id"

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
