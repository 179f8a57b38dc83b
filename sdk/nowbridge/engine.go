package nowbridge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
)

// The consuming engine behind Consume and durable Results. Messages of one
// record (one key) are handled one at a time and in stream order; messages
// of other records never wait for them:
//
//   - A message whose record is free goes to a free worker.
//   - A message whose record is being handled waits in memory behind it;
//     the worker that finishes the record takes its next message itself.
//   - A message handed back to JetStream for a retry (NakWithDelay) leaves
//     a retry mark: a later message of the record arriving before the
//     retried one is redelivered is handed back too, to come back just
//     after it, and so are the messages that waited behind it.
//   - A retry mark lapses an ack wait after the retry was due (another
//     instance may have taken the message over).
//
// Every message the engine holds is kept alive with in-progress acks, sent
// under the engine's lock so that none follows a NakWithDelay and resets its
// delay. Across instances of the app, the consumer's pinned priority group
// lets one instance consume at a time, so the order holds there too.

// stopGrace is how long handlers running when Consume's context ends may
// finish before their context is cancelled.
const stopGrace = 10 * time.Second

// orderGap is how long after an earlier message of its record a later one,
// handed back with it, comes back.
const orderGap = 50 * time.Millisecond

// pinGroup is the priority group of the SDK's durable consumers.
const pinGroup = "nowbridge"

type engine[T any] struct {
	js       jetstream.JetStream
	stream   string
	consumer jetstream.ConsumerConfig
	// decode parses a message and names its record ("" for none: no order).
	decode func(jetstream.Msg) (T, string, error)
	handle func(context.Context, T) error
	// describe adds the message's ids to a log line.
	describe func(T) []any

	workers   int
	batch     int
	ackWait   time.Duration
	retryBase time.Duration
	retryMax  time.Duration
	log       *slog.Logger

	mu    sync.Mutex
	keys  map[string]*keyState[T]
	held  map[uint64]*job[T] // by stream sequence: with a worker or waiting
	pinID string             // the pin JetStream gave this instance, if any
}

type job[T any] struct {
	msg       jetstream.Msg // the latest delivery
	seq       uint64
	delivered uint64
	key       string
	val       T
}

type keyState[T any] struct {
	busy     bool                 // a message of the record is with a worker
	queue    []*job[T]            // waiting behind it, by sequence
	retrying map[uint64]retryMark // handed back, by sequence
}

type retryMark struct {
	at    time.Time // when JetStream redelivers it
	until time.Time // when the mark lapses
}

func (k *keyState[T]) idle() bool { return !k.busy && len(k.queue) == 0 && len(k.retrying) == 0 }

// run consumes until ctx ends, then stops pulling, hands back what it holds
// and waits for the handlers running (stopGrace at most).
func (e *engine[T]) run(ctx context.Context) error {
	e.keys, e.held = map[string]*keyState[T]{}, map[uint64]*job[T]{}
	cons, err := e.js.CreateOrUpdateConsumer(ctx, e.stream, e.consumer)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("consumer %s: stream %s does not exist; the bridge creates it at start, so start the bridge (or point this app at the bridge's NATS server): %w", e.consumer.Durable, e.stream, err)
		}
		return fmt.Errorf("create consumer %s on stream %s: %w", e.consumer.Durable, e.stream, err)
	}
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()

	ready := make(chan *job[T])
	var workers, beating sync.WaitGroup
	for range e.workers {
		workers.Go(func() { e.work(ctx, hctx, ready) })
	}
	stopBeat := make(chan struct{})
	beating.Go(func() { e.heartbeat(stopBeat) })

	e.fetch(ctx, cons, ready)

	close(ready)
	grace := time.AfterFunc(stopGrace, cancelHandlers)
	defer grace.Stop()
	workers.Wait()
	close(stopBeat)
	beating.Wait()
	e.giveBackAll()
	e.unpin()
	return nil
}

// fetch pulls and admits messages until ctx ends, pulling again after the
// subscription fails (NATS reconnecting, the consumer deleted).
func (e *engine[T]) fetch(ctx context.Context, cons jetstream.Consumer, ready chan<- *job[T]) {
	for ctx.Err() == nil {
		err := e.pull(ctx, cons, ready)
		if err == nil || ctx.Err() != nil {
			continue
		}
		e.log.Warn("nowbridge: consumer interrupted; pulling again in 1s", "stream", e.stream, "consumer", e.consumer.Durable, "err", err)
		sleep(ctx, time.Second)
		if c, cerr := e.js.CreateOrUpdateConsumer(ctx, e.stream, e.consumer); cerr == nil {
			cons = c
		} else if ctx.Err() == nil {
			e.log.Warn("nowbridge: consumer not recreated; retrying", "stream", e.stream, "consumer", e.consumer.Durable, "err", cerr)
		}
	}
}

func (e *engine[T]) pull(ctx context.Context, cons jetstream.Consumer, ready chan<- *job[T]) error {
	opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(e.batch)}
	if e.consumer.PriorityPolicy == jetstream.PriorityPolicyPinned {
		opts = append(opts, jetstream.PullPriorityGroup(pinGroup))
	}
	it, err := cons.Messages(opts...)
	if err != nil {
		return fmt.Errorf("pull from %s: %w", e.stream, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	defer it.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			switch {
			case errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil:
				return nil
			case errors.Is(err, jetstream.ErrNoHeartbeat):
				continue // the iterator keeps pulling
			}
			return fmt.Errorf("pull from %s: %w", e.stream, err)
		}
		if ctx.Err() != nil {
			_ = msg.Nak() // drained after the stop: redelivered to whoever runs next
			continue
		}
		e.admit(ctx, msg, ready)
	}
}

// admit sends a pulled message to a worker, behind its record's current
// message, or back to JetStream until an earlier message of its record was
// retried.
func (e *engine[T]) admit(ctx context.Context, msg jetstream.Msg, ready chan<- *job[T]) {
	meta, err := msg.Metadata()
	if err != nil {
		e.log.Error("nowbridge: message without JetStream metadata; terminated", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	seq := meta.Sequence.Stream
	e.mu.Lock()
	if pin := msg.Headers().Get("Nats-Pin-Id"); pin != "" {
		e.pinID = pin
	}
	if j, ok := e.held[seq]; ok {
		// A redelivery of a message already held (an in-progress ack got
		// lost): answer through the latest delivery, handle it once.
		j.msg, j.delivered = msg, meta.NumDelivered
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()

	val, key, err := e.decode(msg)
	if err != nil {
		e.log.Error("nowbridge: message cannot be decoded; terminated (fix the publisher: no retry can change it)", "subject", msg.Subject(), "seq", seq, "err", err)
		_ = msg.TermWithReason("nowbridge: not a decodable message")
		return
	}
	j := &job[T]{msg: msg, seq: seq, delivered: meta.NumDelivered, key: key, val: val}
	now := time.Now()
	e.mu.Lock()
	if key != "" {
		k := e.keys[key]
		if k == nil {
			k = &keyState[T]{}
			e.keys[key] = k
		}
		if at, ok := k.earlierRetry(seq, now); ok {
			d := max(at.Sub(now), 0) + orderGap
			k.mark(seq, now.Add(d), e.ackWait)
			e.nak(msg, d)
			e.mu.Unlock()
			return
		}
		delete(k.retrying, seq) // it is back
		e.held[seq] = j
		if k.busy {
			i, _ := slices.BinarySearchFunc(k.queue, seq, func(q *job[T], s uint64) int { return cmp.Compare(q.seq, s) })
			k.queue = slices.Insert(k.queue, i, j)
			e.mu.Unlock()
			return
		}
		k.busy = true
	} else {
		e.held[seq] = j
	}
	e.mu.Unlock()
	select {
	case ready <- j:
	case <-ctx.Done():
		e.giveBack(j)
	}
}

// work handles messages, and after each the next waiting message of the
// same record, until ready is closed.
func (e *engine[T]) work(ctx, hctx context.Context, ready <-chan *job[T]) {
	for j := range ready {
		for j != nil {
			if ctx.Err() != nil {
				e.giveBack(j)
				break
			}
			j = e.process(ctx, hctx, j)
		}
	}
}

// process runs the handler on one message and acts on its answer. It
// returns the record's next waiting message, if any.
func (e *engine[T]) process(ctx, hctx context.Context, j *job[T]) *job[T] {
	err := e.call(hctx, j.val)
	switch {
	case err == nil:
		return e.finish(j, func(m jetstream.Msg) error { return m.Ack() })
	case IsPermanent(err):
		e.log.Error("nowbridge: handler refused the message for good; terminated", append(e.describe(j.val), "seq", j.seq, "err", err)...)
		// The reason goes into a JetStream advisory: a fixed text, so no
		// value from the app's error leaves the process.
		return e.finish(j, func(m jetstream.Msg) error { return m.TermWithReason("nowbridge: the handler returned Permanent") })
	}
	ra, hasRA := retryAfterOf(err)
	delay := e.retryDelay(j.delivered, ra, hasRA)
	if ctx.Err() != nil {
		delay = 0 // stopping: the next owner may take it at once
	}
	e.log.Warn("nowbridge: handler failed; will retry", append(e.describe(j.val), "seq", j.seq, "delivered", j.delivered, "retry_in", delay, "err", err)...)
	e.retry(j, delay)
	return nil
}

// call runs the handler, turning a panic into an error to retry.
func (e *engine[T]) call(ctx context.Context, v T) (err error) {
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("nowbridge: handler panicked; will retry", append(e.describe(v), "panic", r, "stack", string(debug.Stack()))...)
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return e.handle(ctx, v)
}

// finish acknowledges (or terminates) a message with act and returns the
// record's next waiting message, which stays owned by the caller.
func (e *engine[T]) finish(j *job[T], act func(jetstream.Msg) error) *job[T] {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := act(j.msg); err != nil {
		e.log.Warn("nowbridge: ack failed; the message will be redelivered and found done by the version guard", "subject", j.msg.Subject(), "seq", j.seq, "err", err)
	}
	delete(e.held, j.seq)
	k := e.keys[j.key]
	if j.key == "" || k == nil {
		return nil
	}
	if len(k.queue) > 0 {
		next := k.queue[0]
		k.queue = slices.Delete(k.queue, 0, 1)
		return next
	}
	k.busy = false
	e.forgetIdle(j.key, k)
	return nil
}

// retry hands a message back to be redelivered after delay, and the
// messages of its record waiting behind it to come back after it.
func (e *engine[T]) retry(j *job[T], delay time.Duration) {
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.held, j.seq)
	e.nak(j.msg, delay)
	k := e.keys[j.key]
	if j.key == "" || k == nil {
		return
	}
	k.mark(j.seq, now.Add(delay), e.ackWait)
	for i, q := range k.queue {
		d := delay + time.Duration(i+1)*orderGap
		k.mark(q.seq, now.Add(d), e.ackWait)
		delete(e.held, q.seq)
		e.nak(q.msg, d)
	}
	k.queue, k.busy = nil, false
}

// giveBack hands a message not started back at stop, with the ones waiting
// behind it, for the next owner to take at once.
func (e *engine[T]) giveBack(j *job[T]) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.held, j.seq)
	_ = j.msg.Nak()
	if k := e.keys[j.key]; j.key != "" && k != nil {
		for _, q := range k.queue {
			delete(e.held, q.seq)
			_ = q.msg.Nak()
		}
		k.queue, k.busy = nil, false
		e.forgetIdle(j.key, k)
	}
}

// giveBackAll hands back whatever is still held once the workers stopped.
func (e *engine[T]) giveBackAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for seq, j := range e.held {
		_ = j.msg.Nak()
		delete(e.held, seq)
	}
	clear(e.keys)
}

// nak hands a message back; the caller holds e.mu.
func (e *engine[T]) nak(msg jetstream.Msg, delay time.Duration) {
	var err error
	if delay > 0 {
		err = msg.NakWithDelay(delay)
	} else {
		err = msg.Nak()
	}
	if err != nil {
		e.log.Warn("nowbridge: nak failed; JetStream redelivers after the ack wait", "subject", msg.Subject(), "ack_wait", e.ackWait, "err", err)
	}
}

// heartbeat keeps every held message owned with in-progress acks and drops
// lapsed retry marks.
func (e *engine[T]) heartbeat(stop <-chan struct{}) {
	t := time.NewTicker(max(e.ackWait/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := time.Now()
		e.mu.Lock()
		for _, j := range e.held {
			_ = j.msg.InProgress()
		}
		for key, k := range e.keys {
			for seq, m := range k.retrying {
				if now.After(m.until) {
					delete(k.retrying, seq)
				}
			}
			e.forgetIdle(key, k)
		}
		e.mu.Unlock()
	}
}

// unpin releases the consumer's pin at stop when this instance holds it, so
// a standby instance takes over at once instead of after the pinned TTL.
func (e *engine[T]) unpin() {
	e.mu.Lock()
	pin := e.pinID
	e.mu.Unlock()
	if pin == "" || e.consumer.PriorityPolicy != jetstream.PriorityPolicyPinned {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cons, err := e.js.Consumer(ctx, e.stream, e.consumer.Durable)
	if err != nil {
		return
	}
	info := cons.CachedInfo()
	for _, g := range info.PriorityGroups {
		if g.Group == pinGroup && g.PinnedClientID == pin {
			s, err := e.js.Stream(ctx, e.stream)
			if err == nil {
				err = s.UnpinConsumer(ctx, e.consumer.Durable, pinGroup)
			}
			if err != nil {
				e.log.Debug("nowbridge: unpin at stop failed; a standby takes over after the pinned TTL", "consumer", e.consumer.Durable, "err", err)
			}
		}
	}
}

// retryDelay is the wait before the next delivery: the handler's
// RetryAfter when it gave one (capped at retryMax, plus up to a tenth so
// that many retries do not land at once), else between half and all of
// retryBase*2^(delivered-1), capped at retryMax.
func (e *engine[T]) retryDelay(delivered uint64, retryAfter time.Duration, given bool) time.Duration {
	if given {
		d := min(max(retryAfter, 0), e.retryMax)
		return d + rand.N(d/10+1)
	}
	d := e.retryBase
	for i := uint64(1); i < delivered && d < e.retryMax; i++ {
		d *= 2
	}
	d = min(d, e.retryMax)
	return d/2 + rand.N(d/2+1)
}

func (e *engine[T]) forgetIdle(key string, k *keyState[T]) {
	if k.idle() {
		delete(e.keys, key)
	}
}

// earlierRetry returns when the first message of the record before seq that
// was handed back for a retry comes back, dropping lapsed marks.
func (k *keyState[T]) earlierRetry(seq uint64, now time.Time) (time.Time, bool) {
	var first time.Time
	found := false
	for s, m := range k.retrying {
		if now.After(m.until) {
			delete(k.retrying, s)
			continue
		}
		if s < seq && (!found || m.at.Before(first)) {
			first, found = m.at, true
		}
	}
	return first, found
}

func (k *keyState[T]) mark(seq uint64, at time.Time, lapse time.Duration) {
	if k.retrying == nil {
		k.retrying = map[uint64]retryMark{}
	}
	k.retrying[seq] = retryMark{at: at, until: at.Add(lapse)}
}

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
