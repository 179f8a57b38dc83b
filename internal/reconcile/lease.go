package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// ErrLeaseHeld means another replica is reconciling the table right now.
var ErrLeaseHeld = errors.New("reconcile lease held by another replica")

// leaseValue is what a lease key holds: who has it and until when (for
// people reading the bucket; expiry itself is the KV entry's TTL).
type leaseValue struct {
	Holder  string    `json:"holder"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
}

// Lease is one replica's exclusive right to reconcile one table. It is a
// bridge_state entry created only if absent and renewed by revision, each
// write carrying a per-message TTL, so a crashed holder's lease disappears on
// its own after the TTL.
type Lease struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	key    string
	holder string
	ttl    time.Duration
	since  time.Time
	rev    uint64
}

// LeaseKey is the bridge_state key of a table's reconcile lease.
func LeaseKey(table string) string { return "reconcile.lease." + table }

// AcquireLease takes the table's lease for holder, or returns an error
// wrapping ErrLeaseHeld that names the current holder.
func AcquireLease(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, table, holder string, ttl time.Duration) (*Lease, error) {
	l := &Lease{js: js, kv: kv, key: LeaseKey(table), holder: holder, ttl: ttl, since: time.Now().UTC()}
	rev, err := kv.Create(ctx, l.key, l.value(), jetstream.KeyTTL(ttl))
	if err == nil {
		l.rev = rev
		return l, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("acquire reconcile lease %s: %w", l.key, err)
	}
	e, gerr := kv.Get(ctx, l.key)
	if gerr != nil {
		// Expired or released between the two calls: the next pass retries.
		return nil, fmt.Errorf("%w (table %s)", ErrLeaseHeld, table)
	}
	var v leaseValue
	_ = json.Unmarshal(e.Value(), &v)
	return nil, fmt.Errorf("%w (table %s, holder %s, expires %s)", ErrLeaseHeld, table, v.Holder, v.Expires.Format(time.RFC3339))
}

func (l *Lease) value() []byte {
	b, _ := json.Marshal(leaseValue{Holder: l.holder, Since: l.since, Expires: time.Now().UTC().Add(l.ttl)})
	return b
}

// Renew extends the lease by its TTL. It fails when the lease expired or
// someone else took it: the holder must stop working on the table.
func (l *Lease) Renew(ctx context.Context) error {
	subject := "$KV." + events.BucketState + "." + l.key
	ack, err := l.js.Publish(ctx, subject, l.value(),
		jetstream.WithExpectLastSequencePerSubject(l.rev), jetstream.WithMsgTTL(l.ttl))
	if err != nil {
		return fmt.Errorf("renew reconcile lease %s: %w", l.key, err)
	}
	l.rev = ack.Sequence
	return nil
}

// Release gives the lease up if it is still ours.
func (l *Lease) Release(ctx context.Context) error {
	return l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
}
