package outbound

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/mapping"
)

// DeleteMode says what an app delete does in ServiceNow (the mapping's
// delete.mode, or Config.DeleteMode overriding it).
type DeleteMode = mapping.DeleteMode

// Delete modes.
const (
	// DeleteResolve sets the table's delete state (with the close rule's
	// fields when it closes the record): history, SLAs and audit stay.
	DeleteResolve = mapping.DeleteResolve
	// DeleteRecord deletes the record (DELETE /api/now/table/...).
	DeleteRecord = mapping.DeleteRecord
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

	// DeleteMode overrides every table's delete.mode (BRIDGE_WRITEBACK_DELETE);
	// "" keeps each mapping's.
	DeleteMode DeleteMode
	// DeleteState overrides the state a resolve-mode delete sets
	// (BRIDGE_WRITEBACK_DELETE_STATE): "7" for every table, or per table
	// "incident=7,change_request=4"; "" keeps each mapping's delete.state.
	// A state must be a value of the table's state map.
	DeleteState string
	// CloseCode overrides the close code a write that moves a record into
	// a closing state of its mapping's close rule carries (default: chosen
	// from the instance's active choices, see CloseCodes).
	CloseCode  string
	CloseNotes string // default "Resolved in <entity> <external_id> (synced by nowbridge)"
	// InstanceURL is the ServiceNow instance (BRIDGE_SN_INSTANCE_URL): the
	// results carry each record's link on it. "" leaves the links out.
	InstanceURL string
	// CorrelationDisplay is written to correlation_display on create
	// (default "nowbridge"), telling ServiceNow users which system links it.
	CorrelationDisplay string

	// Policies maps a ServiceNow field name to its conflict policy;
	// DefaultPolicy covers the rest (default newest_wins).
	Policies      map[string]Policy
	DefaultPolicy Policy
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
	if c.CorrelationDisplay == "" {
		c.CorrelationDisplay = "nowbridge"
	}
	if c.DefaultPolicy == "" {
		c.DefaultPolicy = NewestWins
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.DeleteMode != "" && !c.DeleteMode.Valid() {
		errs = append(errs, fmt.Errorf("writeback delete mode %q: want resolve or delete (or empty for each mapping's delete.mode)", c.DeleteMode))
	}
	if _, err := ParseDeleteStates(c.DeleteState); err != nil {
		errs = append(errs, err)
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

func (c Config) policy(field string) Policy {
	if p, ok := c.Policies[field]; ok {
		return p
	}
	return c.DefaultPolicy
}

// ParseDeleteStates reads BRIDGE_WRITEBACK_DELETE_STATE: one state for
// every table ("7", under the key ""), or table=state pairs
// ("incident=7,change_request=4"). "" overrides nothing.
func ParseDeleteStates(s string) (map[string]string, error) {
	out := map[string]string{}
	s = strings.TrimSpace(s)
	if s == "" {
		return out, nil
	}
	if !strings.Contains(s, "=") {
		if strings.Contains(s, ",") {
			return nil, fmt.Errorf("BRIDGE_WRITEBACK_DELETE_STATE %q: one state for every table, or table=state pairs (e.g. incident=7,change_request=4)", s)
		}
		out[""] = s
		return out, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		table, state, ok := strings.Cut(strings.TrimSpace(part), "=")
		table, state = strings.TrimSpace(table), strings.TrimSpace(state)
		if !ok || table == "" || state == "" {
			return nil, fmt.Errorf("BRIDGE_WRITEBACK_DELETE_STATE: %q is not table=state (e.g. incident=7,change_request=4)", part)
		}
		if _, dup := out[table]; dup {
			return nil, fmt.Errorf("BRIDGE_WRITEBACK_DELETE_STATE: table %s is given twice", table)
		}
		out[table] = state
	}
	return out, nil
}

// deleteRule is what an app delete does to a record of t: the mapping's
// delete with the overrides applied. An error says why no delete can be
// made and what to set; retrying does not change it.
func (c Config) deleteRule(t *mapping.Table) (mapping.Delete, error) {
	d := t.Delete
	if c.DeleteMode != "" {
		d.Mode = c.DeleteMode
	}
	states, err := ParseDeleteStates(c.DeleteState)
	if err != nil {
		return d, err
	}
	override, ok := states[t.Name]
	if !ok {
		override, ok = states[""]
	}
	if ok && override != d.State {
		d.State = override
		if !t.Close.Closes(d.State) {
			d.CloseCode = ""
		}
	}
	switch {
	case d.Mode == "":
		return d, fmt.Errorf("the mapping of %s (%s) says nothing about deletes: add delete: {mode: resolve, state: <state>} or {mode: delete} to it, or set BRIDGE_WRITEBACK_DELETE", t.Name, t.Source)
	case d.Mode == DeleteRecord:
		return d, nil
	case d.State == "":
		return d, fmt.Errorf("deletes of %s resolve (BRIDGE_WRITEBACK_DELETE=resolve), but its mapping (%s) names no delete state: set BRIDGE_WRITEBACK_DELETE_STATE=%s=<state> or add delete.state to the mapping", t.Name, t.Source, t.Name)
	}
	if known := t.StateValues(); known != nil && !slices.Contains(known, d.State) {
		return d, fmt.Errorf("BRIDGE_WRITEBACK_DELETE_STATE %q is not a state of %s (its mapping %s knows %s); give each table its own: %s=<state>",
			d.State, t.Name, t.Source, strings.Join(known, ", "), t.Name)
	}
	return d, nil
}

// CheckDelete checks what an app delete does to each mapped table, with
// the overrides applied, before the writeback starts: a wrong override is
// returned (every delete of that table would be dead-lettered); a table
// whose mapping says nothing about deletes is logged, since its deletes
// only fail if the app sends one.
func CheckDelete(m Mapping, tables []string, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	for _, name := range tables {
		t, ok := m.ForTable(name)
		if !ok {
			continue
		}
		d, err := cfg.deleteRule(t)
		switch {
		case err != nil && d.Mode == "":
			log.Warn("app deletes of this table will be dead-lettered", "table", name, "err", err)
		case err != nil:
			errs = append(errs, err)
		case d.Mode == DeleteRecord:
			log.Info("an app delete deletes the record", "table", name)
		default:
			log.Info("an app delete sets the delete state", "table", name, "state", d.State, "closes", t.Close.Closes(d.State))
		}
	}
	if states, _ := ParseDeleteStates(cfg.DeleteState); len(states) > 0 {
		for _, name := range slices.Sorted(maps.Keys(states)) {
			if _, ok := m.ForTable(name); name != "" && !ok {
				errs = append(errs, fmt.Errorf("BRIDGE_WRITEBACK_DELETE_STATE names %s, which is not a synced table (BRIDGE_TABLES)", name))
			}
		}
	}
	return errors.Join(errs...)
}
