// Package state keeps what the bridge knows about each synced record in the
// bridge_state and bridge_links KV buckets, shared by apply, writeback and
// reconcile. Every write is revision-checked, so two workers or replicas
// racing on one record can never move its version backwards.
//
// # Key scheme
//
// bridge_state (values are JSON):
//
//	record.<table>.<sys_id>      Record: last ServiceNow version applied to the app or written
//	                             by the bridge (sys_mod_count), sys_updated_on, the last known
//	                             ServiceNow values of the mapped fields, deleted flag.
//	                             Written by apply (after the app has the version) and by
//	                             writeback (after its own write); read by both and by reconcile.
//	writeback.<entity>.<id>      writeback's per-external-id bookmark (package outbound); ids
//	                             outside [-_=a-zA-Z0-9] become "b64-" + base64url.
//	reconcile.watermark.<table>  reconcile's keyset watermark (package reconcile)
//	reconcile.pass.<table>       summary of the table's last reconcile pass
//	reconcile.presence.<table>   outcome of the table's last presence scan (deletes found by
//	                             comparing RecordIDs with the instance's sys_ids); its time
//	                             schedules the next one, across replicas and restarts
//	reconcile.lease.<table>      reconcile's lease: created only if absent, renewed by
//	                             revision, expires by per-message TTL
//	status.process.<name>        process reports for `bridge status` (TTL)
//
// table is ^[a-z][a-z0-9_]*$ and sys_id 32 lowercase hex characters, so both
// are valid key tokens as they are.
//
// bridge_links (values are JSON):
//
//	ext.<entity>.<b64url(external_id)>  {"table","sys_id"}: the record an app id is linked to
//	rec.<table>.<sys_id>                {"entity","external_id"}: the app id of a record
//
// External ids are arbitrary strings, and NATS KV keys allow only
// [-/_=.a-zA-Z0-9], so they are always base64url-encoded without padding.
package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// ErrConflict means the entry changed since it was read (another worker or
// replica wrote it) and still holds an older version than the one offered:
// read again and retry.
var ErrConflict = errors.New("bridge_state entry changed since it was read")

// Record is what the bridge last knew of one ServiceNow record.
type Record struct {
	// Version is the record's sys_mod_count that the app last received (apply)
	// or that the bridge itself produced (writeback).
	Version int64 `json:"version"`
	// UpdatedOn is that version's sys_updated_on (UTC, YYYY-MM-DD HH:MM:SS).
	UpdatedOn string `json:"updated_on,omitempty"`
	// Fields are the ServiceNow values of that version, in ServiceNow names:
	// the base the writeback diffs the app's values against.
	Fields map[string]string `json:"fields,omitempty"`
	// Deleted is true once the record's delete was applied.
	Deleted bool `json:"deleted,omitempty"`
}

// Supersedes reports whether an event of version v with the given action
// carries news over r: a newer version, or the delete of the version r holds
// (ServiceNow does not bump sys_mod_count on delete).
func (r Record) Supersedes(v int64, action string) bool {
	return events.Handled{Version: r.Version, Deleted: r.Deleted}.Supersedes(v, action)
}

// newer reports whether r should replace old.
func (r Record) newer(old Record) bool {
	if r.Deleted {
		return old.Supersedes(r.Version, events.ActionDelete)
	}
	return r.Version > old.Version
}

// RecordKey is the bridge_state key of a record.
func RecordKey(table, sysID string) string { return "record." + table + "." + sysID }

// Store reads and writes per-record state in bridge_state. It is safe for
// concurrent use.
type Store struct {
	kv jetstream.KeyValue
}

// NewStore wraps the bridge_state bucket.
func NewStore(kv jetstream.KeyValue) *Store { return &Store{kv: kv} }

// Open binds to the bridge_state bucket (broker.EnsureAll creates it).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, *Links, error) {
	st, err := js.KeyValue(ctx, events.BucketState)
	if err != nil {
		return nil, nil, fmt.Errorf("open KV bucket %s: %w", events.BucketState, err)
	}
	ln, err := js.KeyValue(ctx, events.BucketLinks)
	if err != nil {
		return nil, nil, fmt.Errorf("open KV bucket %s: %w", events.BucketLinks, err)
	}
	return NewStore(st), NewLinks(ln), nil
}

// KV is the underlying bucket (reconcile and writeback keep their own keys in it).
func (s *Store) KV() jetstream.KeyValue { return s.kv }

func validRecord(table, sysID string) error {
	if !events.ValidTable(table) || !events.ValidSysID(sysID) {
		return fmt.Errorf("bridge_state: invalid record %q/%q (want a table name and a 32-hex sys_id)", table, sysID)
	}
	return nil
}

// Get returns the record's state and the entry's revision; ok is false when
// the bridge has no state for it (rev is then 0).
func (s *Store) Get(ctx context.Context, table, sysID string) (rec Record, rev uint64, ok bool, err error) {
	if err := validRecord(table, sysID); err != nil {
		return Record{}, 0, false, err
	}
	e, err := s.kv.Get(ctx, RecordKey(table, sysID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Record{}, 0, false, nil
	}
	if err != nil {
		return Record{}, 0, false, fmt.Errorf("read state of %s/%s: %w", table, sysID, err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return Record{}, 0, false, fmt.Errorf("decode state of %s/%s (revision %d): %w", table, sysID, e.Revision(), err)
	}
	return rec, e.Revision(), true, nil
}

// Put stores rec if the entry is still at rev (0: it must not exist yet).
// When the entry moved on and already holds rec's version or a newer one,
// Put does nothing and returns nil: nothing would regress and nothing is
// lost. When it moved on to an older version, Put returns ErrConflict.
func (s *Store) Put(ctx context.Context, table, sysID string, rec Record, rev uint64) error {
	_, err := s.put(ctx, table, sysID, rec, rev)
	return err
}

// put is Put that also says whether rec was stored.
func (s *Store) put(ctx context.Context, table, sysID string, rec Record, rev uint64) (stored bool, err error) {
	if err := validRecord(table, sysID); err != nil {
		return false, err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	key := RecordKey(table, sysID)
	if rev == 0 {
		_, err = s.kv.Create(ctx, key, b)
	} else {
		_, err = s.kv.Update(ctx, key, b, rev)
	}
	if err == nil {
		return true, nil
	}
	if !isRevisionMismatch(err) {
		return false, fmt.Errorf("store state of %s/%s: %w", table, sysID, err)
	}
	cur, _, ok, gerr := s.Get(ctx, table, sysID)
	if gerr != nil {
		return false, gerr
	}
	if ok && !rec.newer(cur) {
		return false, nil
	}
	return false, fmt.Errorf("store state of %s/%s version %d: %w", table, sysID, rec.Version, ErrConflict)
}

// Advance stores rec unless the stored version is already as new (see
// Record.Supersedes), re-reading and retrying when another writer gets in
// between. Fields rec does not carry keep their stored values, so a partial
// record never erases what the bridge knew. advanced is false when a newer
// or equal version was already stored.
func (s *Store) Advance(ctx context.Context, table, sysID string, rec Record) (advanced bool, err error) {
	for range 10 {
		cur, rev, ok, err := s.Get(ctx, table, sysID)
		if err != nil {
			return false, err
		}
		if ok && !rec.newer(cur) {
			return false, nil
		}
		next := rec
		if ok && len(cur.Fields) > 0 {
			next.Fields = maps.Clone(cur.Fields)
			maps.Copy(next.Fields, rec.Fields)
		}
		stored, err := s.put(ctx, table, sysID, next, rev)
		if err == nil {
			return stored, nil
		}
		if !errors.Is(err, ErrConflict) {
			return false, err
		}
	}
	return false, fmt.Errorf("store state of %s/%s version %d: still contended after 10 attempts: %w", table, sysID, rec.Version, ErrConflict)
}

// LastVersion returns the record's last sys_mod_count seen by the bridge
// (reconcile's question); known is false when the bridge never saw it.
func (s *Store) LastVersion(ctx context.Context, table, sysID string) (version int64, known, deleted bool, err error) {
	rec, _, ok, err := s.Get(ctx, table, sysID)
	if err != nil || !ok {
		return 0, false, false, err
	}
	return rec.Version, true, rec.Deleted, nil
}

// Forget removes the record's state (an operator resetting a record; the
// next event of any version is then applied).
func (s *Store) Forget(ctx context.Context, table, sysID string) error {
	if err := validRecord(table, sysID); err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, RecordKey(table, sysID)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget state of %s/%s: %w", table, sysID, err)
	}
	return nil
}

// isRevisionMismatch recognises both ways a revision check fails: Create on
// an existing key, Update at a stale revision.
func isRevisionMismatch(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
