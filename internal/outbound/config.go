package outbound

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DeleteMode says what an app delete does in ServiceNow.
type DeleteMode string

// Delete modes.
const (
	// DeleteResolve sets the record's state (default 6 Resolved, with
	// close_code and close_notes): history, SLAs and audit stay.
	DeleteResolve DeleteMode = "resolve"
	// DeleteRecord deletes the record (DELETE /api/now/table/...).
	DeleteRecord DeleteMode = "delete"
)

// Config tunes the writeback. Zero values take the defaults.
type Config struct {
	Durable    string        // consumer name (default "writeback")
	Workers    int           // concurrent writers; one entity id is always on one worker (default 8)
	Batch      int           // messages fetched at once (default 64)
	AckWait    time.Duration // default 60s; long calls extend it with in-progress acks
	MaxDeliver int           // 0 = unlimited: retryable failures never dead-letter (default)
	RetryBase  time.Duration // first nak delay after a retryable failure (default 500ms)
	RetryMax   time.Duration // cap of the nak delay (default 1m)
	// BreakerPause is how long fetching pauses when the client's breaker
	// is open and does not say for how long it stays open (default 5s);
	// after it, one change probes the half-open breaker.
	BreakerPause time.Duration

	DeleteMode  DeleteMode // default DeleteResolve
	DeleteState string     // state a delete sets in DeleteResolve mode (default "6")
	// CloseCode overrides the close code a write that moves a record into
	// a closing state of its mapping's close rule carries (default: chosen
	// from the instance's active choices, see CloseCodes).
	CloseCode  string
	CloseNotes string // default "Resolved in <entity> <external_id> (synced by nowbridge)"
	// CorrelationDisplay is written to correlation_display on create
	// (default "nowbridge"), telling ServiceNow users which system links it.
	CorrelationDisplay string

	// Policies maps a ServiceNow field name to its conflict policy;
	// DefaultPolicy covers the rest (default newest_wins).
	Policies      map[string]Policy
	DefaultPolicy Policy
	JournalFields []string // ServiceNow journal fields (default comments, work_notes)
	// BlindWrites skips reading the record before a write: one request per
	// change instead of two, and a change made in ServiceNow that the bridge
	// has not yet seen is overwritten (as with saas_wins) instead of being
	// resolved by policy.
	BlindWrites bool
	// HandOverGrace: an app change stored less than this after the apply
	// pipeline handed the app a version of the same record may have been
	// built before the app took that version (the two cross on the way),
	// so the write it makes is not claimed as the app's own and its version
	// reaches the app -- one extra message at worst, where claiming it
	// could leave the two sides apart. Default 1s.
	HandOverGrace time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.Durable == "" {
		c.Durable = "writeback"
	}
	if c.Workers <= 0 {
		c.Workers = 8
	}
	if c.Batch <= 0 {
		c.Batch = 64
	}
	if c.AckWait <= 0 {
		c.AckWait = time.Minute
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Minute
	}
	if c.HandOverGrace <= 0 {
		c.HandOverGrace = time.Second
	}
	if c.BreakerPause <= 0 {
		c.BreakerPause = 5 * time.Second
	}
	if c.DeleteMode == "" {
		c.DeleteMode = DeleteResolve
	}
	if c.DeleteState == "" {
		c.DeleteState = "6"
	}
	if c.CorrelationDisplay == "" {
		c.CorrelationDisplay = "nowbridge"
	}
	if c.DefaultPolicy == "" {
		c.DefaultPolicy = NewestWins
	}
	if c.JournalFields == nil {
		c.JournalFields = []string{"comments", "work_notes"}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.DeleteMode != "" && c.DeleteMode != DeleteResolve && c.DeleteMode != DeleteRecord {
		errs = append(errs, fmt.Errorf("writeback delete mode %q: want resolve or delete", c.DeleteMode))
	}
	if c.DefaultPolicy != "" && !c.DefaultPolicy.Valid() {
		errs = append(errs, fmt.Errorf("writeback default conflict policy %q: want servicenow_wins, saas_wins or newest_wins", c.DefaultPolicy))
	}
	for f, p := range c.Policies {
		if !p.Valid() {
			errs = append(errs, fmt.Errorf("writeback conflict policy of field %s: %q: want servicenow_wins, saas_wins or newest_wins", f, p))
		}
	}
	if c.MaxDeliver < 0 {
		errs = append(errs, errors.New("writeback max deliver must be 0 (unlimited) or positive"))
	}
	return errors.Join(errs...)
}

// ParsePolicies reads "field=policy,field=policy" (the env/flag form).
func ParsePolicies(s string) (map[string]Policy, error) {
	out := map[string]Policy{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		f, p, ok := strings.Cut(part, "=")
		if !ok || !Policy(p).Valid() {
			return nil, fmt.Errorf("conflict policy %q: want field=servicenow_wins|saas_wins|newest_wins", part)
		}
		out[strings.TrimSpace(f)] = Policy(strings.TrimSpace(p))
	}
	return out, nil
}

func (c Config) policy(field string) Policy {
	if p, ok := c.Policies[field]; ok {
		return p
	}
	return c.DefaultPolicy
}

func (c Config) isJournal(field string) bool { return slices.Contains(c.JournalFields, field) }
