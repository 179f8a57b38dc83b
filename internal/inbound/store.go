package inbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/jsonscan"
)

// The receiver stores events with a JetStream publish of its own: a core NATS
// publish whose reply subject belongs to one of a pool of long-lived channel
// subscriptions, one per request storing events at the moment.
//
// Why not nats.go's jetstream publish: it is the receiver's hottest path, and
// there each ack crosses two goroutines (the connection's reader hands it to
// a subscription's goroutine, which hands it to the waiting future or
// request) and is decoded by reflection. A channel subscription's messages go
// from the reader straight to the one request waiting on that channel, and
// the ack is read by a small scanner. `bridge bench ingest` measures the
// difference (docs/PERFORMANCE.md). The wire contract is JetStream's own: a
// publish with a reply subject, answered by a PubAck or an API error, or by
// a no-responders status when no stream takes the subject.

// ackWindow is how many acks one request awaits at most at once: the size of
// its slot's channel. A channel subscription drops a message its channel
// cannot take, so a slot never has more publishes outstanding than this.
const ackWindow = 64

// slotWait is how long a request waits for a free slot when every slot is
// busy (MaxPendingAcks outstanding) before it is answered 503.
const slotWait = 200 * time.Millisecond

// errDisconnected ends a wait when the NATS connection drops: the events
// may or may not be stored, and the sender's retry is de-duplicated.
var errDisconnected = errors.New("NATS disconnected while awaiting the ack")

// ackSlot is one reply subscription: slot n listens on prefix.n.* and a
// request's i-th event is answered on prefix.n.i.
type ackSlot struct {
	sub     *nats.Subscription
	ch      chan *nats.Msg
	replyTo string     // prefix.n.
	replies [16]string // the first reply subjects, made once (most bodies hold one event)

	// Reused by each request holding the slot: nats.go encodes a message
	// (header, data) into its buffer before PublishMsg returns.
	msg   nats.Msg
	msgID []string // the header's Nats-Msg-Id value
	data  []byte
	timer *time.Timer
}

// maxKeptData bounds the stored-form buffer a slot keeps between requests.
const maxKeptData = 64 << 10

// message is the slot's message for one event; data is written into it by
// appendData.
func (s *ackSlot) message(subject, reply, msgID string, appendData func([]byte) []byte) *nats.Msg {
	s.msgID[0] = msgID
	s.data = appendData(s.data[:0])
	s.msg.Subject, s.msg.Reply, s.msg.Data = subject, reply, s.data
	return &s.msg
}

// startTimer arms the slot's timer for d (stopped by stopTimer).
func (s *ackSlot) startTimer(d time.Duration) <-chan time.Time {
	if s.timer == nil {
		s.timer = time.NewTimer(d)
	} else {
		s.timer.Reset(d) // since Go 1.23 no stale tick survives Stop or Reset
	}
	return s.timer.C
}

// release readies the slot for its next request.
func (s *ackSlot) release() {
	if s.timer != nil {
		s.timer.Stop()
	}
	if cap(s.data) > maxKeptData {
		s.data = nil
	}
	s.msg.Data = nil
}

// reply is the reply subject for the event at index i of a body.
func (s *ackSlot) reply(i int) string {
	if i < len(s.replies) {
		return s.replies[i]
	}
	return s.replyTo + strconv.Itoa(i)
}

// eventIndex is the body index an ack's subject names, -1 if none.
func (s *ackSlot) eventIndex(subject string) int {
	if len(subject) <= len(s.replyTo) || subject[:len(s.replyTo)] != s.replyTo {
		return -1
	}
	n, err := strconv.Atoi(subject[len(s.replyTo):])
	if err != nil {
		return -1
	}
	return n
}

// acker owns the reply slots of one NATS connection.
type acker struct {
	nc     *nats.Conn
	prefix string
	pool   chan *ackSlot // free slots
	max    int32
	made   atomic.Int32 // slots in use or free
	nextID atomic.Int64

	watch sync.Once
	// down is closed while the connection is down; a fresh one is
	// installed once it is back (see watchStatus).
	down atomic.Pointer[chan struct{}]
}

// newAcker makes room for maxPending acks outstanding at once, and at least
// one request per connection (maxConns).
func newAcker(nc *nats.Conn, maxPending, maxConns int) *acker {
	slots := max(1, maxPending/ackWindow, maxConns)
	a := &acker{nc: nc, prefix: nc.NewInbox() + ".", pool: make(chan *ackSlot, slots), max: int32(slots)}
	up := make(chan struct{})
	a.down.Store(&up)
	return a
}

// watchStatus closes down when the connection drops and replaces it when the
// connection is back, so waiting requests answer 503 at once instead of
// waiting out the publish timeout. It ends when the connection is closed.
func (a *acker) watchStatus() {
	ch := a.nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	if a.nc.IsClosed() { // closed before the listener was registered
		a.nc.RemoveStatusListener(ch)
		return
	}
	go func() {
		for s := range ch {
			switch s {
			case nats.CONNECTED:
				up := make(chan struct{})
				a.down.Store(&up)
			case nats.CLOSED:
				a.markDown()
				a.nc.RemoveStatusListener(ch)
				return
			default:
				a.markDown()
			}
		}
	}()
}

// downSignal is closed once the connection drops. Loaded already closed
// while the connection is up again (the watcher has not yet installed a
// fresh one), it is nil: that drop was before this request's publishes.
func (a *acker) downSignal() <-chan struct{} {
	d := *a.down.Load()
	select {
	case <-d:
		if a.nc.IsConnected() {
			return nil
		}
	default:
	}
	return d
}

func (a *acker) markDown() {
	d := *a.down.Load()
	select {
	case <-d:
	default:
		close(d)
	}
}

// get returns a free slot, making one while fewer than max exist, else
// waiting up to slotWait for one to come back.
func (a *acker) get(ctx context.Context) (*ackSlot, error) {
	a.watch.Do(a.watchStatus)
	select {
	case s := <-a.pool:
		return s, nil
	default:
	}
	if a.made.Add(1) <= a.max {
		s, err := a.newSlot()
		if err != nil {
			a.made.Add(-1)
			return nil, err
		}
		return s, nil
	}
	a.made.Add(-1)
	t := time.NewTimer(slotWait)
	defer t.Stop()
	select {
	case s := <-a.pool:
		return s, nil
	case <-t.C:
		return nil, fmt.Errorf("%d requests are already awaiting acks (MaxPendingAcks): JetStream is slower than the webhooks arrive", a.max)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (a *acker) newSlot() (*ackSlot, error) {
	s := &ackSlot{ch: make(chan *nats.Msg, ackWindow), msgID: make([]string, 1)}
	s.msg.Header = nats.Header{
		events.HeaderMsgID:  s.msgID,
		events.HeaderSource: {events.SourceWebhook},
	}
	s.replyTo = a.prefix + strconv.FormatInt(a.nextID.Add(1), 10) + "."
	for i := range s.replies {
		s.replies[i] = s.replyTo + strconv.Itoa(i)
	}
	sub, err := a.nc.ChanSubscribe(s.replyTo+"*", s.ch)
	if err != nil {
		return nil, fmt.Errorf("subscribe for acks: %w", err)
	}
	s.sub = sub
	return s, nil
}

// put returns a slot whose every ack has arrived. A slot with acks still
// due is dropped instead (its late acks must not reach the next request),
// and a fresh one is made in its place for whoever waits.
func (a *acker) put(s *ackSlot, settled bool) {
	s.release()
	if settled {
		a.pool <- s // never blocks: at most max slots exist
		return
	}
	_ = s.sub.Unsubscribe()
	if fresh, err := a.newSlot(); err == nil {
		a.pool <- fresh
		return
	}
	a.made.Add(-1)
}

// pubAck is JetStream's answer to a publish.
type pubAck struct {
	Stream    string       `json:"stream"`
	Seq       uint64       `json:"seq"`
	Duplicate bool         `json:"duplicate,omitempty"`
	Domain    string       `json:"domain,omitempty"`
	Error     *pubAckError `json:"error,omitempty"`
}

type pubAckError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

// parseAck reads an ack message: a PubAck, an API error or a status.
func parseAck(m *nats.Msg) (pubAck, error) {
	if len(m.Data) == 0 {
		// nats.go keeps these names unexported.
		if st := m.Header.Get("Status"); st != "" {
			if st == "503" {
				return pubAck{}, errors.New("no stream takes this subject (no responders): is SN_EVENTS missing?")
			}
			return pubAck{}, fmt.Errorf("JetStream answered status %s %s", st, m.Header.Get("Description"))
		}
		return pubAck{}, errors.New("JetStream answered with an empty ack")
	}
	ack, ok := scanAck(m.Data)
	if !ok {
		ack = pubAck{}
		if err := json.Unmarshal(m.Data, &ack); err != nil {
			return pubAck{}, fmt.Errorf("JetStream answered with an unreadable ack: %w", err)
		}
	}
	if ack.Error != nil {
		return ack, fmt.Errorf("JetStream refused the event: %s (code %d, err_code %d)", ack.Error.Description, ack.Error.Code, ack.Error.ErrCode)
	}
	if ack.Stream == "" {
		return ack, errors.New("JetStream answered with an ack naming no stream")
	}
	return ack, nil
}

// scanAck reads the usual PubAck — an object of stream, seq and perhaps
// duplicate and domain, each once — without reflection. ok false: anything
// else (an error, another key); decode it with encoding/json, whose result
// scanAck's always equals (FuzzScanAck).
func scanAck(b []byte) (ack pubAck, ok bool) {
	all := string(b)
	i := jsonscan.Space(b, 0)
	if i >= len(b) || b[i] != '{' {
		return ack, false
	}
	var seen uint8
	for {
		i = jsonscan.Space(b, i+1)
		key, next, ok := jsonscan.String(b, all, i)
		if !ok {
			return ack, false
		}
		i = jsonscan.Space(b, next)
		if i >= len(b) || b[i] != ':' {
			return ack, false
		}
		i = jsonscan.Space(b, i+1)
		var bit uint8
		switch key {
		case "stream":
			ack.Stream, i, ok = jsonscan.String(b, all, i)
			bit = 1
		case "domain":
			ack.Domain, i, ok = jsonscan.String(b, all, i)
			bit = 2
		case "seq":
			var n int64
			n, i, ok = jsonscan.Uint(b, i)
			ack.Seq = uint64(n)
			bit = 4
		case "duplicate":
			switch {
			case len(b)-i >= 4 && all[i:i+4] == "true":
				ack.Duplicate, i = true, i+4
			case len(b)-i >= 5 && all[i:i+5] == "false":
				ack.Duplicate, i = false, i+5
			default:
				ok = false
			}
			bit = 8
		default:
			return ack, false
		}
		if !ok || seen&bit != 0 {
			return ack, false
		}
		seen |= bit
		i = jsonscan.Space(b, i)
		if i >= len(b) {
			return ack, false
		}
		switch b[i] {
		case ',':
		case '}':
			return ack, seen&1 != 0 && jsonscan.Space(b, i+1) == len(b)
		default:
			return ack, false
		}
	}
}
