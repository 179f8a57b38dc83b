package outbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
)

// Pipeline is the DLQ pipeline name: dead letters go to bridge.dlq.writeback.
const Pipeline = "writeback"

// Deps are the parts the writeback talks to.
type Deps struct {
	API     TableAPI
	Mapping Mapping
	States  States
	Links   Links
	// StateKV is the bridge_state bucket, where the writeback keeps its
	// per-entity-id version bookmark (keys "writeback.<entity>.<id>").
	StateKV jetstream.KeyValue
	Dedupe  *dedupe.Cache
	// CloseCodes picks the close code of resolving writes. Nil: one reading
	// the instance's choices through API (which must then be a
	// ChoiceReader, as snclient.Client is), overridden by Config.CloseCode.
	CloseCodes *CloseCodes
}

// NewWriter builds the part that applies one change; the consumer and
// `bridge replay --stream app` share it.
func NewWriter(d Deps, cfg Config) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.API == nil || d.Mapping == nil || d.States == nil || d.Links == nil || d.StateKV == nil || d.Dedupe == nil {
		return nil, errors.New("outbound: API, Mapping, States, Links, StateKV and Dedupe are all required")
	}
	cfg = cfg.withDefaults()
	cc := d.CloseCodes
	if cc == nil {
		cr, ok := d.API.(ChoiceReader)
		if !ok {
			return nil, errors.New("outbound: CloseCodes is required when API cannot read choices")
		}
		cc = NewCloseCodes(cr, cfg.CloseCode, 0, cfg.Logger)
	}
	return &Writer{
		cfg: cfg, api: d.API, mapping: d.Mapping, states: d.States, links: d.Links,
		progress: progressStore{kv: d.StateKV}, dedupe: d.Dedupe, closeCodes: cc, log: cfg.Logger, metrics: newMetrics(cfg.Registerer),
	}, nil
}

// CheckCloseCodes reads the close code choices of every mapped table with
// a close rule and returns the code each will use, table by table. An error
// wrapping ErrCloseCode means the instance proves the configuration wrong
// (BRIDGE_CLOSE_CODE not an active choice): writes that resolve would all
// fail. Other errors are reads that failed (unreachable, hidden).
func (w *Writer) CheckCloseCodes(ctx context.Context, tables []string) (map[string]string, error) {
	out := map[string]string{}
	var errs []error
	for _, t := range tables {
		rule := w.mapping.Close(t)
		if rule == nil {
			continue
		}
		code, err := w.closeCodes.Validate(ctx, t, rule)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[t] = code
	}
	return out, errors.Join(errs...)
}

// Consumer is the durable pull consumer on APP_EVENTS.
type Consumer struct {
	w    *Writer
	js   jetstream.JetStream
	cfg  Config
	log  *slog.Logger
	seed maphash.Seed

	pausedUntil atomic.Int64 // unix ns; fetching and writing wait while the breaker is open
}

// NewConsumer builds the writeback consumer; Run starts it.
func NewConsumer(js jetstream.JetStream, w *Writer) *Consumer {
	return &Consumer{w: w, js: js, cfg: w.cfg, log: w.log, seed: maphash.MakeSeed()}
}

// Writer returns the consumer's writer.
func (c *Consumer) Writer() *Writer { return c.w }

// ConsumerConfig is the durable consumer's definition.
func (c *Consumer) ConsumerConfig() jetstream.ConsumerConfig {
	maxDeliver := -1
	if c.cfg.MaxDeliver > 0 {
		maxDeliver = c.cfg.MaxDeliver
	}
	return jetstream.ConsumerConfig{
		Durable:       c.cfg.Durable,
		Description:   "SaaS changes written back to ServiceNow (nowbridge writeback)",
		FilterSubject: events.AppSubjects,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		MaxDeliver:    maxDeliver,
		MaxAckPending: c.cfg.Workers * c.cfg.Batch * 2,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// Run consumes until ctx ends, then waits for changes in flight to finish.
func (c *Consumer) Run(ctx context.Context) error {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, events.StreamApp, c.ConsumerConfig())
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: a clean stop, as the apply consumer has it
		}
		return fmt.Errorf("create writeback consumer on %s: %w", events.StreamApp, err)
	}
	queues := make([]chan jetstream.Msg, c.cfg.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan jetstream.Msg, c.cfg.Batch)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.work(ctx, queues[i])
		}()
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()
	for ctx.Err() == nil {
		if d := c.pauseLeft(); d > 0 {
			c.sleep(ctx, d)
			continue
		}
		batch, err := cons.Fetch(c.cfg.Batch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("writeback fetch failed; retrying", "err", err)
				c.sleep(ctx, time.Second)
			}
			continue
		}
		for msg := range batch.Messages() {
			q := queues[c.shard(msg)]
			select {
			case q <- msg:
			case <-ctx.Done():
				_ = msg.Nak() // redelivered to whoever runs next
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			c.log.Debug("writeback fetch ended early", "err", err)
		}
	}
	return nil
}

// shard sends one entity id always to the same worker, so its versions are
// written in order.
func (c *Consumer) shard(msg jetstream.Msg) int {
	var probe struct {
		ExternalID string `json:"external_id"`
	}
	_ = json.Unmarshal(msg.Data(), &probe)
	var h maphash.Hash
	h.SetSeed(c.seed)
	_, _, entity, _ := splitAppSubject(msg.Subject())
	h.WriteString(entity)
	h.WriteString(probe.ExternalID)
	return int(h.Sum64() % uint64(c.cfg.Workers))
}

func splitAppSubject(subject string) (kind, entity, action string, ok bool) {
	kind, entity, action, ok = events.ParseSubject(subject)
	return kind, entity, action, ok && kind == "app"
}

func (c *Consumer) pauseLeft() time.Duration {
	return time.Until(time.Unix(0, c.pausedUntil.Load()))
}

func (c *Consumer) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// block is a change of one entity id handed back for retry: later changes
// of the same id wait behind it rather than overtaking it, until it is
// written or the block lapses (another bridge instance may have taken it).
type block struct {
	seq     uint64
	retryAt time.Time // when JetStream redelivers the blocked change
	until   time.Time // when the block lapses
}

// work handles one shard's messages in order.
func (c *Consumer) work(ctx context.Context, q <-chan jetstream.Msg) {
	blocked := map[string]block{}
	for msg := range q {
		if ctx.Err() != nil {
			_ = msg.Nak()
			continue
		}
		c.handle(ctx, msg, blocked)
	}
}

func (c *Consumer) handle(ctx context.Context, msg jetstream.Msg, blocked map[string]block) {
	meta, err := msg.Metadata()
	if err != nil {
		c.log.Error("writeback message without metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	seq := meta.Sequence.Stream
	ch, err := decodeChange(msg.Subject(), msg.Data())
	if err != nil {
		c.deadLetter(ctx, msg, meta, err)
		return
	}
	ch.Stored = meta.Timestamp
	key := ch.Entity + "\x00" + ch.ExternalID
	if b, ok := blocked[key]; ok && seq > b.seq {
		if time.Now().Before(b.until) {
			// An earlier change of this id is waiting for a retry: keep
			// order, and come back just after it.
			_ = msg.NakWithDelay(max(time.Until(b.retryAt), 0) + c.cfg.RetryBase/2)
			return
		}
		delete(blocked, key)
	}
	for d := c.pauseLeft(); d > 0 && ctx.Err() == nil; d = c.pauseLeft() {
		_ = msg.InProgress()
		c.sleep(ctx, min(d, c.cfg.AckWait/3))
	}
	if ctx.Err() != nil {
		_ = msg.Nak()
		return
	}
	stop := keepAlive(msg, c.cfg.AckWait/3)
	start := time.Now()
	res, err := c.w.Apply(ctx, ch)
	stop()
	c.w.metrics.latency.Observe(time.Since(start).Seconds())
	if err == nil {
		delete(blocked, key)
		c.w.metrics.messages.WithLabelValues(string(res.Outcome)).Inc()
		c.log.Debug("app change written back", "subject", msg.Subject(), "seq", seq, "external_id", ch.ExternalID,
			"outcome", string(res.Outcome), "table", res.Table, "sys_id", res.SysID, "sys_mod_count", res.ModCount)
		if err := msg.Ack(); err != nil {
			c.log.Warn("ack failed; the change will be redelivered and found written", "seq", seq, "err", err)
		}
		return
	}
	switch class := classify(err); {
	case class.permanent:
		delete(blocked, key)
		c.deadLetter(ctx, msg, meta, err)
	case c.cfg.MaxDeliver > 0 && int(meta.NumDelivered) >= c.cfg.MaxDeliver:
		delete(blocked, key)
		c.deadLetter(ctx, msg, meta, fmt.Errorf("gave up after %d deliveries: %w", meta.NumDelivered, err))
	default:
		delay := c.backoff(meta.NumDelivered)
		if class.breakerOpen {
			d := c.cfg.BreakerPause
			if class.pause > 0 {
				d = min(class.pause, c.cfg.RetryMax)
			}
			c.pause(d)
			delay = d
		}
		now := time.Now()
		blocked[key] = block{seq: seq, retryAt: now.Add(delay), until: now.Add(delay + c.cfg.AckWait)}
		c.w.metrics.retries.WithLabelValues(class.reason).Inc()
		c.log.Warn("writeback will retry", "subject", msg.Subject(), "seq", seq, "external_id", ch.ExternalID,
			"reason", class.reason, "delivered", meta.NumDelivered, "retry_in", delay, "err", err)
		_ = msg.NakWithDelay(delay)
	}
}

// pause stops fetching and writing for d: the breaker rejects calls anyway,
// and spinning would only burn deliveries.
func (c *Consumer) pause(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		cur := c.pausedUntil.Load()
		if cur >= until || c.pausedUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	c.w.metrics.paused.Set(1)
	time.AfterFunc(d, func() {
		if c.pauseLeft() <= 0 {
			c.w.metrics.paused.Set(0)
		}
	})
}

// backoff is exponential in the delivery count with jitter (between half
// and all of the step), capped at RetryMax.
func (c *Consumer) backoff(delivered uint64) time.Duration {
	d := c.cfg.RetryBase
	for i := uint64(1); i < delivered && d < c.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.RetryMax)
	return d/2 + rand.N(d/2+1)
}

func keepAlive(msg jetstream.Msg, every time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// decodeChange parses an app.<entity>.<action> message.
func decodeChange(subject string, data []byte) (Change, error) {
	_, entity, action, ok := splitAppSubject(subject)
	if !ok {
		return Change{}, permanent("subject %q is not app.<entity>.<action>", subject)
	}
	if action != events.AppUpsert && action != events.AppDelete {
		return Change{}, permanent("subject %q: action %q is not upsert or delete", subject, action)
	}
	var ch Change
	if err := json.Unmarshal(data, &ch.AppChange); err != nil {
		return Change{}, permanent("decode app change on %s: %v", subject, err)
	}
	ch.Entity, ch.Action = entity, action
	if ch.ExternalID == "" {
		return Change{}, permanent("app change on %s has no external_id", subject)
	}
	return ch, nil
}

// deadLetter stores the message in BRIDGE_DLQ with the reason and removes
// it from the consumer.
func (c *Consumer) deadLetter(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, cause error) {
	info := describe(cause)
	out := dlq.NewMessage(Pipeline, msg, meta, dlq.Failure{Reason: info.reason, Status: info.status, Hint: info.hint})
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := c.js.PublishMsg(pctx, out); err != nil {
		c.log.Error("dead letter not stored; the change stays in APP_EVENTS for retry", "seq", meta.Sequence.Stream, "err", err)
		_ = msg.NakWithDelay(c.cfg.RetryMax)
		return
	}
	c.w.metrics.dlq.Inc()
	c.log.Error("app change dead-lettered (see `bridge dlq ls`)", "subject", msg.Subject(), "seq", meta.Sequence.Stream,
		"status", info.status, "reason", info.reason, "hint", info.hint)
	_ = msg.Term()
}
