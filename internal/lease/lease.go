// Package lease gives one bridge replica at a time the right to some work —
// reconciling a table, or owning apply and writeback — through an entry of the
// bridge_state KV bucket. The entry is created only if absent, renewed by
// revision and written with a per-message TTL each time, so a holder that dies
// loses it on its own after the TTL and nothing but JetStream coordinates.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrHeld means another replica holds the lease.
var ErrHeld = errors.New("lease held by another replica")

// value is what a lease entry holds, for people reading the bucket; expiry
// itself is the entry's TTL.
type value struct {
	Holder  string    `json:"holder"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
}

// Lease is one holder's exclusive right to the work named by its key.
type Lease struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	key    string
	holder string
	ttl    time.Duration
	since  time.Time
	rev    uint64
}

// DefaultHolder names this process for leases: host, pid and a random part,
// so two processes never share a name, even across restarts.
func DefaultHolder() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Acquire takes the lease at key for holder, or returns an error wrapping
// ErrHeld that names the current holder. The bucket must allow per-message
// TTLs (bridge_state does).
func Acquire(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, key, holder string, ttl time.Duration) (*Lease, error) {
	l := &Lease{js: js, kv: kv, key: key, holder: holder, ttl: ttl, since: time.Now().UTC()}
	rev, err := kv.Create(ctx, key, l.value(), jetstream.KeyTTL(ttl))
	if err == nil {
		l.rev = rev
		return l, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		// The entry may have been stored with the answer lost (ctx ended
		// on the way): take it back out rather than hold it unknowingly
		// until it expires.
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if rev, ours := l.stillOurs(bg); ours {
			_ = kv.Delete(bg, key, jetstream.LastRevision(rev))
		}
		return nil, fmt.Errorf("acquire lease %s: %w", key, err)
	}
	e, gerr := kv.Get(ctx, key)
	if gerr != nil {
		// Expired or released between the two calls: the next try takes it.
		return nil, fmt.Errorf("%w (%s)", ErrHeld, key)
	}
	var v value
	_ = json.Unmarshal(e.Value(), &v)
	return nil, fmt.Errorf("%w (%s, holder %s, expires %s)", ErrHeld, key, v.Holder, v.Expires.Format(time.RFC3339))
}

func (l *Lease) value() []byte {
	b, _ := json.Marshal(value{Holder: l.holder, Since: l.since, Expires: time.Now().UTC().Add(l.ttl)})
	return b
}

// Key is the lease's bridge_state key.
func (l *Lease) Key() string { return l.key }

// TTL is how long the lease lasts unless renewed.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Renew extends the lease by its TTL. An error wrapping ErrHeld means the
// lease expired or someone else took it: the holder must stop at once. Any
// other error is JetStream not answering; the lease may still be ours until
// the TTL has passed since the last renewal.
func (l *Lease) Renew(ctx context.Context) error {
	subject := "$KV." + l.kv.Bucket() + "." + l.key
	ack, err := l.js.Publish(ctx, subject, l.value(),
		jetstream.WithExpectLastSequencePerSubject(l.rev), jetstream.WithMsgTTL(l.ttl))
	if err != nil {
		if wrongRevision(err) {
			// An earlier renewal may have been stored with its ack lost
			// (its context ended on the way): then the entry is still ours,
			// at a later revision, and is renewed from there.
			if rev, ok := l.stillOurs(ctx); ok && rev != l.rev {
				l.rev = rev
				return l.Renew(ctx)
			}
			return fmt.Errorf("renew lease %s: %w (it expired or was taken over)", l.key, ErrHeld)
		}
		return fmt.Errorf("renew lease %s: %w", l.key, err)
	}
	l.rev = ack.Sequence
	return nil
}

// Release gives the lease up if it is still ours.
func (l *Lease) Release(ctx context.Context) error {
	err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
	if err != nil && wrongRevision(err) {
		// A renewal stored with its ack lost (see Renew): delete the
		// entry at its revision if it is still this lease.
		if rev, ok := l.stillOurs(ctx); ok {
			return l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev))
		}
	}
	return err
}

// stillOurs reports whether the entry is this very lease (its holder and
// since), and its revision.
func (l *Lease) stillOurs(ctx context.Context) (uint64, bool) {
	e, err := l.kv.Get(ctx, l.key)
	if err != nil {
		return 0, false
	}
	var v value
	if json.Unmarshal(e.Value(), &v) != nil {
		return 0, false
	}
	return e.Revision(), v.Holder == l.holder && v.Since.Equal(l.since)
}

// wrongRevision reports whether a write was refused for the entry's
// revision: someone (perhaps this lease, see Renew) wrote it since.
func wrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
