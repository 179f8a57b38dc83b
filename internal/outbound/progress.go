package outbound

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// progress is the writeback's own bookmark per SaaS entity id: the newest
// app version written to ServiceNow, so an older or redelivered message is
// recognised as stale. It lives in bridge_state under "writeback.".
type progress struct {
	Version   int64     `json:"version"`
	UpdatedAt time.Time `json:"updated_at"`
	Table     string    `json:"table,omitempty"`
	SysID     string    `json:"sys_id,omitempty"`
	Deleted   bool      `json:"deleted,omitempty"`
	// Result is what the app was told of Version, told again when that
	// version is delivered again (nil in bookmarks written before results).
	Result *events.Result `json:"result,omitempty"`
	// Seq is the APP_EVENTS sequence of Version's message (0: unknown).
	Seq uint64 `json:"seq,omitempty"`
}

// progressStore reads and writes bookmarks in a KV bucket.
type progressStore struct{ kv jetstream.KeyValue }

var keySafe = regexp.MustCompile(`^[-_=a-zA-Z0-9]{1,200}$`)

// progressKey is "writeback.<entity>.<id>"; an id with characters NATS keys
// do not allow is base64url-encoded behind a "b64-" prefix.
func progressKey(entity, id string) string {
	if keySafe.MatchString(id) && !hasB64Prefix(id) {
		return "writeback." + entity + "." + id
	}
	return "writeback." + entity + ".b64-" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

func hasB64Prefix(s string) bool { return len(s) >= 4 && s[:4] == "b64-" }

func (s progressStore) get(ctx context.Context, entity, id string) (progress, uint64, error) {
	e, err := s.kv.Get(ctx, progressKey(entity, id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return progress{}, 0, nil
	}
	if err != nil {
		return progress{}, 0, fmt.Errorf("read writeback progress of %s %s: %w", entity, id, err)
	}
	var p progress
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return progress{}, e.Revision(), nil // unreadable: start over rather than wedge
	}
	return p, e.Revision(), nil
}

// put stores p unless a newer version got there first (another bridge
// instance); rev 0 means "expect no entry".
func (s progressStore) put(ctx context.Context, entity, id string, p progress, rev uint64) error {
	b, _ := json.Marshal(p)
	key := progressKey(entity, id)
	for range 5 {
		var err error
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, b)
		} else {
			_, err = s.kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return fmt.Errorf("store writeback progress of %s %s: %w", entity, id, err)
		}
		cur, r, gerr := s.get(ctx, entity, id)
		if gerr != nil {
			return gerr
		}
		if cur.Version >= p.Version && p.Version > 0 {
			return nil
		}
		rev = r
	}
	return fmt.Errorf("store writeback progress of %s %s: too much contention", entity, id)
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
