package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Watermark is how far reconcile has read a table: the newest
// sys_updated_on of the records (and of the sys_audit_delete rows) that it
// has fully published. Passes start an overlap window before it.
type Watermark struct {
	Records time.Time `json:"records"`
	Deletes time.Time `json:"deletes,omitzero"`
}

// WatermarkKey is the bridge_state key of a table's watermark.
func WatermarkKey(table string) string { return "reconcile.watermark." + table }

// PassKey is the bridge_state key of the summary of a table's last pass.
func PassKey(table string) string { return "reconcile.pass." + table }

// PresenceKey is the bridge_state key of the table's last presence scan.
func PresenceKey(table string) string { return "reconcile.presence." + table }

// Summary describes one reconcile pass of one table. The last one of each
// table is stored in bridge_state for `bridge status`.
type Summary struct {
	Table    string        `json:"table"`
	Holder   string        `json:"holder,omitempty"`
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
	Duration time.Duration `json:"duration_ns"`
	// From is where the scan started: the watermark minus the overlap, the
	// backfill start or --since; zero for a full scan.
	From      time.Time `json:"from,omitzero"`
	Watermark time.Time `json:"watermark,omitzero"`
	Pages     int       `json:"pages"`
	Requests  int       `json:"requests"`
	Scanned   int       `json:"records_scanned"`
	Total     int       `json:"total,omitempty"` // rows ServiceNow counted for the scan, when it said
	// Gaps are events published that SN_EVENTS did not hold yet.
	Gaps int `json:"gaps"`
	// InFlight are findings SN_EVENTS already held (published, not yet
	// applied): the stream dropped them as duplicates.
	InFlight int `json:"in_flight"`
	UpToDate int `json:"up_to_date"`
	Echoes   int `json:"echoes"` // versions the bridge itself wrote
	Deletes  int `json:"deletes"`
	// Attachments are attachment events (a file added or removed in
	// ServiceNow) published for the records re-read that SN_EVENTS lacked.
	Attachments int `json:"attachments,omitempty"`
	// DeleteScan says how this pass checked for deletes: "presence" (a
	// presence scan compared every id), "audit" (sys_audit_delete alone,
	// readable), "hidden: ..." (what it had to read is hidden from the
	// integration user, so nothing was concluded: deletes wait for the next
	// presence scan, or the table itself is hidden), "off", or "error: ...".
	// Never "ok".
	DeleteScan string `json:"delete_scan,omitempty"`
	// Audit is what sys_audit_delete was to the integration user in this
	// pass: "readable", "hidden" (rows counted, none returned), "empty"
	// (no row at all), or "unreadable: <error>".
	Audit string `json:"audit_delete,omitempty"`
	// Presence is the presence scan this pass ran, if it ran one.
	Presence *PresenceScan `json:"presence,omitempty"`
	// PresenceLast is when the table's last presence scan started (this
	// pass's or an earlier one); PresenceNext when the next is due (zero:
	// only on --full, BRIDGE_DELETE_SCAN_INTERVAL=0).
	PresenceLast time.Time `json:"presence_last,omitzero"`
	PresenceNext time.Time `json:"presence_next,omitzero"`
	// Hidden lists the tables this pass read whose rows ServiceNow counted
	// but did not return: the table itself or sys_audit_delete.
	Hidden []string `json:"hidden,omitempty"`
	Error  string   `json:"error,omitempty"`
}

// Store reads and writes reconcile's entries in bridge_state.
type Store struct{ KV jetstream.KeyValue }

// Watermark returns the table's watermark; ok is false when there is none.
func (s Store) Watermark(ctx context.Context, table string) (Watermark, bool, error) {
	var w Watermark
	ok, err := s.get(ctx, WatermarkKey(table), &w)
	return w, ok, err
}

// SetWatermark stores w, never moving either part backwards.
func (s Store) SetWatermark(ctx context.Context, table string, w Watermark) error {
	old, ok, err := s.Watermark(ctx, table)
	if err != nil {
		return err
	}
	if ok {
		if old.Records.After(w.Records) {
			w.Records = old.Records
		}
		if old.Deletes.After(w.Deletes) {
			w.Deletes = old.Deletes
		}
		if w == old {
			return nil
		}
	}
	return s.put(ctx, WatermarkKey(table), w)
}

// LastPass returns the summary of the table's last pass.
func (s Store) LastPass(ctx context.Context, table string) (Summary, bool, error) {
	var sum Summary
	ok, err := s.get(ctx, PassKey(table), &sum)
	return sum, ok, err
}

// SavePass stores the summary of a finished pass.
func (s Store) SavePass(ctx context.Context, sum Summary) error {
	return s.put(ctx, PassKey(sum.Table), sum)
}

// LastPresence returns the table's last finished presence scan.
func (s Store) LastPresence(ctx context.Context, table string) (PresenceScan, bool, error) {
	var ps PresenceScan
	ok, err := s.get(ctx, PresenceKey(table), &ps)
	return ps, ok, err
}

// SavePresence stores a finished presence scan: the next is due an
// interval after its start, whichever replica runs it.
func (s Store) SavePresence(ctx context.Context, ps PresenceScan) error {
	return s.put(ctx, PresenceKey(ps.Table), ps)
}

func (s Store) get(ctx context.Context, key string, v any) (bool, error) {
	e, err := s.KV.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s from bridge_state: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, fmt.Errorf("decode %s from bridge_state: %w", key, err)
	}
	return true, nil
}

func (s Store) put(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := s.KV.Put(ctx, key, b); err != nil {
		return fmt.Errorf("write %s to bridge_state: %w", key, err)
	}
	return nil
}
