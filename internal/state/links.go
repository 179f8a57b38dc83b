package state

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// Links is the two-way index between the app's external ids and ServiceNow
// records in bridge_links. It is safe for concurrent use. The method set
// matches what the writeback (outbound.Links) and apply need.
type Links struct {
	kv jetstream.KeyValue
}

// NewLinks wraps the bridge_links bucket.
func NewLinks(kv jetstream.KeyValue) *Links { return &Links{kv: kv} }

var entityRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,79}$`)

// ExternalKey is the bridge_links key of an app id.
func ExternalKey(entity, externalID string) string {
	return "ext." + entity + "." + base64.RawURLEncoding.EncodeToString([]byte(externalID))
}

// RecordLinkKey is the bridge_links key of a ServiceNow record.
func RecordLinkKey(table, sysID string) string { return "rec." + table + "." + sysID }

type extValue struct {
	Table string `json:"table"`
	SysID string `json:"sys_id"`
}

type recValue struct {
	Entity     string `json:"entity"`
	ExternalID string `json:"external_id"`
}

func validLink(entity, externalID, table, sysID string) error {
	switch {
	case !entityRe.MatchString(entity):
		return fmt.Errorf("bridge_links: invalid entity %q", entity)
	case externalID == "" || len(externalID) > 1024:
		return fmt.Errorf("bridge_links: external id must be 1 to 1024 bytes, got %d", len(externalID))
	}
	return validRecord(table, sysID)
}

// Link records that the app's (entity, externalID) is ServiceNow's (table,
// sysID), both ways. A record or id linked elsewhere before is re-linked
// and its stale reverse entry removed, so each side maps to exactly one.
func (l *Links) Link(ctx context.Context, entity, externalID, table, sysID string) error {
	if err := validLink(entity, externalID, table, sysID); err != nil {
		return err
	}
	oldTable, oldSysID, hadExt, err := l.SysID(ctx, entity, externalID)
	if err != nil {
		return err
	}
	oldEntity, oldExt, hadRec, err := l.ExternalID(ctx, table, sysID)
	if err != nil {
		return err
	}
	if hadExt && oldTable == table && oldSysID == sysID && hadRec && oldEntity == entity && oldExt == externalID {
		return nil // already so
	}
	// The record side first: apply asks it on every event, and a crash
	// between the two writes leaves a link the next Link call completes.
	if err := l.put(ctx, RecordLinkKey(table, sysID), recValue{Entity: entity, ExternalID: externalID}); err != nil {
		return err
	}
	if err := l.put(ctx, ExternalKey(entity, externalID), extValue{Table: table, SysID: sysID}); err != nil {
		return err
	}
	if hadExt && (oldTable != table || oldSysID != sysID) {
		// The id pointed at another record: that record is no longer its.
		if err := l.deleteIf(ctx, RecordLinkKey(oldTable, oldSysID), func(v []byte) bool {
			var r recValue
			return json.Unmarshal(v, &r) == nil && r.Entity == entity && r.ExternalID == externalID
		}); err != nil {
			return err
		}
	}
	if hadRec && (oldEntity != entity || oldExt != externalID) {
		if err := l.deleteIf(ctx, ExternalKey(oldEntity, oldExt), func(v []byte) bool {
			var e extValue
			return json.Unmarshal(v, &e) == nil && e.Table == table && e.SysID == sysID
		}); err != nil {
			return err
		}
	}
	return nil
}

// SysID returns the record an app id is linked to.
func (l *Links) SysID(ctx context.Context, entity, externalID string) (table, sysID string, ok bool, err error) {
	if !entityRe.MatchString(entity) || externalID == "" {
		return "", "", false, nil
	}
	var v extValue
	ok, err = l.get(ctx, ExternalKey(entity, externalID), &v)
	return v.Table, v.SysID, ok, err
}

// ExternalID returns the app id a record is linked to.
func (l *Links) ExternalID(ctx context.Context, table, sysID string) (entity, externalID string, ok bool, err error) {
	if err := validRecord(table, sysID); err != nil {
		return "", "", false, err
	}
	var v recValue
	ok, err = l.get(ctx, RecordLinkKey(table, sysID), &v)
	return v.Entity, v.ExternalID, ok, err
}

// Unlink removes an app id's link, both ways.
func (l *Links) Unlink(ctx context.Context, entity, externalID string) error {
	table, sysID, ok, err := l.SysID(ctx, entity, externalID)
	if err != nil || !ok {
		return err
	}
	if events.ValidTable(table) && events.ValidSysID(sysID) {
		if err := l.deleteIf(ctx, RecordLinkKey(table, sysID), func(v []byte) bool {
			var r recValue
			return json.Unmarshal(v, &r) == nil && r.Entity == entity && r.ExternalID == externalID
		}); err != nil {
			return err
		}
	}
	if err := l.kv.Delete(ctx, ExternalKey(entity, externalID)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("unlink %s %s: %w", entity, externalID, err)
	}
	return nil
}

func (l *Links) get(ctx context.Context, key string, v any) (bool, error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s from %s: %w", key, events.BucketLinks, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, fmt.Errorf("decode %s from %s: %w", key, events.BucketLinks, err)
	}
	return true, nil
}

func (l *Links) put(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := l.kv.Put(ctx, key, b); err != nil {
		return fmt.Errorf("write %s to %s: %w", key, events.BucketLinks, err)
	}
	return nil
}

// deleteIf removes key when its value still satisfies match, by revision,
// so a concurrent re-link is never undone.
func (l *Links) deleteIf(ctx context.Context, key string, match func([]byte) bool) error {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s from %s: %w", key, events.BucketLinks, err)
	}
	if !match(e.Value()) {
		return nil
	}
	err = l.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	if err != nil && !isRevisionMismatch(err) && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("remove stale link %s: %w", key, err)
	}
	return nil
}
