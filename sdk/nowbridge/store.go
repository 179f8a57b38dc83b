package nowbridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// VersionStore remembers, per record, the last version a handler finished:
// the version guard of Consume and of the apply receiver. A message whose
// version does not supersede the stored one (Handled.Supersedes: not newer,
// except the delete of the stored version) is acknowledged without calling
// the handler, so a redelivery or a replay by the bridge is not applied
// twice and an older version never overwrites a newer one.
//
// Keys are "<table>/<sys_id>" (ApplyMessage.RecordKey). The guard reads the
// key before the handler runs and writes it after the handler returned nil,
// before the acknowledgement: a crash in between delivers the version again,
// so handlers must still tolerate the same version twice (an upsert does).
// An app that keeps its records in a database can implement VersionStore on
// a column of the same row and write it in the handler's transaction.
type VersionStore interface {
	// Get returns the record's last handled version; ok is false when none
	// is known.
	Get(ctx context.Context, key string) (h Handled, ok bool, err error)
	// Put records h as the record's last handled version.
	Put(ctx context.Context, key string, h Handled) error
}

// MemoryStore is a VersionStore in the process's memory, bounded to the most
// recently handled records. It guards against redeliveries while the
// process runs, which is what most of them are; after a restart it knows
// nothing, and the durable consumer delivers only what was not acknowledged.
// It is Consume's default.
type MemoryStore struct {
	mu sync.Mutex
	m  *lru[Handled]
}

// NewMemoryStore keeps the last handled version of up to capacity records
// (at most 100000 when capacity <= 0; about 100 bytes each).
func NewMemoryStore(capacity int) *MemoryStore {
	if capacity <= 0 {
		capacity = 100_000
	}
	return &MemoryStore{m: newLRU[Handled](capacity)}
}

// Get implements VersionStore.
func (s *MemoryStore) Get(_ context.Context, key string) (Handled, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.m.get(key)
	return h, ok, nil
}

// Put implements VersionStore.
func (s *MemoryStore) Put(_ context.Context, key string, h Handled) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m.put(key, h)
	return nil
}

// Len is how many records the store remembers.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.len()
}

// KVStore is a VersionStore in a JetStream key-value bucket: it survives
// restarts and is shared by every instance of the app, so a standby that
// takes over also skips what the stopped instance handled.
type KVStore struct {
	kv jetstream.KeyValue
}

// NewKVStore keeps versions in an existing bucket.
func NewKVStore(kv jetstream.KeyValue) *KVStore { return &KVStore{kv: kv} }

// OpenKVStore creates the bucket if it does not exist (one value per
// record, no history) and keeps versions in it.
func OpenKVStore(ctx context.Context, js jetstream.JetStream, bucket string) (*KVStore, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "the last ServiceNow version the app handled per record (nowbridge SDK version guard)",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open key-value bucket %q for the version guard: %w", bucket, err)
	}
	return &KVStore{kv: kv}, nil
}

// Get implements VersionStore.
func (s *KVStore) Get(ctx context.Context, key string) (Handled, bool, error) {
	e, err := s.kv.Get(ctx, kvKey(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Handled{}, false, nil
	}
	if err != nil {
		return Handled{}, false, fmt.Errorf("read the handled version of %s: %w", key, err)
	}
	var h Handled
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return Handled{}, false, fmt.Errorf("handled version of %s in bucket %s is not {\"version\":n}: %w", key, s.kv.Bucket(), err)
	}
	return h, true, nil
}

// Put implements VersionStore.
func (s *KVStore) Put(ctx context.Context, key string, h Handled) error {
	b, _ := json.Marshal(h) // two plain fields: cannot fail
	if _, err := s.kv.Put(ctx, kvKey(key), b); err != nil {
		return fmt.Errorf("store the handled version of %s: %w", key, err)
	}
	return nil
}

var kvSafe = regexp.MustCompile(`^[-/_=a-zA-Z0-9]{1,200}$`)

// kvKey maps a record key onto the characters bucket keys allow; any other
// key is base64url-encoded behind a "b64." prefix, which a plain key cannot
// have (it has no dot).
func kvKey(key string) string {
	if kvSafe.MatchString(key) {
		return key
	}
	return "b64." + base64.RawURLEncoding.EncodeToString([]byte(key))
}
