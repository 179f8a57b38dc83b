package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/lease"
)

// ErrLeaseHeld means another replica is reconciling the table right now.
var ErrLeaseHeld = lease.ErrHeld

// LeaseKey is the bridge_state key of a table's reconcile lease.
func LeaseKey(table string) string { return "reconcile.lease." + table }

// AcquireLease takes the table's reconcile lease for holder, or returns an
// error wrapping ErrLeaseHeld that names the current holder.
func AcquireLease(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, table, holder string, ttl time.Duration) (*lease.Lease, error) {
	l, err := lease.Acquire(ctx, js, kv, LeaseKey(table), holder, ttl)
	if err != nil {
		return nil, fmt.Errorf("reconcile of %s: %w", table, err)
	}
	return l, nil
}
