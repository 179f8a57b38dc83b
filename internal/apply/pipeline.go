package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/state"
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
)

// Runner is the pipeline: a durable pull consumer on SN_EVENTS and the
// path one event takes to the app. Build it with New; Run consumes.
type Runner struct {
	cfg     Config
	js      jetstream.JetStream
	applier Applier
	mapping *mapping.Set
	states  *state.Store
	links   *state.Links
	log     *slog.Logger
	metrics *metrics
	seed    maphash.Seed

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
	return &Runner{
		cfg: cfg, js: cfg.JS, applier: cfg.Applier, mapping: cfg.Mapping, states: cfg.States, links: cfg.Links,
		log: cfg.Logger.With("pipeline", Pipeline, "applier", cfg.Applier.Name()), metrics: newMetrics(cfg.Registerer, cfg.Applier.Name()),
		seed: maphash.MakeSeed(),
	}, nil
}

// ConsumerConfig is the durable consumer's definition.
func (r *Runner) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       r.cfg.Durable,
		Description:   "ServiceNow changes applied to the SaaS app (nowbridge apply, " + r.applier.Name() + " applier)",
		FilterSubject: events.SNSubjects,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       r.cfg.BackOff[0],
		BackOff:       r.cfg.BackOff,
		MaxDeliver:    r.cfg.MaxDeliver,
		MaxAckPending: r.cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// Run consumes SN_EVENTS until ctx ends. It then stops pulling, hands the
// messages not yet started back to JetStream, and waits for the ones being
// applied to finish (each bounded by HandleTimeout).
func (r *Runner) Run(ctx context.Context) error {
	queues := make([]chan jetstream.Msg, r.cfg.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan jetstream.Msg, r.cfg.Batch)
		wg.Go(func() { r.work(ctx, queues[i]) })
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()
	first := true
	for ctx.Err() == nil {
		err := r.consume(ctx, queues)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if first && errors.Is(err, errCreateConsumer) {
			return err // a wrong setup shows at start-up, not as an endless retry
		}
		first = false
		r.log.Warn("apply consumer interrupted; restarting", "err", err)
		sleep(ctx, time.Second)
	}
	return nil
}

var errCreateConsumer = errors.New("create apply consumer")

// consume pulls messages and routes each to its record's worker until ctx
// ends (nil) or the subscription fails (the error).
func (r *Runner) consume(ctx context.Context, queues []chan jetstream.Msg) error {
	cons, err := r.js.CreateOrUpdateConsumer(ctx, events.StreamSN, r.ConsumerConfig())
	if err != nil {
		return fmt.Errorf("%w %s on %s: %w", errCreateConsumer, r.cfg.Durable, events.StreamSN, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(r.cfg.Batch))
	if err != nil {
		return fmt.Errorf("pull from %s: %w", events.StreamSN, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	defer it.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("pull from %s: iterator closed", events.StreamSN)
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				r.log.Debug("apply pull missed heartbeats; still waiting", "err", err)
				continue
			}
			return fmt.Errorf("pull from %s: %w", events.StreamSN, err)
		}
		if ctx.Err() != nil {
			_ = msg.Nak() // drained after stop: redelivered to whoever runs next
			continue
		}
		queues[r.shard(msg)] <- msg
	}
}

// shard sends one record always to the same worker, so its versions are
// applied in stream order. The record comes from the Nats-Msg-Id
// (<table>:<sys_id>:<count>:<action>), or the body when that is missing.
func (r *Runner) shard(msg jetstream.Msg) int {
	key := ""
	if _, table, _, ok := events.ParseSubject(msg.Subject()); ok {
		// A replay or a DLQ retry carries an id of its own: trust only
		// the receiver's and reconcile's form.
		parts := strings.Split(msg.Headers().Get(events.HeaderMsgID), ":")
		if len(parts) == 4 && parts[0] == table && events.ValidSysID(parts[1]) {
			key = table + ":" + parts[1]
		}
	}
	if key == "" {
		var probe struct {
			Table string `json:"table"`
			SysID string `json:"sys_id"`
		}
		_ = json.Unmarshal(msg.Data(), &probe)
		key = probe.Table + ":" + probe.SysID
	}
	return int(maphash.String(r.seed, key) % uint64(r.cfg.Workers))
}

// waiting holds, per record, the messages handed back to JetStream for a
// later retry (by stream sequence): a message of the record with a higher
// sequence waits behind them instead of overtaking them, so versions reach
// the app in stream order even though JetStream redelivers naked messages in
// no particular order. An entry lapses when its message does not come back
// in time (another replica may have taken it over).
type waiting map[string]map[uint64]retryAt

type retryAt struct {
	at    time.Time // when JetStream redelivers it
	until time.Time // when the entry lapses
}

// earlier returns the first still-waiting message of key before seq.
func (w waiting) earlier(key string, seq uint64, now time.Time) (retryAt, bool) {
	var first retryAt
	found := false
	for s, e := range w[key] {
		if now.After(e.until) {
			delete(w[key], s)
			continue
		}
		if s < seq && (!found || e.at.Before(first.at)) {
			first, found = e, true
		}
	}
	if len(w[key]) == 0 {
		delete(w, key)
	}
	return first, found
}

func (w waiting) add(key string, seq uint64, delay, lapse time.Duration) {
	if w[key] == nil {
		w[key] = map[uint64]retryAt{}
	}
	now := time.Now()
	w[key][seq] = retryAt{at: now.Add(delay), until: now.Add(delay + lapse)}
}

func (w waiting) done(key string, seq uint64) {
	delete(w[key], seq)
	if len(w[key]) == 0 {
		delete(w, key)
	}
}

func (r *Runner) work(ctx context.Context, q <-chan jetstream.Msg) {
	w := waiting{}
	for msg := range q {
		if ctx.Err() != nil {
			_ = msg.Nak()
			continue
		}
		r.handleMsg(ctx, msg, w)
	}
}

func (r *Runner) handleMsg(ctx context.Context, msg jetstream.Msg, w waiting) {
	meta, err := msg.Metadata()
	if err != nil {
		r.log.Error("message without JetStream metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	seq := meta.Sequence.Stream
	if meta.NumDelivered > 1 {
		r.metrics.redelivered.Inc()
	}
	var ev events.SNEvent
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		r.deadLetter(ctx, msg, meta, permanentf("decode ServiceNow event: %v", err))
		return
	}
	if !events.ValidTable(ev.Table) || !events.ValidSysID(ev.SysID) {
		r.deadLetter(ctx, msg, meta, permanentf("event has no valid table/sys_id (%q/%q)", ev.Table, ev.SysID))
		return
	}
	key := ev.Table + ":" + ev.SysID
	if first, ok := w.earlier(key, seq, time.Now()); ok {
		if int(meta.NumDelivered) >= r.cfg.MaxDeliver {
			w.done(key, seq)
			r.deadLetter(ctx, msg, meta, fmt.Errorf("gave up after %d deliveries waiting behind an earlier version of the record that kept failing", meta.NumDelivered))
			return
		}
		delay := max(time.Until(first.at), 0) + r.cfg.RetryBase/2
		w.add(key, seq, delay, r.cfg.BackOff[0])
		r.metrics.retries.WithLabelValues("ordering").Inc()
		_ = msg.NakWithDelay(delay)
		return
	}
	// The effect, once started, finishes even when Run is stopping: an
	// abandoned call would only be redone by the next owner.
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.HandleTimeout)
	start := time.Now()
	out, err := r.Handle(hctx, &ev)
	cancel()
	r.metrics.latency.Observe(time.Since(start).Seconds())
	log := func() *slog.Logger {
		return r.log.With("subject", msg.Subject(), "seq", seq, "table", ev.Table, "sys_id", ev.SysID, "sys_mod_count", int64(ev.SysModCount))
	}
	if err == nil {
		w.done(key, seq)
		if r.log.Enabled(ctx, slog.LevelDebug) {
			log().Debug("event handled", "outcome", string(out))
		}
		if err := msg.Ack(); err != nil {
			log().Warn("ack failed; the event will be redelivered and found applied", "err", err)
		}
		return
	}
	if isPermanent(err) {
		w.done(key, seq)
		r.deadLetter(ctx, msg, meta, err)
		return
	}
	if int(meta.NumDelivered) >= r.cfg.MaxDeliver {
		w.done(key, seq)
		r.deadLetter(ctx, msg, meta, fmt.Errorf("gave up after %d deliveries: %w", meta.NumDelivered, err))
		return
	}
	delay := r.backoff(meta.NumDelivered)
	var ae *Error
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		delay = min(max(delay, ae.RetryAfter), r.cfg.RetryMax)
	}
	w.add(key, seq, delay, r.cfg.BackOff[0])
	reason := retryReason(err)
	r.metrics.retries.WithLabelValues(reason).Inc()
	log().Warn("apply failed; will retry", "reason", reason, "delivered", meta.NumDelivered, "retry_in", delay, "err", err)
	_ = msg.NakWithDelay(delay)
}

func retryReason(err error) string {
	var ae *Error
	switch {
	case errors.As(err, &ae) && ae.Status == 429:
		return "app_status_429"
	case errors.As(err, &ae) && ae.Status != 0:
		return "app_status_" + strconv.Itoa(ae.Status/100) + "xx"
	case errors.As(err, &ae):
		return "network"
	}
	return "state"
}

// backoff is exponential in the delivery count, with jitter between half
// and all of the step, capped at RetryMax.
func (r *Runner) backoff(delivered uint64) time.Duration {
	d := r.cfg.RetryBase
	for i := uint64(1); i < delivered && d < r.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, r.cfg.RetryMax)
	return d/2 + rand.N(d/2+1)
}

// Handle applies one event: version guard, mapping, the applier, link and
// state. It is what the consumer runs per message, and what `bridge replay
// --stream sn` can call directly. Errors are *Error (see Permanent) or
// bridge_state/bridge_links failures, which are worth retrying.
func (r *Runner) Handle(ctx context.Context, ev *events.SNEvent) (Outcome, error) {
	return r.handle(ctx, ev, false)
}

// HandleForced applies the event even when the version guard would skip it
// (`bridge replay --force`). bridge_state still never moves backwards; and
// the NATS applier's BRIDGE_APPLY drops a version it stored within its
// duplicate window (outcome "duplicate").
func (r *Runner) HandleForced(ctx context.Context, ev *events.SNEvent) (Outcome, error) {
	return r.handle(ctx, ev, true)
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

func (r *Runner) handle(ctx context.Context, ev *events.SNEvent, force bool) (Outcome, error) {
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
		return OutcomeStale, nil
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
		return out, nil // forced replay of an older version: the state stays
	}
	if err := r.advance(ctx, tbl, ev, cur, rev, have); err != nil {
		return "", err
	}
	// After the state write, so the writeback finds the version it builds
	// on and claims its correlation write as an echo.
	if fixCorrelation && r.cfg.LinkWriter != nil && ev.Action != events.ActionDelete {
		r.writeCorrelation(ctx, ev.Table, ev.SysID, externalID)
	}
	return out, nil
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

// Link stores that the app's (entity, externalID) is the ServiceNow record
// (table, sysID) in bridge_links and, with a LinkWriter, on the record's
// correlation_id unless current (the record's correlation_id, when known)
// already says so. The writeback calls it when the app's message links a
// record created in ServiceNow (it carries the sys_id).
func (r *Runner) Link(ctx context.Context, entity, externalID, table, sysID, current string) error {
	if err := r.links.Link(ctx, entity, externalID, table, sysID); err != nil {
		return err
	}
	r.log.Info("record linked", "table", table, "sys_id", sysID, "entity", entity, "external_id", externalID)
	if r.cfg.LinkWriter != nil && strings.TrimSpace(current) != externalID {
		r.writeCorrelation(ctx, table, sysID, externalID)
	}
	return nil
}

// writeCorrelation is best effort: bridge_links has the link; a failure is
// retried when the record's next event shows its correlation_id still differs.
func (r *Runner) writeCorrelation(ctx context.Context, table, sysID, externalID string) {
	if err := r.cfg.LinkWriter.SetCorrelation(ctx, table, sysID, externalID); err != nil {
		r.log.Warn("correlation_id not written to ServiceNow; retried on the record's next event",
			"table", table, "sys_id", sysID, "external_id", externalID, "err", err)
	}
}

// deadLetter stores the message in BRIDGE_DLQ with why, then terminates it.
func (r *Runner) deadLetter(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, cause error) {
	f := dlq.Failure{Reason: cause.Error()}
	var ae *Error
	if errors.As(cause, &ae) {
		f.Status, f.Response = ae.Status, ae.Body
		if ae.Status >= 400 && ae.Status < 500 {
			f.Hint = "the app rejected this version; fix the app or the mapping, then `bridge dlq retry`"
		}
	}
	out := dlq.NewMessage(Pipeline, msg, meta, f)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := r.js.PublishMsg(pctx, out); err != nil {
		r.log.Error("dead letter not stored; the event stays in SN_EVENTS for retry", "seq", meta.Sequence.Stream, "err", err)
		_ = msg.NakWithDelay(r.cfg.RetryMax)
		return
	}
	r.metrics.dlq.Inc()
	r.log.Error("event dead-lettered (see `bridge dlq ls`)", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "reason", cause.Error())
	_ = msg.Term()
}

// oneLine makes s safe for a NATS header value.
func oneLine(s string, limit int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit], "") + "…"
	}
	return s
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
