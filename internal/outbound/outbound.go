// Package outbound writes the SaaS app's changes back to ServiceNow: a
// durable JetStream consumer on APP_EVENTS turns each app.<entity>.<action>
// message into the smallest PATCH, POST or delete, resolving conflicts by
// per-field policy. It claims every write in the echo-suppression cache
// before sending, so the business-rule webhook each write causes is not
// synced back to the app.
//
// # What a change does
//
//   - upsert of a linked id (bridge_links, the message's sys_id, or a
//     record whose correlation_id is the id): PATCH of the fields whose app
//     value differs from the base, the values the app was last told (the
//     apply pipeline's delivery, kept in the dedupe cache) or wrote, falling
//     back to bridge_state. A field the app did not change is never written,
//     even when ServiceNow holds something else now: ServiceNow changed it
//     and the apply pipeline is carrying that to the app. That rule is what
//     stops the two sides "correcting" each other.
//   - upsert of an unknown id: POST with the mapping's link field
//     (correlation_id) = external_id (and its display field), then the link
//     is stored.
//   - the table's journal fields (the mapping's journal list: incident's
//     comments and work_notes) are appended whenever the message carries
//     them, whatever the plain diff says; a comment is an action, so an app
//     must send it once.
//   - delete: what the table's mapping says (delete.mode and delete.state:
//     incident resolves with state 6, change_request cancels with 4, ...),
//     Config.DeleteMode and Config.DeleteState overriding it. A resolve-mode
//     delete sets the state; DeleteRecord sends DELETE and removes the link.
//     Any write that sets a closing state of the table's mapping
//     (close.states) always carries its code and notes fields: the app's,
//     else the record's, else the close code chosen from the instance's
//     active sys_choice rows (CloseCodes; a delete's own close_code
//     preferred; BRIDGE_CLOSE_CODE overrides, checked at start) and
//     generated notes.
//   - a message whose version is not newer than the last one written for
//     its id is acked as stale; one entity id is handled by one worker, and
//     a change waiting for a retry holds back later changes of its id.
//
// # Conflicts
//
// Before a write the record is read (Config.BlindWrites skips this). A field
// the app changed that ServiceNow also changed since the base, to another
// value, is a conflict: servicenow_wins keeps ServiceNow's value (it reaches
// the app through the apply pipeline), saas_wins writes the app's,
// newest_wins compares sys_updated_on with the app's updated_at at one-second
// resolution, a tie going to ServiceNow. Each is logged and counted in
// conflicts_total{field}. A change landing in ServiceNow between the read and
// the PATCH is overwritten (ServiceNow has no conditional update); the
// resulting version then flows to the app, so both sides still agree.
//
// # Echoes
//
// The app republishing what it holds (dedupe.IsAppEcho) or a message with
// nothing to change writes nothing. A write is claimed as the bridge's own
// (its webhook answered as an echo, bridge_state advanced to its version so
// reconcile skips it) only when it is the next version after the one the
// bridge knew and ServiceNow changed no mapped field beyond those sent; a
// computed side effect (priority from impact and urgency) or someone else's
// change in between lets the version flow to the app instead.
//
// Changes and hand-overs cross on the way. When the apply pipeline handed
// the app a version after APP_EVENTS stored the change, the app applies that
// version over its change: the write is not claimed (its version must reach
// the app), and fields of the change still showing the value that hand-over
// replaced are not written, since the app never changed them and writing
// them would undo the newer version in ServiceNow. A change stored less than
// Config.HandOverGrace (1s) after a hand-over may have been built before the
// app took it (an app republishing what it is handed does exactly that), so
// its write is not claimed either: at worst the app gets one extra message
// with its own values, never a version it does not hold silently claimed.
// Each case is counted in bridge_writeback_unclaimed_total{reason}.
// Hand-over times are kept per process, so with several replicas these hold
// where the same replica applied and writes back; elsewhere the app's own
// ordering by version decides.
//
// A webhook arriving before the write's response is matched only at that
// claimable version and only when it shows every value as sent, so the
// early match never swallows a version the writeback then declines to claim.
//
// # Results
//
// The app hears the outcome of every change on
// bridge.result.<entity>.<outcome> (BRIDGE_RESULTS; results.go): created,
// updated (an app delete that resolves or deletes included), unchanged (no
// difference, an echo, a delete of a record never linked), stale, conflict
// (each field in the app's names and values, the policy and the winner) and
// rejected (ServiceNow's message and detail, snclient's hint,
// dead_lettered), each with the record's sys_id, number, sys_mod_count and
// link on the instance (Config.InstanceURL). A change that first waits on
// 429, 5xx, an open breaker, the network or a token gets one retrying
// result (consume.Observer). The final result is stored, with an awaited
// ack, before the change is acked, and kept in the writeback's bookmark: a
// redelivered change publishes it again under the same id (per external id,
// version and outcome), which the stream drops, and a redelivery of an
// earlier change of the id publishes nothing.
//
// # Errors
//
// 429, 5xx, network errors and token trouble are nak'd with exponential,
// jittered delay (the message stays in JetStream; nothing is lost); an open
// circuit breaker pauses fetching for its open period; 400/403/404, values
// outside a mapping's value map and undecodable messages go to BRIDGE_DLQ on
// bridge.dlq.writeback with the Bridge-Dlq-* headers (status, ServiceNow's
// message and detail as the reason, snclient's hint, origin subject, stream
// and sequence).
package outbound

import (
	"context"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
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
	// FindByCorrelation returns the sys_id of the record whose link
	// field (mapping.Table.LinkField) holds id, or "" when there is none.
	FindByCorrelation(ctx context.Context, table, field, id string) (string, error)
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
	// Close is the table's closing rule (nil: writes never need close fields).
	Close(table string) *mapping.Close
	// ForTable is everything the mapping knows of a table: its link field,
	// journal fields, state values and delete behaviour.
	ForTable(table string) (*mapping.Table, bool)
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
