package main

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/lease"
)

// SyncLeaseKey is the bridge_state key of the sync lease.
const SyncLeaseKey = "sync.owner"

// syncOwnership makes one replica at a time the one that acts on records:
// apply, writeback, results delivery and reconcile run only where the sync
// lease is held. All work on a record then happens in one process, so the
// echo and hand-over rules, which live in that process's memory
// (internal/dedupe), hold across replicas, and the versions of a record
// reach the app and ServiceNow in order. Every replica still receives
// webhooks. A replica that dies keeps the lease for BRIDGE_SYNC_LEASE_TTL;
// a clean stop releases it at once (docs/operations.md, "Several replicas,
// one owner").
type syncOwnership struct {
	holding *lease.Holding
	owned   atomic.Bool
}

func newSyncOwnership(js jetstream.JetStream, kv jetstream.KeyValue, cfg config.Config, log *slog.Logger, reg prometheus.Registerer) *syncOwnership {
	o := &syncOwnership{}
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "bridge_sync_owner",
		Help: "1 while this replica holds the sync lease and runs apply, writeback, results delivery and reconcile; 0 on a standby."})
	reg.MustRegister(gauge)
	o.holding = &lease.Holding{
		JS: js, KV: kv, Key: SyncLeaseKey, TTL: cfg.SyncLeaseTTL,
		Name: "sync ownership", What: "apply, writeback, results delivery and reconcile",
		Logger: log,
		Owned: func(owned bool) {
			o.owned.Store(owned)
			if owned {
				gauge.Set(1)
			} else {
				gauge.Set(0)
			}
		},
	}
	return o
}

// Run competes for the lease until ctx ends, running work while holding it.
func (o *syncOwnership) Run(ctx context.Context, work func(context.Context) error) error {
	return o.holding.Run(ctx, work)
}

// runSynced runs the record-acting components until ctx ends or one fails.
// A component that stops because its context ended (ownership lost) is not
// a failure.
func runSynced(ctx context.Context, components []component, log *slog.Logger) error {
	err := runComponents(ctx, components, log)
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		return nil
	}
	return err
}
