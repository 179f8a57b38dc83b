package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/attach"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/reconcile"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/trace"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// snNeed says whether a command talks to ServiceNow.
type snNeed int

const (
	snOff      snNeed = iota // never (replay --stream sn)
	snIfSet                  // when the ServiceNow settings are given (serve)
	snRequired               // the command fails without them (reconcile, replay --stream app, dev)
)

// wireOptions name the parts a command runs beyond the ones every command
// shares (mapping, state, echo cache).
type wireOptions struct {
	Logger *slog.Logger
	// Registerer takes every part's metrics; nil for one-shot tools.
	Registerer prometheus.Registerer
	ServiceNow snNeed
	// Apply builds the apply pipeline with the configured applier
	// (BRIDGE_APPLIER); LinkBack makes the writer its LinkWriter (the app's
	// ids written to each record's link field, claimed as echoes).
	Apply, LinkBack bool
	// Writeback builds the APP_EVENTS consumer over the writer, and with
	// BRIDGE_RESULTS_URL the HTTP delivery of its results.
	Writeback bool
	// Reconcile builds the reconciler; Tune adjusts its settings
	// (bridge reconcile's --page-size and --overlap).
	Reconcile bool
	Tune      func(*reconcile.Config)
	// Attachments builds the attachment pipelines (with the ServiceNow
	// settings; BRIDGE_ATTACHMENT_MAX_BYTES=0 has them refuse the app's
	// files and leave ServiceNow's); the reconciler then checks the
	// attachments of the records it re-reads.
	Attachments bool
}

// bridge is the nowbridge of one configuration, wired once: every command
// (serve, dev, replay, reconcile) takes its parts from wire, so none builds
// a client, a mapping or a writer its own way and none forgets a setting
// (replay once built its writer without the writeback settings).
type bridge struct {
	cfg     config.Config
	log     *slog.Logger
	mapping *mapping.Set
	states  *state.Store
	links   *state.Links
	echoes  *dedupe.Cache
	// trace is the decision log every part records to (bridge trace).
	trace *trace.Recorder

	// With the ServiceNow settings (nil otherwise):
	sn     *snclient.Client
	writer *outbound.Writer

	// The parts asked for in wireOptions (nil otherwise):
	apply      *apply.Runner
	writeback  *outbound.Consumer
	results    *apply.ResultsDelivery // with BRIDGE_RESULTS_URL
	reconciler *reconcile.Reconciler
	attach     *attach.Syncer // with the ServiceNow settings
}

// wire builds the parts o asks for from cfg over js (whose streams and
// buckets exist: broker.EnsureAll). A broken mapping file, a delete
// override no table can follow or a missing setting stops it with an error
// naming what to fix. Close releases what it built.
func wire(ctx context.Context, cfg config.Config, js jetstream.JetStream, o wireOptions) (b *bridge, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b = &bridge{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			b.Close()
			b = nil
		}
	}()
	if b.mapping, err = loadMapping(cfg, log); err != nil {
		return nil, err
	}
	if b.states, b.links, err = state.Open(ctx, js); err != nil {
		return nil, err
	}
	// One echo cache per process, shared by the receiver's echo check, the
	// writeback, the apply pipeline's RecordApplied and reconcile; the
	// mapping tells it each table's journal, derived and insert-filled fields.
	b.echoes = dedupe.New(dedupe.Config{Size: cfg.DedupeSize, TTL: cfg.DedupeTTL, Tables: b.mapping, Registerer: o.Registerer})
	// One decision log per process: the receiver, apply, writeback, the
	// consumers' dead letters, reconcile and replay record to it.
	if b.trace, err = trace.NewRecorder(trace.RecorderConfig{Conn: js.Conn(), Logger: log, Registerer: o.Registerer}); err != nil {
		return nil, err
	}

	switch snErr := cfg.RequireServiceNow(); {
	case o.ServiceNow == snOff:
	case snErr != nil && o.ServiceNow == snRequired:
		return nil, usageError{snErr}
	case snErr != nil:
		log.Warn("ServiceNow is not configured: writeback and reconcile are off; the receiver and the apply pipeline run", "missing", snErr.Error())
	default:
		if err := b.wireServiceNow(o.Registerer, o.ServiceNow == snRequired); err != nil {
			return nil, err
		}
	}

	if o.Apply {
		var link apply.LinkWriter
		if o.LinkBack && b.writer != nil {
			link = b.writer // only when non-nil: a typed nil in the interface would panic
		}
		if b.apply, err = b.newApply(js, link, o.Registerer); err != nil {
			return nil, err
		}
	}
	if o.Writeback && b.writer != nil {
		b.writeback = outbound.NewConsumer(js, b.writer)
		if cfg.ResultsURL != "" {
			if b.results, err = newResultsDelivery(cfg, js, b.trace, log, o.Registerer); err != nil {
				return nil, err
			}
		}
	}
	if o.Attachments && b.sn != nil {
		if b.attach, err = b.newAttach(ctx, js, o.Registerer); err != nil {
			return nil, err
		}
	}
	if o.Reconcile && b.sn != nil {
		if b.reconciler, err = b.newReconciler(js, o.Registerer, o.Tune); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Close sends the decision log's last entries and releases the ServiceNow
// client once the parts stopped.
func (b *bridge) Close() {
	if b == nil {
		return
	}
	b.trace.Close()
	if b.sn != nil {
		_ = b.sn.Close()
	}
}

// loadMapping loads the mapping of each synced table (BRIDGE_TABLES): its
// file in BRIDGE_MAPPING_DIR, else the one nowbridge ships. A broken file
// is an error naming its line.
func loadMapping(cfg config.Config, log *slog.Logger) (*mapping.Set, error) {
	if cfg.MappingDir == "" {
		return mapping.Load(nil, cfg.Tables, log)
	}
	if st, err := os.Stat(cfg.MappingDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("BRIDGE_MAPPING_DIR %s: not a readable directory; point it at the directory holding your <table>.yaml files, or leave it empty for the shipped mappings", cfg.MappingDir)
	}
	return mapping.Load(os.DirFS(cfg.MappingDir), cfg.Tables, log)
}

// wireServiceNow builds the ServiceNow client and the writer with every
// writeback setting. A client the settings cannot make is wrong usage for
// a tool (exit 2), a start-up failure for serve.
func (b *bridge) wireServiceNow(reg prometheus.Registerer, tool bool) error {
	var err error
	if b.sn, err = newSNClient(b.cfg, b.mapping, b.log, reg); err != nil {
		if tool {
			return usageError{err}
		}
		return err
	}
	wcfg := writebackConfig(b.cfg, b.log, reg)
	// A delete override that cannot apply to a synced table stops it here.
	if err := outbound.CheckDelete(b.mapping, b.mapping.Tables(), wcfg); err != nil {
		return err
	}
	b.writer, err = outbound.NewWriter(outbound.Deps{
		API: b.sn, Mapping: b.mapping, States: b.states, Links: b.links, StateKV: b.states.KV(), Dedupe: b.echoes, Trace: b.trace,
	}, wcfg)
	return err
}

// writebackConfig maps the writeback settings onto outbound.Config: the
// delete mode and state overrides, the close code, the conflict policies,
// blind writes and the hand-over grace.
func writebackConfig(cfg config.Config, log *slog.Logger, reg prometheus.Registerer) outbound.Config {
	policies := make(map[string]outbound.Policy, len(cfg.ConflictPolicies))
	for field, p := range cfg.ConflictPolicies {
		policies[field] = outbound.Policy(p)
	}
	return outbound.Config{
		Workers:       cfg.WritebackWorkers,
		DeleteMode:    outbound.DeleteMode(cfg.WritebackDelete),
		DeleteState:   cfg.WritebackDeleteState,
		CloseCode:     cfg.CloseCode,
		DefaultPolicy: outbound.Policy(cfg.ConflictPolicy),
		Policies:      policies,
		BlindWrites:   cfg.WritebackBlind,
		HandOverGrace: cfg.HandOverGrace,
		AckWait:       cfg.WritebackAckWait,
		InstanceURL:   cfg.SNInstanceURL, // the results' record links
		Logger:        log,
		Registerer:    reg,
	}
}

// applyWorkers is the results delivery's worker count (the apply
// pipeline's is apply.DefaultWorkers of its applier).
const applyWorkers = 4

// newApply builds the apply pipeline with the configured applier over the
// shared mapping, state and echo cache.
func (b *bridge) newApply(js jetstream.JetStream, link apply.LinkWriter, reg prometheus.Registerer) (*apply.Runner, error) {
	applier, err := newApplier(b.cfg, js)
	if err != nil {
		return nil, err
	}
	return apply.New(apply.Config{
		JS: js, Applier: applier, Mapping: b.mapping, States: b.states, Links: b.links,
		LinkWriter: link, Applied: b.echoes, Echoes: b.echoes, Trace: b.trace,
		Tuning: consume.Tuning{Workers: apply.DefaultWorkers(applier)},
		Logger: b.log, Registerer: reg,
	})
}

// newApplier is BRIDGE_APPLIER: the NATS applier (bridge.apply.>), or the
// HTTP applier posting to BRIDGE_APPLY_URL signed with BRIDGE_APPLY_SECRET
// (else the first of BRIDGE_WEBHOOK_SECRETS).
func newApplier(cfg config.Config, js jetstream.JetStream) (apply.Applier, error) {
	switch cfg.Applier {
	case "", "nats":
		return &apply.NATSApplier{JS: js}, nil
	case "http":
	default:
		return nil, fmt.Errorf("BRIDGE_APPLIER: must be nats or http, got %q", cfg.Applier)
	}
	secret, err := applySecret(cfg, "the HTTP applier")
	if err != nil {
		return nil, err
	}
	return apply.NewHTTPApplier(cfg.ApplyURL, secret, 0, apply.DefaultHTTPWorkers), nil
}

// applySecret is the secret signing what the bridge POSTs to the app:
// BRIDGE_APPLY_SECRET, else the first of BRIDGE_WEBHOOK_SECRETS.
func applySecret(cfg config.Config, who string) (webhook.Secret, error) {
	if raw := cfg.ApplySecret.Reveal(); raw != "" {
		secret, err := webhook.ParseSecret(raw)
		if err != nil {
			return webhook.Secret{}, fmt.Errorf("BRIDGE_APPLY_SECRET: %w", err)
		}
		return secret, nil
	}
	secrets, err := webhook.ParseSecrets(cfg.WebhookSecrets.Reveal())
	if err != nil {
		return webhook.Secret{}, fmt.Errorf("BRIDGE_WEBHOOK_SECRETS: %w", err)
	}
	if len(secrets) == 0 {
		return webhook.Secret{}, fmt.Errorf("%s signs its requests: set BRIDGE_APPLY_SECRET or BRIDGE_WEBHOOK_SECRETS", who)
	}
	return secrets[0], nil
}

// newResultsDelivery POSTs each result of BRIDGE_RESULTS to
// BRIDGE_RESULTS_URL, signed like the HTTP applier's requests.
func newResultsDelivery(cfg config.Config, js jetstream.JetStream, rec *trace.Recorder, log *slog.Logger, reg prometheus.Registerer) (*apply.ResultsDelivery, error) {
	secret, err := applySecret(cfg, "the results delivery (BRIDGE_RESULTS_URL)")
	if err != nil {
		return nil, err
	}
	return apply.NewResultsDelivery(apply.ResultsConfig{
		JS: js, URL: cfg.ResultsURL, Secret: secret,
		Tuning: consume.Tuning{Workers: applyWorkers}, Trace: rec,
		Logger: log, Registerer: reg,
	})
}

// newReconciler builds the reconciler over the shared client (one rate
// limiter with the writeback), paced to reconcile's share of
// BRIDGE_SN_RATE_LIMIT, with bridge_state for versions, watermarks and
// leases and the mapping's fields of each table.
func (b *bridge) newReconciler(js jetstream.JetStream, reg prometheus.Registerer, tune func(*reconcile.Config)) (*reconcile.Reconciler, error) {
	rc := reconcile.Config{
		Tables:   b.cfg.Tables,
		Fields:   b.mapping.Fields,
		Interval: b.cfg.ReconcileInterval,
		// The presence scan's schedule; bridge reconcile --once --full
		// runs it whatever the interval.
		DeleteScanInterval: b.cfg.DeleteScanInterval,
		Limiter:            reconcile.ClientShare(b.sn), // at most RateShare of the client's learned budget while the writeback is busy
		Echoes:             b.echoes,                    // versions the writeback just wrote
		Trace:              b.trace,                     // gaps and deletes found
		Logger:             b.log,
		Registerer:         reg,
	}
	if u, err := url.Parse(b.cfg.SNInstanceURL); err == nil {
		rc.Instance, _, _ = strings.Cut(u.Hostname(), ".")
	}
	if b.attach != nil {
		rc.Attachments = b.attach // the attachments of the records a pass re-reads
	}
	if tune != nil {
		tune(&rc)
	}
	return reconcile.New(js, b.states.KV(), &reconcile.SNPager{Client: b.sn}, b.states, rc)
}

// newAttach builds the attachment pipelines over the shared client,
// mapping and links, with the attachment limits.
func (b *bridge) newAttach(ctx context.Context, js jetstream.JetStream, reg prometheus.Registerer) (*attach.Syncer, error) {
	kv, err := js.KeyValue(ctx, events.BucketLinks)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", events.BucketLinks, err)
	}
	return attach.New(ctx, attach.Config{
		JS: js, ServiceNow: b.sn, Entities: b.mapping, Links: b.links, LinksKV: kv,
		Limits:      attach.Limits{MaxBytes: b.cfg.AttachmentMaxBytes, Allow: b.cfg.AttachmentTypesAllow, Deny: b.cfg.AttachmentTypesDeny},
		InstanceURL: b.cfg.SNInstanceURL,
		Logger:      b.log, Registerer: reg,
	})
}
