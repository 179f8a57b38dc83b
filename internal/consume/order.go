package consume

import (
	"cmp"
	"slices"
	"time"
)

// The ordering algorithm. Messages of one key (one record) are handled one
// at a time and in stream order; messages of other keys never wait for
// them.
//
//   - A message whose key is free goes to any free worker.
//   - A message whose key is being handled waits in memory behind it; the
//     worker that finishes the key takes the key's next message itself.
//   - A message handed back to JetStream for a retry (NakWithDelay) leaves
//     a retry mark: a later message of the key that arrives before the
//     retried one is redelivered is handed back too, to come back just
//     after it (JetStream redelivers in no particular order across
//     subjects, and the later one must not overtake). The messages waiting
//     in memory behind a retried one are handed back the same way.
//   - A retry mark lapses an ack wait after the retry was due: another
//     replica may have taken the message over, and nothing should wait for
//     it forever.

// tracked is a message the engine holds: its stream sequence and key.
type tracked[M any] struct {
	msg M
	seq uint64
	key string
}

// retryMark is a message of the key handed back for a retry.
type retryMark struct {
	at    time.Time // when JetStream redelivers it
	until time.Time // when the mark lapses
}

type keyState[M any] struct {
	busy     bool                 // a message of the key is with a worker
	queue    []tracked[M]         // waiting behind it, by sequence
	retrying map[uint64]retryMark // by sequence
}

func (k *keyState[M]) idle() bool { return !k.busy && len(k.queue) == 0 && len(k.retrying) == 0 }

// order is the per-key state of the messages the engine holds. It does no
// I/O and is not safe for concurrent use: the engine guards it.
type order[M any] struct {
	keys  map[string]*keyState[M]
	lapse time.Duration // how long a retry mark outlives its due time
	gap   time.Duration // how long after an earlier message a later one comes back
}

func newOrder[M any](lapse, gap time.Duration) *order[M] {
	return &order[M]{keys: map[string]*keyState[M]{}, lapse: lapse, gap: gap}
}

// verdict of admit.
type verdict int

const (
	run    verdict = iota // hand it to a worker
	queued                // it waits in memory behind the key's current message
	later                 // hand it back to JetStream with the returned delay
)

// admit decides what to do with an arriving message. A message without a
// key runs at once.
func (o *order[M]) admit(t tracked[M], now time.Time) (verdict, time.Duration) {
	if t.key == "" {
		return run, 0
	}
	k := o.keys[t.key]
	if k == nil {
		k = &keyState[M]{}
		o.keys[t.key] = k
	}
	if at, ok := k.earlierRetry(t.seq, now); ok {
		d := max(at.Sub(now), 0) + o.gap
		k.mark(t.seq, now.Add(d), o.lapse)
		return later, d
	}
	delete(k.retrying, t.seq) // it is back: no longer waited for
	if k.busy {
		i, _ := slices.BinarySearchFunc(k.queue, t.seq, func(q tracked[M], seq uint64) int { return cmp.Compare(q.seq, seq) })
		k.queue = slices.Insert(k.queue, i, t)
		return queued, 0
	}
	k.busy = true
	return run, 0
}

// done records that the key's current message was acked or terminated and
// returns the key's next message, if one is waiting (the caller runs it;
// the key stays busy).
func (o *order[M]) done(key string) (tracked[M], bool) {
	k := o.keys[key]
	if key == "" || k == nil {
		return tracked[M]{}, false
	}
	if len(k.queue) > 0 {
		next := k.queue[0]
		k.queue = slices.Delete(k.queue, 0, 1)
		return next, true
	}
	k.busy = false
	o.forgetIdle(key, k)
	return tracked[M]{}, false
}

// retried records that the key's current message (seq) was handed back to
// be redelivered after delay, and returns the messages waiting behind it,
// each with the delay after which it must come back.
func (o *order[M]) retried(key string, seq uint64, delay time.Duration, now time.Time) (back []tracked[M], delays []time.Duration) {
	k := o.keys[key]
	if key == "" || k == nil {
		return nil, nil
	}
	k.mark(seq, now.Add(delay), o.lapse)
	for _, q := range k.queue {
		d := delay + o.gap
		k.mark(q.seq, now.Add(d), o.lapse)
		back, delays = append(back, q), append(delays, d)
	}
	k.queue, k.busy = nil, false
	return back, delays
}

// forget drops the retry mark of a message that will not come back (it
// was dead-lettered).
func (o *order[M]) forget(key string, seq uint64) {
	if k := o.keys[key]; k != nil {
		delete(k.retrying, seq)
		o.forgetIdle(key, k)
	}
}

// drop forgets the key's waiting messages (the engine is stopping and
// hands them back) and frees it.
func (o *order[M]) drop(key string) []tracked[M] {
	k := o.keys[key]
	if key == "" || k == nil {
		return nil
	}
	out := k.queue
	k.queue, k.busy = nil, false
	o.forgetIdle(key, k)
	return out
}

// waiting returns every message held in memory behind another.
func (o *order[M]) waiting() []M {
	var out []M
	for _, k := range o.keys {
		for _, q := range k.queue {
			out = append(out, q.msg)
		}
	}
	return out
}

// sweep drops lapsed retry marks and keys with nothing left.
func (o *order[M]) sweep(now time.Time) {
	for key, k := range o.keys {
		for seq, m := range k.retrying {
			if now.After(m.until) {
				delete(k.retrying, seq)
			}
		}
		o.forgetIdle(key, k)
	}
}

func (o *order[M]) forgetIdle(key string, k *keyState[M]) {
	if k.idle() {
		delete(o.keys, key)
	}
}

// earlierRetry returns when the first message of the key before seq that
// was handed back for a retry comes back, dropping lapsed marks.
func (k *keyState[M]) earlierRetry(seq uint64, now time.Time) (time.Time, bool) {
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

func (k *keyState[M]) mark(seq uint64, at time.Time, lapse time.Duration) {
	if k.retrying == nil {
		k.retrying = map[uint64]retryMark{}
	}
	k.retrying[seq] = retryMark{at: at, until: at.Add(lapse)}
}
