package apply

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// Pipeline is the DLQ pipeline name: dead letters go to bridge.dlq.apply.
const Pipeline = "apply"

// HeaderDLQResponse carries the app's response body on a dead letter
// (newlines folded, at most 2 KiB).
const HeaderDLQResponse = events.HeaderDLQResponse

// Outcome says what handling one event did.
type Outcome string

// Outcomes.
const (
	OutcomeApplied      Outcome = "applied"       // the app has the version
	OutcomeDuplicate    Outcome = "duplicate"     // the app had this very message already
	OutcomeAlreadyNewer Outcome = "already_newer" // the app holds a newer version (409)
	OutcomeStale        Outcome = "stale"         // bridge_state holds this version or a newer one
	OutcomeEcho         Outcome = "echo"          // the version is the writeback's own write (Config.Echoes)
)

// Runner is the pipeline: a durable pull consumer on SN_EVENTS (the shared
// consume engine) and the path one event takes to the app. Build it with
// New; Run consumes.
type Runner struct {
	cfg     Config
	applier Applier
	mapping *mapping.Set
	states  *state.Store
	links   *state.Links
	log     *slog.Logger
	metrics *metrics
	engine  *consume.Engine

	// afterApply runs between the app call and the state write (tests
	// simulate a crash there).
	afterApply func(*Message)
}

// New validates cfg and builds the pipeline.
func New(cfg Config) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	r := &Runner{
		cfg: cfg, applier: cfg.Applier, mapping: cfg.Mapping, states: cfg.States, links: cfg.Links,
		log: cfg.Logger.With("pipeline", Pipeline, "applier", cfg.Applier.Name()), metrics: newMetrics(cfg.Registerer, cfg.Applier.Name()),
	}
	eng, err := consume.New(consume.Config{
		JS: cfg.JS, Stream: events.StreamSN, Pipeline: Pipeline, Handler: handler{r},
		Consumer: jetstream.ConsumerConfig{
			Durable:       cfg.Durable,
			Description:   "ServiceNow changes applied to the SaaS app (nowbridge apply, " + cfg.Applier.Name() + " applier)",
			FilterSubject: events.SNSubjects,
		},
		Tuning: cfg.Tuning,
		Logger: cfg.Logger.With("applier", cfg.Applier.Name()),
		Metrics: consume.Metrics{
			Retries: r.metrics.retries, DeadLetters: r.metrics.dlq, Redelivered: r.metrics.redelivered, Latency: r.metrics.latency,
		},
		Trace: cfg.Trace,
	})
	if err != nil {
		return nil, err
	}
	r.engine = eng
	return r, nil
}

// Run consumes SN_EVENTS until ctx ends. It then stops pulling, hands the
// messages not yet started back to JetStream, and waits for the ones being
// applied to finish. An error means the consumer could not be created.
func (r *Runner) Run(ctx context.Context) error { return r.engine.Run(ctx) }

// handler is the apply pipeline's part in the consume engine.
type handler struct{ r *Runner }

// Key is the record: table and sys_id from the Nats-Msg-Id
// (<table>:<sys_id>:<count>:<action>), or from the body when that is
// missing.
func (h handler) Key(msg jetstream.Msg) string {
	if _, table, _, ok := events.ParseSubject(msg.Subject()); ok {
		// A replay or a DLQ retry carries an id of its own: trust only
		// the receiver's and reconcile's form.
		parts := strings.Split(msg.Headers().Get(events.HeaderMsgID), ":")
		if len(parts) == 4 && parts[0] == table && events.ValidSysID(parts[1]) {
			return table + ":" + parts[1]
		}
	}
	var probe struct {
		Table string `json:"table"`
		SysID string `json:"sys_id"`
	}
	if json.Unmarshal(msg.Data(), &probe) != nil || probe.SysID == "" {
		return ""
	}
	return probe.Table + ":" + probe.SysID
}

// Handle decodes the event and applies it.
func (h handler) Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	r := h.r
	if strings.HasPrefix(msg.Subject(), "sn."+events.TableAttachment+".") {
		return nil // a file, not a record version: the attachment pipeline's (internal/attach)
	}
	var ev events.SNEvent
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		return permanentf("decode ServiceNow event: %v", err)
	}
	if !events.ValidTable(ev.Table) || !events.ValidSysID(ev.SysID) {
		return permanentf("event has no valid table/sys_id (%q/%q)", ev.Table, ev.SysID)
	}
	out, err := r.handle(ctx, &ev, false, origin{source: trace.SourceOf(msg.Headers(), ev.Source), seq: meta.Sequence.Stream, stored: meta.Timestamp})
	if err == nil && r.log.Enabled(ctx, slog.LevelDebug) {
		r.log.Debug("event handled", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "table", ev.Table, "sys_id", ev.SysID,
			"sys_mod_count", int64(ev.SysModCount), "outcome", string(out))
	}
	return err
}

// Handle applies one event: version guard, mapping, the applier, link and
// state. It is what the consumer runs per message, and what `bridge replay
// --stream sn` can call directly. Errors are classified for consume.Classify:
// the applier's (the app's answer), consume.Permanent ones (an unmappable
// event), or bridge_state/bridge_links failures, which are worth retrying.
func (r *Runner) Handle(ctx context.Context, ev *events.SNEvent) (Outcome, error) {
	return r.handle(ctx, ev, false, origin{source: trace.SourceOf(nil, ev.Source)})
}

// HandleForced applies the event even when the version guard would skip it
// (`bridge replay --force`). bridge_state still never moves backwards; and
// the NATS applier's BRIDGE_APPLY drops a version it stored within its
// duplicate window (outcome "duplicate").
func (r *Runner) HandleForced(ctx context.Context, ev *events.SNEvent) (Outcome, error) {
	return r.handle(ctx, ev, true, origin{source: trace.SourceOf(nil, ev.Source)})
}

// Replay applies ev, read from SN_EVENTS at seq (stored then) by `bridge
// replay`, as Handle does (HandleForced with force); the decision log
// records it with the source replay. A failure is recorded too: nothing
// retries a replay.
func (r *Runner) Replay(ctx context.Context, ev *events.SNEvent, seq uint64, stored time.Time, force bool) (Outcome, error) {
	org := origin{source: trace.SourceReplay, seq: seq, stored: stored}
	out, err := r.handle(ctx, ev, force, org)
	if err != nil {
		e := r.entry(ev, org, trace.Failed, nil, 0)
		e.Reason = err.Error()
		r.cfg.Trace.Record(e)
	}
	return out, err
}

// RecordReplaySkip records in the decision log that `bridge replay` left
// ev (SN_EVENTS seq, stored then) to the version guard, which said why.
func (r *Runner) RecordReplaySkip(ev *events.SNEvent, seq uint64, stored time.Time, why string) {
	if r.cfg.Trace == nil {
		return
	}
	e := r.entry(ev, origin{source: trace.SourceReplay, seq: seq, stored: stored}, trace.Stale, nil, 0)
	e.Reason = "skipped by the version guard: " + why
	r.cfg.Trace.Record(e)
}

// origin is where the event handled came from, for the decision log: its
// source (webhook, reconcile, dlq_retry, replay), its SN_EVENTS sequence
// and when SN_EVENTS stored it (zero when unknown).
type origin struct {
	source string
	seq    uint64
	stored time.Time
}

// entry is the decision log entry of ev's outcome; applySeq is the
// message's BRIDGE_APPLY sequence (0: none).
func (r *Runner) entry(ev *events.SNEvent, org origin, decision string, m *Message, applySeq uint64) trace.Entry {
	e := trace.Entry{
		Stage: trace.StageApply, Source: org.source, Table: ev.Table, SysID: ev.SysID, Number: ev.Record["number"],
		Action: ev.Action, Version: int64(ev.SysModCount), Decision: decision, Stored: org.stored,
	}
	if m != nil {
		e.Entity, e.ExternalID = m.Entity, m.ExternalID
	}
	if org.seq != 0 || applySeq != 0 {
		e.Refs = make([]trace.Ref, 0, 2)
		if applySeq != 0 {
			e.Refs = append(e.Refs, trace.Ref{Stream: events.StreamApply, Seq: applySeq})
		}
		if org.seq != 0 {
			e.Refs = append(e.Refs, trace.Ref{Stream: events.StreamSN, Seq: org.seq})
		}
	}
	return e
}

// Stale asks the version guard alone: stale is true when bridge_state
// already holds the event's version or a newer one (applied is that version).
func (r *Runner) Stale(ctx context.Context, ev *events.SNEvent) (stale bool, applied int64, err error) {
	cur, _, have, err := r.states.Get(ctx, ev.Table, ev.SysID)
	if err != nil || !have {
		return false, 0, err
	}
	return !cur.Supersedes(int64(ev.SysModCount), ev.Action), cur.Version, nil
}

func (r *Runner) handle(ctx context.Context, ev *events.SNEvent, force bool, org origin) (Outcome, error) {
	tbl, ok := r.mapping.ForTable(ev.Table)
	if !ok {
		return "", permanentf("table %s has no mapping: add a file for it to BRIDGE_MAPPING_DIR or remove it from BRIDGE_TABLES", ev.Table)
	}
	version := int64(ev.SysModCount)
	cur, rev, have, err := r.states.Get(ctx, ev.Table, ev.SysID)
	if err != nil {
		return "", err
	}
	if have && !cur.Supersedes(version, ev.Action) && !force {
		r.metrics.stale.Inc()
		r.log.Debug("stale event skipped", "table", ev.Table, "sys_id", ev.SysID, "sys_mod_count", version, "applied_version", cur.Version)
		if r.cfg.Trace != nil {
			e := r.entry(ev, org, trace.Stale, nil, 0)
			e.Reason = staleReason(cur)
			r.cfg.Trace.Record(e)
		}
		return OutcomeStale, nil
	}
	if !force && ev.Source == events.SourceWebhook && r.cfg.Echoes != nil && r.cfg.Echoes.IsEcho(ev) {
		// Stored by a replica whose receiver did not know the write (the
		// owner made it): its echo is recognised here, where it is known.
		r.log.Debug("echo of our own write not applied", "table", ev.Table, "sys_id", ev.SysID, "sys_mod_count", version)
		if r.cfg.Trace != nil {
			e := r.entry(ev, org, trace.EchoSuppressed, nil, 0)
			e.Reason = "the writeback's own write (stored by a replica whose receiver did not know it): not handed to the app"
			r.cfg.Trace.Record(e)
		}
		return OutcomeEcho, nil
	}
	entity, fields, err := r.mapping.ToSaaS(ev.Table, ev.Record)
	if err != nil {
		return "", permanentf("map %s/%s: %v", ev.Table, ev.SysID, err)
	}
	externalID, fixCorrelation, err := r.externalID(ctx, tbl, ev)
	if err != nil {
		return "", err
	}
	updatedAt, _ := ev.UpdatedAt()
	m := &Message{
		Entity: entity,
		Action: ev.Action,
		AppChange: events.AppChange{
			ExternalID: externalID, SysID: ev.SysID, Number: ev.Record["number"], Table: ev.Table,
			Version: version, UpdatedAt: updatedAt, Fields: fields,
		},
		MsgID: events.ApplyMsgID(ev.Table, ev.SysID, version, ev.Action),
	}
	res, err := r.applier.Apply(ctx, m)
	if err != nil {
		return "", err
	}
	if r.afterApply != nil {
		r.afterApply(m)
	}
	out := OutcomeApplied
	switch {
	case res.AlreadyNewer:
		out = OutcomeAlreadyNewer
		r.metrics.newer.Inc()
	case res.Duplicate:
		out = OutcomeDuplicate
		r.metrics.duplicates.Inc()
	default:
		r.metrics.applied.WithLabelValues(r.applier.Name(), ev.Action).Inc()
	}
	if res.ExternalID != "" && res.ExternalID != externalID {
		// Linked before the state moves: a redelivery after a failure here
		// must not find the version applied and skip the link.
		if err := r.links.Link(ctx, entity, res.ExternalID, ev.Table, ev.SysID); err != nil {
			return "", err
		}
		r.log.Info("record linked from the app's response", "table", ev.Table, "sys_id", ev.SysID, "entity", entity, "external_id", res.ExternalID)
		externalID = res.ExternalID
		fixCorrelation = strings.TrimSpace(ev.Record[tbl.LinkField]) != externalID
	}
	if r.cfg.Applied != nil && externalID != "" && !res.AlreadyNewer {
		r.cfg.Applied.RecordApplied(entity, externalID, fields)
	}
	if have && !cur.Supersedes(version, ev.Action) {
		r.traceOutcome(ev, org, out, m, res, "forced past the version guard ("+staleReason(cur)+"); bridge_state stays")
		return out, nil // forced replay of an older version: the state stays
	}
	if err := r.advance(ctx, tbl, ev, cur, rev, have); err != nil {
		return "", err
	}
	r.traceOutcome(ev, org, out, m, res, "")
	// After the state write, so the writeback finds the version it builds
	// on and claims its correlation write as an echo.
	if fixCorrelation && r.cfg.LinkWriter != nil && ev.Action != events.ActionDelete {
		r.writeCorrelation(ctx, ev.Table, ev.SysID, externalID)
	}
	return out, nil
}

// traceOutcome records what the app did with the version handed to it,
// with its BRIDGE_APPLY sequence when the applier has one.
func (r *Runner) traceOutcome(ev *events.SNEvent, org origin, out Outcome, m *Message, res Result, reason string) {
	if r.cfg.Trace == nil {
		return
	}
	decision := trace.Applied
	switch out {
	case OutcomeDuplicate:
		decision = trace.Duplicate
		reason = joinReason("BRIDGE_APPLY already held this message id: the app has it", reason)
	case OutcomeAlreadyNewer:
		decision = trace.AlreadyNewer
		reason = joinReason("the app answered 409: it holds a newer version", reason)
	}
	e := r.entry(ev, org, decision, m, res.Seq)
	e.Reason = reason
	if res.ExternalID != "" {
		e.ExternalID = res.ExternalID // linked from the app's answer
	}
	r.cfg.Trace.Record(e)
}

func staleReason(cur state.Record) string {
	if cur.Deleted {
		return "bridge_state holds the delete of v" + strconv.FormatInt(cur.Version, 10)
	}
	return "bridge_state holds v" + strconv.FormatInt(cur.Version, 10)
}

func joinReason(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; " + b
}

// advance moves bridge_state to the event's version, never backwards.
func (r *Runner) advance(ctx context.Context, tbl *mapping.Table, ev *events.SNEvent, cur state.Record, rev uint64, have bool) error {
	version := int64(ev.SysModCount)
	next := state.Record{Version: version, UpdatedOn: ev.SysUpdatedOn, Fields: snFields(tbl, ev.Record), Deleted: ev.Action == events.ActionDelete}
	if have && len(cur.Fields) > 0 {
		merged := maps.Clone(cur.Fields)
		maps.Copy(merged, next.Fields)
		next.Fields = merged
	}
	if err := r.states.Put(ctx, ev.Table, ev.SysID, next, rev); err != nil {
		if !errors.Is(err, state.ErrConflict) {
			return err
		}
		if _, err := r.states.Advance(ctx, ev.Table, ev.SysID, next); err != nil {
			return err
		}
	}
	return nil
}

// snFields keeps the ServiceNow values the mapping reads: the base the
// writeback compares the app's next change with.
func snFields(tbl *mapping.Table, record events.Fields) map[string]string {
	out := make(map[string]string, len(tbl.Fields)+2)
	for _, f := range tbl.ReadFields() {
		if v, ok := record[f]; ok {
			out[f] = v
		}
	}
	return out
}

// externalID finds the app's id for a record: bridge_links, else the
// record's link field (correlation_id), which restores a lost link. "" means
// the app has not linked the record yet. fixCorrelation is true when the
// record shows a link field that disagrees with bridge_links (it lost, or
// never got, its correlation_id).
func (r *Runner) externalID(ctx context.Context, tbl *mapping.Table, ev *events.SNEvent) (id string, fixCorrelation bool, err error) {
	_, id, ok, err := r.links.ExternalID(ctx, ev.Table, ev.SysID)
	if err != nil {
		return "", false, err
	}
	corr, hasCorr := ev.Record[tbl.LinkField]
	corr = strings.TrimSpace(corr)
	if ok {
		return id, tbl.LinkField != "" && hasCorr && corr != id, nil
	}
	if tbl.LinkField == "" || corr == "" {
		return "", false, nil
	}
	if err := r.links.Link(ctx, tbl.Entity, corr, ev.Table, ev.SysID); err != nil {
		return "", false, err
	}
	r.log.Info("link restored from the record's link field", "table", ev.Table, "sys_id", ev.SysID, "external_id", corr, "field", tbl.LinkField)
	return corr, false, nil
}

// writeCorrelation is best effort: bridge_links has the link; a failure is
// retried when the record's next event shows its correlation_id still differs.
func (r *Runner) writeCorrelation(ctx context.Context, table, sysID, externalID string) {
	if err := r.cfg.LinkWriter.SetCorrelation(ctx, table, sysID, externalID); err != nil {
		r.log.Warn("correlation_id not written to ServiceNow; retried on the record's next event",
			"table", table, "sys_id", sysID, "external_id", externalID, "err", err)
	}
}
