// Package attach syncs the attachments of synced records both ways through
// the JetStream object store bucket bridge_attachments: a ServiceNow file is
// downloaded, stored and verified, then handed to the app on
// bridge.apply.<entity>.attachment; an app's file, put in the bucket and
// announced on app.<entity>.attachment, is uploaded to ServiceNow.
//
// Both directions run on the shared consume engine under the sync owner,
// and decide on one record's files one at a time from one bridge_links
// entry per record (files.go): the same content (digest) on one record is
// one file on the other side, the bridge's own uploads and deletes coming
// back as webhooks are recognised by the ids and digests that entry holds,
// and removed ids are remembered so a replay or redelivery changes nothing.
package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/state"
)

// Pipelines name the dead letters: bridge.dlq.attachment_apply (ServiceNow
// files for the app) and bridge.dlq.attachment_writeback (the app's files
// for ServiceNow).
const (
	PipelineApply     = "attachment_apply"
	PipelineWriteback = "attachment_writeback"
)

// Outcome says what handling one attachment message did.
type Outcome string

// Outcomes.
const (
	OutcomeAdded     Outcome = "added"      // the file went to the other side
	OutcomeRemoved   Outcome = "removed"    // its removal went to the other side
	OutcomeEcho      Outcome = "echo"       // the bridge's own upload or delete, coming back
	OutcomeDuplicate Outcome = "duplicate"  // the other side already has (or still has) this content, or this very message was handled
	OutcomeStale     Outcome = "stale"      // the copy was removed since: a replay or late redelivery
	OutcomeGone      Outcome = "gone"       // ServiceNow no longer has the file
	OutcomeUnknown   Outcome = "unknown"    // a removal of a file the bridge never synced
	OutcomeNotSynced Outcome = "not_synced" // an attachment of a table this bridge does not sync
	OutcomeIgnored   Outcome = "ignored"    // an update of an attachment's record, or attachments off: not synced
)

// Entities names the app entity of each synced table and back
// (*mapping.Set satisfies it).
type Entities interface {
	Entity(table string) (string, bool)
	Table(entity string) (string, bool)
}

// Config wires the attachment pipelines. JS, ServiceNow, Entities, Links
// and LinksKV are required.
type Config struct {
	JS         jetstream.JetStream
	ServiceNow ServiceNow
	Entities   Entities
	Links      *state.Links       // the records' links (external id <-> sys_id)
	LinksKV    jetstream.KeyValue // bridge_links, where each record's files are kept
	Limits     Limits
	// InstanceURL makes the results' record links.
	InstanceURL string

	// Tuning of both consumers; zero values take the engine's defaults,
	// except MaxDeliver (default 100) and HandleTimeout (default 1h: a
	// large file takes its time; in-progress acks keep it owned).
	consume.Tuning

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 100
	}
	if c.HandleTimeout <= 0 {
		c.HandleTimeout = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Syncer is both attachment pipelines. Build it with New; Run consumes.
type Syncer struct {
	cfg      Config
	js       jetstream.JetStream
	sn       ServiceNow
	entities Entities
	links    *state.Links
	files    files
	obj      jetstream.ObjectStore
	limits   Limits
	log      *slog.Logger
	m        *metrics
	locks    recordLocks
	results  resultSink

	toApp, toSN *consume.Engine
}

// New builds the pipelines over the bridge_attachments bucket (which
// broker.EnsureAll creates).
func New(ctx context.Context, cfg Config) (*Syncer, error) {
	if cfg.JS == nil || cfg.ServiceNow == nil || cfg.Entities == nil || cfg.Links == nil || cfg.LinksKV == nil {
		return nil, errors.New("attach: JS, ServiceNow, Entities, Links and LinksKV are all required")
	}
	if cfg.MaxDeliver < 0 {
		return nil, fmt.Errorf("attach: max deliver %d must be positive (0 takes the default, 100)", cfg.MaxDeliver)
	}
	cfg = cfg.withDefaults()
	obj, err := cfg.JS.ObjectStore(ctx, events.BucketAttachments)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w (bridge serve creates it at start)", events.BucketAttachments, err)
	}
	s := &Syncer{
		cfg: cfg, js: cfg.JS, sn: cfg.ServiceNow, entities: cfg.Entities, links: cfg.Links,
		files: files{kv: cfg.LinksKV}, obj: obj, limits: cfg.Limits,
		log: cfg.Logger.With("part", "attachments"), m: newMetrics(cfg.Registerer),
	}
	s.results = resultSink{js: cfg.JS, m: s.m}
	s.toApp, err = consume.New(consume.Config{
		JS: cfg.JS, Stream: events.StreamSN, Pipeline: PipelineApply, Handler: snHandler{s},
		Consumer: jetstream.ConsumerConfig{
			Durable:       "attachment-apply",
			Description:   "ServiceNow attachments stored in bridge_attachments and handed to the SaaS app (nowbridge attachments)",
			FilterSubject: events.SNAttachmentSubjects,
		},
		Tuning: cfg.Tuning, Logger: s.log,
		Metrics: consume.Metrics{Retries: s.m.retries.MustCurryWith(prometheus.Labels{"direction": dirToApp}),
			DeadLetters: s.m.deadLetters.WithLabelValues(dirToApp), Latency: s.m.seconds.WithLabelValues(dirToApp)},
	})
	if err != nil {
		return nil, err
	}
	s.toSN, err = consume.New(consume.Config{
		JS: cfg.JS, Stream: events.StreamApp, Pipeline: PipelineWriteback, Handler: appHandler{s},
		Consumer: jetstream.ConsumerConfig{
			Durable:       "attachment-writeback",
			Description:   "SaaS app attachments uploaded from bridge_attachments to ServiceNow (nowbridge attachments)",
			FilterSubject: events.AppAttachmentSubjects,
		},
		Tuning: cfg.Tuning, Logger: s.log,
		Metrics: consume.Metrics{Retries: s.m.retries.MustCurryWith(prometheus.Labels{"direction": dirToSN}),
			DeadLetters: s.m.deadLetters.WithLabelValues(dirToSN), Latency: s.m.seconds.WithLabelValues(dirToSN)},
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Run consumes both directions until ctx ends, then waits for the files in
// flight (the engine's stop grace). An error means a consumer could not be
// created.
func (s *Syncer) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.toApp.Run(gctx) })
	g.Go(func() error { return s.toSN.Run(gctx) })
	return g.Wait()
}

// lockRecord serialises the work on one record's files.
func (s *Syncer) lockRecord(table, sysID string) func() { return s.locks.lock(table + ":" + sysID) }
