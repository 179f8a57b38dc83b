package apply

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/state"
)

// Config wires and tunes the apply pipeline. JS, Applier, Mapping, States
// and Links are required; zero tuning values take the defaults.
type Config struct {
	JS      jetstream.JetStream
	Applier Applier
	Mapping *mapping.Set
	States  *state.Store
	Links   *state.Links
	// LinkWriter writes external ids to ServiceNow's correlation_id; nil
	// keeps links in bridge_links only.
	LinkWriter LinkWriter
	// Applied remembers what the app was handed (dedupe.Cache); nil: off.
	Applied AppliedRecorder

	Durable string // consumer name (default "apply")
	Workers int    // concurrent appliers; one record is always on one worker (default 4)
	Batch   int    // messages pulled ahead per request (default 64)
	// MaxAckPending bounds messages handed out and not yet acked (default
	// Workers*Batch*2).
	MaxAckPending int
	// BackOff is the redelivery schedule of a message that was never
	// acked (a crashed or hung bridge): BackOff[0] is the ack wait of the
	// first delivery, the last entry repeats (default 30s, 1m, 2m, 5m).
	BackOff []time.Duration
	// MaxDeliver dead-letters a message after that many failed deliveries
	// (default 100: about 1.5 h of retries at the default RetryMax).
	MaxDeliver int
	// RetryBase and RetryMax shape the exponential, jittered delay before a
	// failed apply is retried (defaults 500ms, 1m). An app's Retry-After is
	// honoured up to RetryMax.
	RetryBase time.Duration
	RetryMax  time.Duration
	// HandleTimeout bounds one message's apply, state and link work; it
	// must be shorter than BackOff[0] (default BackOff[0]*2/3).
	HandleTimeout time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.Durable == "" {
		c.Durable = "apply"
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.Batch <= 0 {
		c.Batch = 64
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = c.Workers * c.Batch * 2
	}
	if len(c.BackOff) == 0 {
		c.BackOff = []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute}
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 100
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Minute
	}
	if c.HandleTimeout <= 0 {
		c.HandleTimeout = c.BackOff[0] * 2 / 3
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every missing part and invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.JS == nil || c.Applier == nil || c.Mapping == nil || c.States == nil || c.Links == nil {
		errs = append(errs, errors.New("apply: JS, Applier, Mapping, States and Links are all required"))
	}
	d := c.withDefaults()
	for _, b := range d.BackOff {
		if b <= 0 {
			errs = append(errs, fmt.Errorf("apply back-off %v: every step must be positive", b))
		}
	}
	if d.MaxDeliver < len(d.BackOff) {
		errs = append(errs, fmt.Errorf("apply max deliver %d: must be at least the %d back-off steps", d.MaxDeliver, len(d.BackOff)))
	}
	if d.HandleTimeout >= d.BackOff[0] {
		errs = append(errs, fmt.Errorf("apply handle timeout %v must be shorter than the ack wait %v, or messages are redelivered while still being applied", d.HandleTimeout, d.BackOff[0]))
	}
	if h, ok := c.Applier.(*HTTPApplier); ok && h.URL == "" {
		errs = append(errs, errNoURL)
	}
	return errors.Join(errs...)
}
