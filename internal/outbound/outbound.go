// Package outbound writes the SaaS app's changes back to ServiceNow: a
// durable JetStream consumer on APP_EVENTS turns each app.<entity>.<action>
// message into the smallest PATCH, POST or delete, resolving conflicts by
// per-field policy. It claims every write in the echo-suppression cache
// before sending, so the business-rule webhook each write causes is not
// synced back to the app.
package outbound

import (
	"context"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/state"
)

// TableAPI is the part of ServiceNow's Table API the writeback calls.
// Records come back as ServiceNow renders them (string values, sys_id and
// sys_mod_count included).
type TableAPI interface {
	Get(ctx context.Context, table, sysID string) (events.Fields, error)
	Create(ctx context.Context, table string, fields map[string]string) (events.Fields, error)
	Update(ctx context.Context, table, sysID string, fields map[string]string) (events.Fields, error)
	Delete(ctx context.Context, table, sysID string) error
	// FindByCorrelation returns the sys_id of the record whose
	// correlation_id is id, or "" when there is none.
	FindByCorrelation(ctx context.Context, table, id string) (string, error)
}

// Mapping translates the app's entities and fields to ServiceNow's.
type Mapping interface {
	// Table is the ServiceNow table an entity syncs with.
	Table(entity string) (string, bool)
	// ToServiceNow maps field names and values (value maps applied);
	// fields the mapping does not know are left out.
	ToServiceNow(entity string, fields map[string]string) (map[string]string, error)
	// Fields lists the ServiceNow fields of a table the mapping reads: the
	// ones kept in bridge_state as the base of the next diff.
	Fields(table string) []string
}

// States reads and advances per-record state (bridge_state); *state.Store
// satisfies it.
type States interface {
	// Get returns what the bridge last knew of a record; ok is false when
	// it knows nothing.
	Get(ctx context.Context, table, sysID string) (rec state.Record, rev uint64, ok bool, err error)
	// Advance stores rec unless an equal or newer version is stored.
	Advance(ctx context.Context, table, sysID string, rec state.Record) (advanced bool, err error)
}

// Links maps external ids to ServiceNow records (bridge_links);
// *state.Links satisfies it.
type Links interface {
	SysID(ctx context.Context, entity, externalID string) (table, sysID string, ok bool, err error)
	Link(ctx context.Context, entity, externalID, table, sysID string) error
	Unlink(ctx context.Context, entity, externalID string) error
}
