package outbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/trace"
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
	// Trace records each change's outcome in the decision log (bridge
	// trace); nil records nothing.
	Trace *trace.Recorder
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
		trace: d.Trace,
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

// Consumer is the durable pull consumer on APP_EVENTS: the shared consume
// engine running the writer.
type Consumer struct {
	engine *consume.Engine
	err    error // a configuration the engine refused, reported by Run
}

// NewConsumer builds the writeback consumer; Run starts it. It publishes
// the result of every change on BRIDGE_RESULTS (see results.go).
func NewConsumer(js jetstream.JetStream, w *Writer) *Consumer {
	c := &Consumer{}
	maxDeliver := max(w.cfg.MaxDeliver, 0)
	c.engine, c.err = consume.New(consume.Config{
		JS: js, Stream: events.StreamApp, Pipeline: Pipeline, Handler: handler{w: w, results: newResultSink(js, w.metrics)},
		Consumer: jetstream.ConsumerConfig{
			Durable:       w.cfg.Durable,
			Description:   "SaaS changes written back to ServiceNow (nowbridge writeback)",
			FilterSubject: events.AppSubjects,
		},
		Tuning: consume.Tuning{
			Workers: w.cfg.Workers, Batch: w.cfg.Batch, AckWait: w.cfg.AckWait, MaxDeliver: maxDeliver,
			RetryBase: w.cfg.RetryBase, RetryMax: w.cfg.RetryMax, PauseDefault: w.cfg.BreakerPause,
		},
		Logger: w.log,
		Metrics: consume.Metrics{
			Retries: w.metrics.retries, DeadLetters: w.metrics.dlq, Paused: w.metrics.paused, Latency: w.metrics.latency,
		},
		Trace: w.trace,
	})
	return c
}

// Run consumes until ctx ends, then waits for changes in flight to finish.
// An error means the consumer could not be created (no APP_EVENTS stream).
func (c *Consumer) Run(ctx context.Context) error {
	if c.err != nil {
		return c.err
	}
	return c.engine.Run(ctx)
}

// handler is the writeback's part in the consume engine; as a
// consume.Observer it also tells the app of retries and dead letters.
type handler struct {
	w       *Writer
	results *resultSink
}

var _ consume.Observer = handler{}

// Key is the app's record: entity and external id.
func (h handler) Key(msg jetstream.Msg) string {
	_, entity, _, ok := splitAppSubject(msg.Subject())
	var probe struct {
		ExternalID string `json:"external_id"`
	}
	if !ok || json.Unmarshal(msg.Data(), &probe) != nil || probe.ExternalID == "" {
		return ""
	}
	return entity + "/" + probe.ExternalID
}

// Handle writes one app change back to ServiceNow and tells the app its
// result before the change is acked.
func (h handler) Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	if events.IsAttachmentSubject(msg.Subject()) {
		return nil // a file, not a record change: the attachment pipeline's (internal/attach)
	}
	ch, err := decodeChange(msg.Subject(), msg.Data())
	if err != nil {
		return classified(err)
	}
	ch.Stored, ch.Seq, ch.Delivered = meta.Timestamp, meta.Sequence.Stream, meta.NumDelivered
	if msg.Headers().Get(dlq.HeaderRetryOf) != "" {
		ch.Source = trace.SourceDLQRetry
	}
	res, err := h.w.Apply(ctx, ch)
	if err != nil {
		return classified(err)
	}
	h.w.metrics.messages.WithLabelValues(string(res.Outcome)).Inc()
	h.w.log.Debug("app change written back", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "external_id", ch.ExternalID,
		"outcome", string(res.Outcome), "table", res.Table, "sys_id", res.SysID, "sys_mod_count", res.ModCount, "result", res.Reply.Outcome)
	if res.Reply.Outcome == "" {
		h.w.Record(ch, res, 0)
		return nil // a redelivery whose result the app already has
	}
	resultSeq, err := h.results.publish(ctx, res.Reply, resultMsgID(res.Reply, msg, meta))
	if err != nil {
		// The change is written and its bookmark holds the result: the
		// redelivery publishes that same result under the same id.
		return fmt.Errorf("the change of %s %s v%d is written; its result is not stored yet: %w", ch.Entity, ch.ExternalID, ch.Version, err)
	}
	h.results.forget(retryingID(res.Reply, msg, meta))
	h.w.Record(ch, res, resultSeq)
	return nil
}

func splitAppSubject(subject string) (kind, entity, action string, ok bool) {
	kind, entity, action, ok = events.ParseSubject(subject)
	return kind, entity, action, ok && kind == "app"
}

// decodeChange parses an app.<entity>.<action> message.
func decodeChange(subject string, data []byte) (Change, error) {
	_, entity, action, ok := splitAppSubject(subject)
	if !ok || entity == "" {
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
