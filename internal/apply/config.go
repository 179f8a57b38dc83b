package apply

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/trace"
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
	// Echoes recognises a webhook of the writeback's own write
	// (dedupe.Cache): with several replicas the webhook may have been
	// stored by one whose receiver did not know the write. Nil: off.
	Echoes EchoChecker

	// Trace records each event's outcome in the decision log (bridge
	// trace); nil records nothing.
	Trace *trace.Recorder

	Durable string // consumer name (default "apply")
	// Tuning of the consumer engine; zero values take its defaults, except
	// MaxDeliver (default 100: about 1.5 h of retries at the default
	// RetryMax) and HandleTimeout (default AckWait*2/3).
	consume.Tuning

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Default worker counts of the apply pipeline. Apply is bound by round
// trips to JetStream (a state read, the publish or POST, a state write, the
// ack), not by CPU: under concurrent ingest on 2 shared cores 4 workers
// applied about a tenth of what was stored, 32 about half, and caught up
// four times sooner (BenchmarkApplyLagUnderIngest, docs/PERFORMANCE.md).
// Changes of one record stay on one worker in order whatever the count. An
// HTTP app gets one request per worker at once, so that applier (and any
// other) defaults lower.
const (
	DefaultNATSWorkers = 32
	DefaultHTTPWorkers = 8
)

// DefaultWorkers is the worker count the pipeline takes for an applier
// when Config.Workers is 0.
func DefaultWorkers(a Applier) int {
	if _, ok := a.(*NATSApplier); ok {
		return DefaultNATSWorkers
	}
	return DefaultHTTPWorkers
}

func (c Config) withDefaults() Config {
	if c.Durable == "" {
		c.Durable = "apply"
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers(c.Applier)
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 100
	}
	if c.HandleTimeout <= 0 {
		c.HandleTimeout = c.AckWait * 2 / 3
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
	if c.MaxDeliver < 0 {
		errs = append(errs, fmt.Errorf("apply max deliver %d: must be positive (0 takes the default, 100)", c.MaxDeliver))
	}
	if h, ok := c.Applier.(*HTTPApplier); ok && h.URL == "" {
		errs = append(errs, errNoURL)
	}
	return errors.Join(errs...)
}
