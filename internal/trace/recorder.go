package trace

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/jsonw"
)

// RecorderConfig configures a Recorder. Conn is required; zero values of
// the rest take the defaults.
type RecorderConfig struct {
	Conn *nats.Conn // shared; not closed by the recorder
	// Buffer is how many entries may wait for the sender (default 16384);
	// beyond it entries are dropped and counted, never waited for.
	Buffer int
	// MaxPending bounds publishes awaiting their ack (default 4096).
	MaxPending int
	// FlushTimeout is how long Close waits for entries still on their way
	// (default 5s).
	FlushTimeout time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
}

func (c RecorderConfig) withDefaults() RecorderConfig {
	if c.Buffer <= 0 {
		c.Buffer = 16384
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 4096
	}
	if c.FlushTimeout <= 0 {
		c.FlushTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Recorder stores entries in BRIDGE_TRACE from a goroutine of its own:
// Record hands an entry over without waiting, so the pipelines never wait
// for the log nor fail because of it. A nil *Recorder records nothing, so
// a part built without one (a test, the SDK) needs no check.
type Recorder struct {
	cfg      RecorderConfig
	js       jetstream.JetStream
	entries  chan Entry
	stop     chan struct{}
	done     chan struct{}
	closed   atomic.Bool
	once     sync.Once
	failures prometheus.Counter
	recorded prometheus.Counter

	// The sender's own (one goroutine): the numbers indexed lately, and
	// when failures were last logged.
	indexed    map[string]time.Time
	lastWarn   time.Time
	unreported atomic.Int64
}

// stallWait is how long a publish waits for room among the pending acks
// before the entry is dropped (NATS slow or gone; the buffer takes the
// rest meanwhile).
const stallWait = 50 * time.Millisecond

// indexRefresh is how often the number index entry of a record is written
// again while the process keeps seeing it: well within the stream's max age.
const indexRefresh = 24 * time.Hour

// indexMax bounds the numbers remembered; past it they are forgotten at
// once (an index entry written again costs one small message).
const indexMax = 100_000

// NewRecorder builds a recorder and starts its sender; Close stops it.
func NewRecorder(cfg RecorderConfig) (*Recorder, error) {
	if cfg.Conn == nil {
		return nil, errors.New("trace: a NATS connection is required")
	}
	cfg = cfg.withDefaults()
	r := &Recorder{
		cfg: cfg, entries: make(chan Entry, cfg.Buffer), stop: make(chan struct{}), done: make(chan struct{}),
		indexed: map[string]time.Time{},
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_trace_write_failures_total",
			Help: "Decision log entries (BRIDGE_TRACE, bridge trace) not stored: the sender's buffer was full, NATS refused or did not ack. The pipelines go on either way.",
		}),
		recorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_trace_entries_total",
			Help: "Decision log entries handed to BRIDGE_TRACE (bridge trace).",
		}),
	}
	// A JetStream context of its own: the log's pending publishes and
	// their limit never share the receiver's or reconcile's.
	js, err := jetstream.New(cfg.Conn,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxPending),
		jetstream.WithPublishAsyncTimeout(10*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, err error) { r.fail(msg.Subject, err) }))
	if err != nil {
		return nil, fmt.Errorf("trace: jetstream: %w", err)
	}
	r.js = js
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(r.failures); err != nil {
			return nil, fmt.Errorf("trace: metrics: %w", err)
		}
		if err := cfg.Registerer.Register(r.recorded); err != nil {
			return nil, fmt.Errorf("trace: metrics: %w", err)
		}
	}
	go r.send()
	return r, nil
}

// Record hands e to the sender; it never waits. An entry naming no record
// (no table and sys_id, no entity and external id) is not recorded. A zero
// Time is now.
func (r *Recorder) Record(e Entry) {
	if r == nil || r.closed.Load() {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	select {
	case r.entries <- e:
	default:
		r.failures.Inc()
		r.unreported.Add(1)
	}
}

// Close stops the sender once the entries handed over are sent, waiting at
// most the flush timeout for their acks. Entries recorded after Close are
// dropped.
func (r *Recorder) Close() {
	if r == nil {
		return
	}
	r.once.Do(func() {
		r.closed.Store(true)
		close(r.stop)
		<-r.done
	})
}

// send publishes entries until Close, then what is left, and waits for the
// acks outstanding.
func (r *Recorder) send() {
	defer close(r.done)
	for {
		select {
		case e := <-r.entries:
			r.publish(&e)
		case <-r.stop:
			// What is left goes within the flush timeout; past it (NATS
			// gone: every publish stalls) the rest is counted and dropped.
			deadline := time.Now().Add(r.cfg.FlushTimeout)
			for {
				select {
				case e := <-r.entries:
					if time.Now().Before(deadline) {
						r.publish(&e)
					} else {
						r.failures.Inc()
						r.unreported.Add(1)
					}
					continue
				default:
				}
				break
			}
			select {
			case <-r.js.PublishAsyncComplete():
			case <-time.After(time.Until(deadline)):
				r.cfg.Logger.Warn("decision log: entries still unacknowledged at stop; they may be lost (bridge trace shows less)",
					"pending", r.js.PublishAsyncPending())
			}
			r.report(true)
			return
		}
	}
}

func (r *Recorder) publish(e *Entry) {
	subject := e.Subject()
	if subject == "" {
		return
	}
	data := e.appendJSON(make([]byte, 0, 384))
	// Not reused: the client keeps the message until its ack.
	if _, err := r.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data}, jetstream.WithStallWait(stallWait)); err != nil {
		r.fail(subject, err)
		return
	}
	r.recorded.Inc()
	if e.Number != "" && e.SysID != "" && events.ValidSysID(e.SysID) {
		r.index(e)
	}
	r.report(false)
}

// index writes the number index entry of e's record the first time the
// process sees the number, and again a day later.
func (r *Recorder) index(e *Entry) {
	key := e.Number + " " + e.Table + " " + e.SysID
	if at, ok := r.indexed[key]; ok && time.Since(at) < indexRefresh {
		return
	}
	if len(r.indexed) >= indexMax {
		clear(r.indexed)
	}
	r.indexed[key] = time.Now()
	data := append(append(append(append([]byte(`{"table":`), jsonw.AppendString(nil, e.Table)...), `,"sys_id":`...), jsonw.AppendString(nil, e.SysID)...), '}')
	if _, err := r.js.PublishMsgAsync(&nats.Msg{Subject: NumberSubject(e.Number), Data: data}, jetstream.WithStallWait(stallWait)); err != nil {
		delete(r.indexed, key)
		r.fail(NumberSubject(e.Number), err)
	}
}

// fail counts an entry that was not stored; report logs the count now and
// then.
func (r *Recorder) fail(subject string, err error) {
	r.failures.Inc()
	if r.unreported.Add(1) == 1 {
		r.cfg.Logger.Debug("decision log entry not stored", "subject", subject, "err", err)
	}
}

// report logs the failures since the last report, at most once a minute
// (or now, at stop).
func (r *Recorder) report(final bool) {
	n := r.unreported.Load()
	if n == 0 || (!final && time.Since(r.lastWarn) < time.Minute) {
		return
	}
	r.lastWarn = time.Now()
	r.unreported.Add(-n)
	r.cfg.Logger.Warn("decision log entries not stored (buffer full or NATS unavailable); the pipelines are unaffected, bridge trace shows less",
		"entries", n, "metric", "bridge_trace_write_failures_total")
}
