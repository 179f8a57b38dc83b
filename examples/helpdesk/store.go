package helpdesk

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the pure-Go SQLite driver ("sqlite"): no cgo

	"github.com/nowbridge/nowbridge/sdk/wire"
)

// ErrNotFound is returned for a ticket the store does not hold.
var ErrNotFound = errors.New("no such ticket")

// Ticket statuses: the SaaS values the shipped incident mapping knows
// (deploy/mapping/incident.yaml).
const (
	StatusNew        = "new"
	StatusInProgress = "in_progress"
	StatusOnHold     = "on_hold"
	StatusResolved   = "resolved"
	StatusClosed     = "closed"
	StatusCanceled   = "canceled"
)

// Statuses lists every status in the order a person works through them.
var Statuses = []string{StatusNew, StatusInProgress, StatusOnHold, StatusResolved, StatusClosed, StatusCanceled}

// syncedFields are the ticket fields the app sends with every change (its
// whole state, so the bridge can tell what changed) and takes from
// ServiceNow. priority only comes back: ServiceNow computes it from impact
// and urgency and overwrites a priority sent to it.
var syncedFields = []string{"title", "description", "status", "urgency", "impact"}

// Change kinds, shown in a ticket's history.
const (
	KindCreate  = "create"
	KindEdit    = "edit"
	KindComment = "comment"
	KindResolve = "resolve"
	KindLink    = "link" // a record created in ServiceNow, taken into the helpdesk
)

// Ticket is one helpdesk ticket with what the app knows of its ServiceNow
// record.
type Ticket struct {
	ExternalID  string // the app's id, the record's correlation_id in ServiceNow
	Title       string
	Description string
	Status      string
	Urgency     string // 1 high, 2 medium, 3 low
	Impact      string
	Priority    string // computed by ServiceNow; "" until it says

	Version int64 // the app's version: one more per local change

	// The ServiceNow record, once the bridge said which.
	Table     string
	SysID     string
	Number    string
	URL       string
	SNVersion int64 // the newest sys_mod_count applied (the version guard); -1 none
	SNDeleted bool

	CreatedAt, UpdatedAt time.Time

	Sync Sync // the state of the newest change
}

// Sync says whether a ticket's newest change reached ServiceNow.
type Sync struct {
	State   string // SyncSynced, SyncPending or SyncRejected
	Version int64  // the change it describes; 0 for a ticket that only came from ServiceNow
	Outcome string // the bridge's outcome of that change ("" none yet)
	Reason  string // why it is pending or rejected, or what a conflict decided
	Hint    string // what to do about a rejection
}

// Sync states.
const (
	SyncSynced   = "synced"
	SyncPending  = "pending"
	SyncRejected = "rejected"
)

// Change is one version of a ticket the app sent (or will send) to the
// bridge, with the bridge's answer.
type Change struct {
	ExternalID string
	Version    int64
	Action     string // wire.AppUpsert
	Kind       string // KindCreate ...
	Fields     map[string]string
	Changed    []string // the fields the user changed in this version
	CreatedAt  time.Time
	Published  bool

	Outcome      string // the bridge's last result for it; "" none yet
	Message      string
	Detail       string
	Hint         string
	RetryReason  string
	DeadLettered bool
	Conflicts    []wire.ResultConflict
	AnsweredAt   time.Time
}

// Final reports whether the bridge gave the change its final answer.
func (c Change) Final() bool { return c.Outcome != "" && c.Outcome != wire.OutcomeRetrying }

// Comment is a comment written in the helpdesk (sent as the incident's
// additional comment).
type Comment struct {
	Version   int64 // the change that carried it
	Body      string
	CreatedAt time.Time
}

// Store keeps the helpdesk in one SQLite database.
type Store struct {
	db   *sql.DB
	dbID string // a random prefix of this database's external ids
	now  func() time.Time
}

const schema = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	external_id  TEXT NOT NULL UNIQUE,
	title        TEXT NOT NULL,
	description  TEXT NOT NULL DEFAULT '',
	status       TEXT NOT NULL,
	urgency      TEXT NOT NULL DEFAULT '3',
	impact       TEXT NOT NULL DEFAULT '3',
	priority     TEXT NOT NULL DEFAULT '',
	version      INTEGER NOT NULL DEFAULT 0,
	sn_table     TEXT NOT NULL DEFAULT '',
	sn_sys_id    TEXT NOT NULL DEFAULT '',
	sn_number    TEXT NOT NULL DEFAULT '',
	sn_url       TEXT NOT NULL DEFAULT '',
	sn_version   INTEGER NOT NULL DEFAULT -1,
	sn_deleted   INTEGER NOT NULL DEFAULT 0,
	created_at   INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_sys_id ON tickets (sn_sys_id);
CREATE TABLE IF NOT EXISTS changes (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	ticket_id     INTEGER NOT NULL REFERENCES tickets (id),
	version       INTEGER NOT NULL,
	action        TEXT NOT NULL,
	kind          TEXT NOT NULL,
	fields        TEXT NOT NULL,
	changed       TEXT NOT NULL,
	created_at    INTEGER NOT NULL,
	published_at  INTEGER,
	outcome       TEXT NOT NULL DEFAULT '',
	message       TEXT NOT NULL DEFAULT '',
	detail        TEXT NOT NULL DEFAULT '',
	hint          TEXT NOT NULL DEFAULT '',
	retry_reason  TEXT NOT NULL DEFAULT '',
	dead_lettered INTEGER NOT NULL DEFAULT 0,
	conflicts     TEXT NOT NULL DEFAULT '',
	answered_at   INTEGER,
	UNIQUE (ticket_id, version)
);
CREATE INDEX IF NOT EXISTS changes_outbox ON changes (published_at, seq);
CREATE TABLE IF NOT EXISTS comments (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	ticket_id  INTEGER NOT NULL REFERENCES tickets (id),
	version    INTEGER NOT NULL,
	body       TEXT NOT NULL,
	created_at INTEGER NOT NULL
);
`

// OpenStore opens (creating it if needed) the helpdesk database at path.
func OpenStore(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open helpdesk database %s: %w", path, err)
	}
	// One connection: every write is serialised by the pool instead of
	// failing with SQLITE_BUSY, and a small helpdesk needs no more.
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("create the helpdesk schema in %s (is it a helpdesk database?): %w", path, err)
	}
	s := &Store{db: db, now: time.Now}
	if s.dbID, err = s.databaseID(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// databaseID is a random id made when the database was created. It is
// part of every external id, so a new, empty helpdesk database never
// reuses "HD-1" of an older one whose link the bridge still holds (its
// change would land on the older ticket's incident).
func (s *Store) databaseID(ctx context.Context) (string, error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	if _, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO meta (key, value) VALUES ('db_id', ?)`, strings.ToUpper(hex.EncodeToString(b))); err != nil {
		return "", fmt.Errorf("helpdesk database id: %w", err)
	}
	var id string
	if err := s.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'db_id'`).Scan(&id); err != nil {
		return "", fmt.Errorf("helpdesk database id: %w", err)
	}
	return id, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// NewTicket is what a person fills in to open a ticket.
type NewTicket struct {
	Title, Description, Urgency, Impact string
}

// Edit is a person's change to a ticket: the new values of the ticket's
// fields and an optional comment.
type Edit struct {
	Title, Description, Status, Urgency, Impact string
	Comment                                     string
}

// ValidationError lists what is wrong with a form, field by field.
type ValidationError map[string]string

func (v ValidationError) Error() string {
	keys := slices.Sorted(maps.Keys(v))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+": "+v[k])
	}
	return "invalid ticket: " + strings.Join(parts, "; ")
}

const (
	maxTitle = 160 // short_description's length on incident
	maxText  = 4000
)

func validate(e Edit) error {
	v := ValidationError{}
	switch title := strings.TrimSpace(e.Title); {
	case title == "":
		v["title"] = "a ticket needs a title"
	case len([]rune(title)) > maxTitle:
		v["title"] = fmt.Sprintf("at most %d characters (ServiceNow's short description)", maxTitle)
	}
	if len([]rune(e.Description)) > maxText {
		v["description"] = fmt.Sprintf("at most %d characters", maxText)
	}
	if len([]rune(e.Comment)) > maxText {
		v["comment"] = fmt.Sprintf("at most %d characters", maxText)
	}
	if !slices.Contains(Statuses, e.Status) {
		v["status"] = "one of " + strings.Join(Statuses, ", ")
	}
	for name, val := range map[string]string{"urgency": e.Urgency, "impact": e.Impact} {
		if val != "1" && val != "2" && val != "3" {
			v[name] = "1 (high), 2 (medium) or 3 (low)"
		}
	}
	if len(v) > 0 {
		return v
	}
	return nil
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64)
}

// Create opens a ticket: its version 1 goes to the outbox in the same
// transaction, so a ticket is never stored without its change being sent.
func (s *Store) Create(ctx context.Context, n NewTicket) (Ticket, error) {
	e := Edit{Title: strings.TrimSpace(n.Title), Description: n.Description, Status: StatusNew, Urgency: orDefault(n.Urgency, "3"), Impact: orDefault(n.Impact, "3")}
	if err := validate(e); err != nil {
		return Ticket{}, err
	}
	var id string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		now := ms(s.now())
		res, err := tx.ExecContext(ctx, `INSERT INTO tickets (external_id, title, description, status, urgency, impact, version, created_at, updated_at)
			VALUES ('', ?, ?, ?, ?, ?, 1, ?, ?)`, e.Title, e.Description, e.Status, e.Urgency, e.Impact, now, now)
		if err != nil {
			return err
		}
		rowID, _ := res.LastInsertId()
		id = fmt.Sprintf("HD-%s-%d", s.dbID, rowID)
		if _, err := tx.ExecContext(ctx, `UPDATE tickets SET external_id = ? WHERE id = ?`, id, rowID); err != nil {
			return err
		}
		return addChange(ctx, tx, rowID, 1, KindCreate, stateOf(e), syncedFields, now)
	})
	if err != nil {
		return Ticket{}, fmt.Errorf("create ticket: %w", err)
	}
	t, _, _, err := s.Ticket(ctx, id)
	return t, err
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// stateOf is the fields the app sends for a ticket.
func stateOf(e Edit) map[string]string {
	return map[string]string{"title": e.Title, "description": e.Description, "status": e.Status, "urgency": e.Urgency, "impact": e.Impact}
}

func addChange(ctx context.Context, tx *sql.Tx, ticketID, version int64, kind string, fields map[string]string, changed []string, now int64) error {
	fj, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	cj, err := json.Marshal(changed)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO changes (ticket_id, version, action, kind, fields, changed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		ticketID, version, wire.AppUpsert, kind, string(fj), string(cj), now)
	return err
}

// Patch is a person's change to a ticket: the new value of each field
// they changed (a form sends only what differs from the values it showed,
// so a field ServiceNow changed meanwhile is not put back) and an optional
// comment.
type Patch struct {
	Fields  map[string]string // title, description, status, urgency, impact
	Comment string
}

// Update applies a patch to a ticket as one new version. changed is false
// when it changes nothing and carries no comment: no version is made.
func (s *Store) Update(ctx context.Context, externalID string, p Patch, kind string) (changed bool, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var id, version int64
		cur := Edit{}
		err := tx.QueryRowContext(ctx, `SELECT id, version, title, description, status, urgency, impact FROM tickets WHERE external_id = ?`, externalID).
			Scan(&id, &version, &cur.Title, &cur.Description, &cur.Status, &cur.Urgency, &cur.Impact)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		before := stateOf(cur)
		after := maps.Clone(before)
		for f, v := range p.Fields {
			if !slices.Contains(syncedFields, f) {
				return ValidationError{f: "not a ticket field"}
			}
			if f == "title" {
				v = strings.TrimSpace(v)
			}
			after[f] = v
		}
		e := Edit{Title: after["title"], Description: after["description"], Status: after["status"], Urgency: after["urgency"], Impact: after["impact"],
			Comment: strings.TrimSpace(p.Comment)}
		if err := validate(e); err != nil {
			return err
		}
		var diff []string
		for _, f := range syncedFields {
			if before[f] != after[f] {
				diff = append(diff, f)
			}
		}
		if e.Comment != "" {
			after["comment"] = e.Comment
			diff = append(diff, "comment")
		}
		if len(diff) == 0 {
			return nil
		}
		changed = true
		now := ms(s.now())
		version++
		if _, err := tx.ExecContext(ctx, `UPDATE tickets SET title = ?, description = ?, status = ?, urgency = ?, impact = ?, version = ?, updated_at = ? WHERE id = ?`,
			e.Title, e.Description, e.Status, e.Urgency, e.Impact, version, now, id); err != nil {
			return err
		}
		if e.Comment != "" {
			if _, err := tx.ExecContext(ctx, `INSERT INTO comments (ticket_id, version, body, created_at) VALUES (?, ?, ?, ?)`, id, version, e.Comment, now); err != nil {
				return err
			}
		}
		return addChange(ctx, tx, id, version, kind, after, diff, now)
	})
	var v ValidationError
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.As(err, &v) {
		err = fmt.Errorf("update ticket %s: %w", externalID, err)
	}
	return changed && err == nil, err
}

// Edit returns the ticket's fields as an Edit, the base of a form.
func (t Ticket) Edit() Edit {
	return Edit{Title: t.Title, Description: t.Description, Status: t.Status, Urgency: t.Urgency, Impact: t.Impact}
}

func (s *Store) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

const ticketColumns = `t.external_id, t.title, t.description, t.status, t.urgency, t.impact, t.priority, t.version,
	t.sn_table, t.sn_sys_id, t.sn_number, t.sn_url, t.sn_version, t.sn_deleted, t.created_at, t.updated_at`

const changeColumns = `c.version, c.action, c.kind, c.fields, c.changed, c.created_at, c.published_at, c.outcome,
	c.message, c.detail, c.hint, c.retry_reason, c.dead_lettered, c.conflicts, c.answered_at`

type scanner interface{ Scan(...any) error }

func scanTicket(r scanner, extra ...any) (Ticket, error) {
	var t Ticket
	var created, updated int64
	dest := append([]any{&t.ExternalID, &t.Title, &t.Description, &t.Status, &t.Urgency, &t.Impact, &t.Priority, &t.Version,
		&t.Table, &t.SysID, &t.Number, &t.URL, &t.SNVersion, &t.SNDeleted, &created, &updated}, extra...)
	if err := r.Scan(dest...); err != nil {
		return Ticket{}, err
	}
	t.CreatedAt, t.UpdatedAt = time.UnixMilli(created), time.UnixMilli(updated)
	return t, nil
}

// changeRow scans the nullable columns of a change.
type changeRow struct {
	version                                  sql.NullInt64
	action, kind, fields, changed, outcome   sql.NullString
	message, detail, hint, retry, conflicts  sql.NullString
	created, published, answered, deadLetter sql.NullInt64
}

func (r *changeRow) dest() []any {
	return []any{&r.version, &r.action, &r.kind, &r.fields, &r.changed, &r.created, &r.published, &r.outcome,
		&r.message, &r.detail, &r.hint, &r.retry, &r.deadLetter, &r.conflicts, &r.answered}
}

func (r *changeRow) change(externalID string) (Change, bool) {
	if !r.version.Valid {
		return Change{}, false
	}
	c := Change{
		ExternalID: externalID, Version: r.version.Int64, Action: r.action.String, Kind: r.kind.String,
		CreatedAt: fromMS(r.created), Published: r.published.Valid, Outcome: r.outcome.String,
		Message: r.message.String, Detail: r.detail.String, Hint: r.hint.String, RetryReason: r.retry.String,
		DeadLettered: r.deadLetter.Int64 != 0, AnsweredAt: fromMS(r.answered),
	}
	_ = json.Unmarshal([]byte(r.fields.String), &c.Fields)
	_ = json.Unmarshal([]byte(r.changed.String), &c.Changed)
	if r.conflicts.String != "" {
		_ = json.Unmarshal([]byte(r.conflicts.String), &c.Conflicts)
	}
	return c, true
}

// Tickets lists every ticket, the most recently changed first, each with
// the sync state of its newest change.
func (s *Store) Tickets(ctx context.Context) ([]Ticket, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+ticketColumns+`, `+changeColumns+`
		FROM tickets t LEFT JOIN changes c ON c.ticket_id = t.id AND c.version = t.version
		ORDER BY t.updated_at DESC, t.id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list tickets: %w", err)
	}
	defer rows.Close()
	var out []Ticket
	for rows.Next() {
		var cr changeRow
		t, err := scanTicket(rows, cr.dest()...)
		if err != nil {
			return nil, fmt.Errorf("list tickets: %w", err)
		}
		latest, ok := cr.change(t.ExternalID)
		t.Sync = syncOf(t, latest, ok)
		out = append(out, t)
	}
	return out, rows.Err()
}

// Ticket returns one ticket with its changes (newest first) and comments
// (oldest first).
func (s *Store) Ticket(ctx context.Context, externalID string) (Ticket, []Change, []Comment, error) {
	var rowID int64
	t, err := scanTicket(s.db.QueryRowContext(ctx, `SELECT `+ticketColumns+`, t.id FROM tickets t WHERE t.external_id = ?`, externalID), &rowID)
	if errors.Is(err, sql.ErrNoRows) {
		return Ticket{}, nil, nil, ErrNotFound
	}
	if err != nil {
		return Ticket{}, nil, nil, fmt.Errorf("read ticket %s: %w", externalID, err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+changeColumns+` FROM changes c WHERE c.ticket_id = ? ORDER BY c.version DESC`, rowID)
	if err != nil {
		return Ticket{}, nil, nil, fmt.Errorf("read ticket %s: %w", externalID, err)
	}
	var changes []Change
	for rows.Next() {
		var cr changeRow
		if err := rows.Scan(cr.dest()...); err != nil {
			rows.Close()
			return Ticket{}, nil, nil, fmt.Errorf("read ticket %s: %w", externalID, err)
		}
		c, _ := cr.change(externalID)
		changes = append(changes, c)
	}
	rows.Close()
	var latest Change
	if len(changes) > 0 && changes[0].Version == t.Version {
		latest = changes[0]
	}
	t.Sync = syncOf(t, latest, latest.Version != 0)

	crows, err := s.db.QueryContext(ctx, `SELECT version, body, created_at FROM comments WHERE ticket_id = ? ORDER BY id`, rowID)
	if err != nil {
		return Ticket{}, nil, nil, fmt.Errorf("read comments of %s: %w", externalID, err)
	}
	defer crows.Close()
	var comments []Comment
	for crows.Next() {
		var c Comment
		var at int64
		if err := crows.Scan(&c.Version, &c.Body, &at); err != nil {
			return Ticket{}, nil, nil, fmt.Errorf("read comments of %s: %w", externalID, err)
		}
		c.CreatedAt = time.UnixMilli(at)
		comments = append(comments, c)
	}
	return t, changes, comments, crows.Err()
}

// syncOf decides a ticket's sync state from its newest change: pending
// until the bridge's final result for that version, then synced or
// rejected. A ticket whose newest version came from ServiceNow alone (no
// change of the app's) is synced.
func syncOf(t Ticket, latest Change, have bool) Sync {
	if !have {
		return Sync{State: SyncSynced}
	}
	s := Sync{Version: latest.Version, Outcome: latest.Outcome}
	switch latest.Outcome {
	case "":
		s.State = SyncPending
		if !latest.Published {
			s.Reason = "waiting to be sent to the bridge"
		} else {
			s.Reason = "sent; waiting for ServiceNow"
		}
	case wire.OutcomeRetrying:
		s.State = SyncPending
		s.Reason = retryText(latest.RetryReason, latest.Message)
	case wire.OutcomeRejected:
		s.State, s.Reason, s.Hint = SyncRejected, rejectText(latest), latest.Hint
	case wire.OutcomeConflict:
		s.State, s.Reason = SyncSynced, conflictText(latest.Conflicts)
	default: // created, updated, unchanged, stale
		s.State = SyncSynced
	}
	return s
}

func retryText(reason, message string) string {
	var what string
	switch reason {
	case "rate_limited":
		what = "ServiceNow's rate limit"
	case "server_error":
		what = "ServiceNow answered with a server error"
	case "breaker_open":
		what = "ServiceNow is failing; the bridge pauses its writes"
	case "network":
		what = "ServiceNow cannot be reached"
	case "auth":
		what = "the bridge cannot sign in to ServiceNow"
	default:
		what = "a retryable failure"
	}
	if message != "" {
		what += " (" + message + ")"
	}
	return "waiting on " + what + "; the bridge retries"
}

func rejectText(c Change) string {
	msg := c.Message
	if c.Detail != "" && c.Detail != msg {
		if msg != "" {
			msg += ": "
		}
		msg += c.Detail
	}
	if msg == "" {
		msg = "ServiceNow refused the change"
	}
	return msg
}

func conflictText(cs []wire.ResultConflict) string {
	if len(cs) == 0 {
		return ""
	}
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		who := "ServiceNow's"
		if c.Winner == "saas" {
			who = "the helpdesk's"
		}
		parts = append(parts, fmt.Sprintf("%s changed on both sides, %s value kept (%s)", c.Field, who, c.Policy))
	}
	return strings.Join(parts, "; ")
}

// Outgoing is a change waiting in the outbox, as the app publishes it.
type Outgoing struct {
	Seq    int64
	Action string
	wire.AppChange
}

// Outbox returns up to limit changes not yet published, oldest first (so
// one ticket's versions leave in order).
func (s *Store) Outbox(ctx context.Context, limit int) ([]Outgoing, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT c.seq, c.action, t.external_id, t.sn_sys_id, c.version, c.created_at, c.fields
		FROM changes c JOIN tickets t ON t.id = c.ticket_id
		WHERE c.published_at IS NULL ORDER BY c.seq LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("read the outbox: %w", err)
	}
	defer rows.Close()
	var out []Outgoing
	for rows.Next() {
		var o Outgoing
		var at int64
		var fields string
		if err := rows.Scan(&o.Seq, &o.Action, &o.ExternalID, &o.SysID, &o.Version, &at, &fields); err != nil {
			return nil, fmt.Errorf("read the outbox: %w", err)
		}
		o.UpdatedAt = time.UnixMilli(at).UTC()
		if err := json.Unmarshal([]byte(fields), &o.Fields); err != nil {
			return nil, fmt.Errorf("read the outbox: change %d of %s: %w", o.Version, o.ExternalID, err)
		}
		if o.Fields == nil {
			o.Fields = wire.Fields{}
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// MarkPublished takes a change out of the outbox once the bridge's stream
// stored it.
func (s *Store) MarkPublished(ctx context.Context, seq int64) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE changes SET published_at = ? WHERE seq = ? AND published_at IS NULL`, ms(s.now()), seq); err != nil {
		return fmt.Errorf("mark change %d published: %w", seq, err)
	}
	return nil
}

// pendingFields are the fields a ticket's changes without a final answer
// changed: ServiceNow's news must not undo them while they are on their
// way (the bridge decides a conflict, and its result says who won).
func pendingFields(ctx context.Context, tx *sql.Tx, ticketID int64) (map[string]bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT changed FROM changes WHERE ticket_id = ? AND outcome IN ('', ?)`, ticketID, wire.OutcomeRetrying)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var cj string
		if err := rows.Scan(&cj); err != nil {
			return nil, err
		}
		var fs []string
		_ = json.Unmarshal([]byte(cj), &fs)
		for _, f := range fs {
			out[f] = true
		}
	}
	return out, rows.Err()
}

// ApplyOutcome says what ApplyFromServiceNow did.
type ApplyOutcome string

// Apply outcomes.
const (
	Applied  ApplyOutcome = "applied"  // the ticket took ServiceNow's version
	Stale    ApplyOutcome = "stale"    // the ticket holds this version or a newer one: nothing changed
	Imported ApplyOutcome = "imported" // a record created in ServiceNow became a new ticket (its link change is in the outbox)
)

// ApplyFromServiceNow applies one ServiceNow version of a record
// (bridge.apply.<entity>.<action>) under the version guard: a version not
// newer than the one applied changes nothing, so a redelivery or an older
// message arriving late is harmless. Fields the user changed in a change
// still on its way are kept. A record the helpdesk does not know becomes a
// ticket, and a link change (its external id with the record's sys_id)
// goes to the outbox so the bridge links the two.
func (s *Store) ApplyFromServiceNow(ctx context.Context, action string, ch wire.AppChange) (ApplyOutcome, error) {
	var out ApplyOutcome
	err := s.tx(ctx, func(tx *sql.Tx) error {
		id, handled, found, err := findForApply(ctx, tx, ch)
		if err != nil {
			return err
		}
		now := ms(s.now())
		if !found {
			out = Imported
			return s.importRecord(ctx, tx, action, ch, now)
		}
		if !handled.Supersedes(ch.Version, action) {
			out = Stale
			return nil
		}
		out = Applied
		pending, err := pendingFields(ctx, tx, id)
		if err != nil {
			return err
		}
		sets, args := []string{}, []any{}
		for _, f := range append(slices.Clone(syncedFields), "priority") {
			v, ok := ch.Fields[f]
			if !ok || pending[f] {
				continue
			}
			if f == "title" && strings.TrimSpace(v) == "" {
				continue // a ticket keeps a title; an empty short description is not news worth losing it for
			}
			sets, args = append(sets, f+" = ?"), append(args, v)
		}
		sets = append(sets, "sn_version = ?", "sn_sys_id = ?", "sn_table = CASE WHEN ? <> '' THEN ? ELSE sn_table END",
			"sn_number = CASE WHEN ? <> '' THEN ? ELSE sn_number END", "sn_deleted = ?", "updated_at = ?")
		args = append(args, ch.Version, ch.SysID, ch.Table, ch.Table, ch.Number, ch.Number, action == wire.ActionDelete, now, id)
		_, err = tx.ExecContext(ctx, `UPDATE tickets SET `+strings.Join(sets, ", ")+` WHERE id = ?`, args...)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("apply %s/%s version %d: %w", ch.Table, ch.SysID, ch.Version, err)
	}
	return out, nil
}

// findForApply finds the ticket of a ServiceNow record, with the version
// of it the ticket holds: by the external id the bridge sent, else by
// sys_id (a record the helpdesk imported, whose link the bridge has not
// written yet).
func findForApply(ctx context.Context, tx *sql.Tx, ch wire.AppChange) (id int64, h wire.Handled, found bool, err error) {
	if ch.ExternalID != "" {
		err = tx.QueryRowContext(ctx, `SELECT id, sn_version, sn_deleted FROM tickets WHERE external_id = ?`, ch.ExternalID).Scan(&id, &h.Version, &h.Deleted)
		if err == nil {
			return id, h, true, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return 0, h, false, err
		}
	}
	if ch.SysID == "" {
		return 0, h, false, nil
	}
	err = tx.QueryRowContext(ctx, `SELECT id, sn_version, sn_deleted FROM tickets WHERE sn_sys_id = ? ORDER BY id LIMIT 1`, ch.SysID).Scan(&id, &h.Version, &h.Deleted)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, h, false, nil
	}
	return id, h, err == nil, err
}

// Versions is the SDK's version guard (nowbridge.VersionStore) kept in the
// tickets themselves: the sys_mod_count a ticket holds is written in the
// same transaction as its fields, so the guard and the data never disagree,
// across restarts too. Keys are "<table>/<sys_id>".
type Versions struct{ s *Store }

// Versions returns the store's version guard.
func (s *Store) Versions() Versions { return Versions{s} }

// Get implements nowbridge.VersionStore.
func (v Versions) Get(ctx context.Context, key string) (wire.Handled, bool, error) {
	table, sysID, ok := strings.Cut(key, "/")
	if !ok {
		return wire.Handled{}, false, nil
	}
	var h wire.Handled
	err := v.s.db.QueryRowContext(ctx, `SELECT sn_version, sn_deleted FROM tickets WHERE sn_sys_id = ? AND sn_table IN (?, '') AND sn_version >= 0 ORDER BY id LIMIT 1`, sysID, table).
		Scan(&h.Version, &h.Deleted)
	if errors.Is(err, sql.ErrNoRows) {
		return wire.Handled{}, false, nil
	}
	if err != nil {
		return wire.Handled{}, false, fmt.Errorf("version of %s: %w", key, err)
	}
	return h, true, nil
}

// Put implements nowbridge.VersionStore. ApplyFromServiceNow already moved
// the ticket in its transaction; this only makes sure, never backwards.
func (v Versions) Put(ctx context.Context, key string, h wire.Handled) error {
	table, sysID, ok := strings.Cut(key, "/")
	if !ok {
		return nil
	}
	_, err := v.s.db.ExecContext(ctx, `UPDATE tickets SET sn_version = ?, sn_deleted = ? WHERE sn_sys_id = ? AND sn_table IN (?, '') AND (sn_version < ? OR (sn_version = ? AND ?))`,
		h.Version, h.Deleted, sysID, table, h.Version, h.Version, h.Deleted)
	if err != nil {
		return fmt.Errorf("record version %d of %s: %w", h.Version, key, err)
	}
	return nil
}

func (s *Store) importRecord(ctx context.Context, tx *sql.Tx, action string, ch wire.AppChange, now int64) error {
	f := ch.Fields
	title := strings.TrimSpace(f["title"])
	if title == "" {
		title = "(no short description)"
	}
	externalID, version := ch.ExternalID, int64(0)
	res, err := tx.ExecContext(ctx, `INSERT INTO tickets (external_id, title, description, status, urgency, impact, priority, version,
			sn_table, sn_sys_id, sn_number, sn_version, sn_deleted, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)`,
		externalID, title, f["description"], orDefault(f["status"], StatusNew), orDefault(f["urgency"], "3"), orDefault(f["impact"], "3"), f["priority"],
		ch.Table, ch.SysID, ch.Number, ch.Version, action == wire.ActionDelete, now, now)
	if err != nil {
		return err
	}
	if externalID != "" {
		return nil // the bridge has its link already
	}
	rowID, _ := res.LastInsertId()
	externalID, version = fmt.Sprintf("HD-%s-%d", s.dbID, rowID), 1
	if _, err := tx.ExecContext(ctx, `UPDATE tickets SET external_id = ?, version = ? WHERE id = ?`, externalID, version, rowID); err != nil {
		return err
	}
	// No fields: the change only links; ServiceNow holds the values already.
	return addChange(ctx, tx, rowID, version, KindLink, map[string]string{}, nil, now)
}

// RecordResult stores the bridge's result of one change: its outcome on
// the change, the record's number, sys_id and link on the ticket, and for
// a conflict ServiceNow's value of each field ServiceNow won (unless a
// newer change of the user's changed that field again). A retrying result
// never replaces a final one, so results arriving twice or late are
// harmless. known is false for a ticket this helpdesk does not hold.
func (s *Store) RecordResult(ctx context.Context, r wire.Result) (known bool, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM tickets WHERE external_id = ?`, r.ExternalID).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		known = true
		now := ms(s.now())
		var msg, detail, hint, reason string
		var dead bool
		if r.Error != nil {
			msg, detail, hint, reason, dead = r.Error.Message, r.Error.Detail, r.Error.Hint, r.Error.Reason, r.Error.DeadLettered
		}
		conflicts := ""
		if len(r.Conflicts) > 0 {
			b, _ := json.Marshal(r.Conflicts)
			conflicts = string(b)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE changes SET outcome = ?, message = ?, detail = ?, hint = ?, retry_reason = ?, dead_lettered = ?, conflicts = ?, answered_at = ?
			WHERE ticket_id = ? AND version = ? AND NOT (? = ? AND outcome NOT IN ('', ?))`,
			r.Outcome, msg, detail, hint, reason, dead, conflicts, now,
			id, r.Version, r.Outcome, wire.OutcomeRetrying, wire.OutcomeRetrying); err != nil {
			return err
		}
		if r.SysID != "" {
			if _, err := tx.ExecContext(ctx, `UPDATE tickets SET sn_sys_id = ?,
				sn_table = CASE WHEN ? <> '' THEN ? ELSE sn_table END,
				sn_number = CASE WHEN ? <> '' THEN ? ELSE sn_number END,
				sn_url = CASE WHEN ? <> '' THEN ? ELSE sn_url END WHERE id = ?`,
				r.SysID, r.Table, r.Table, r.Number, r.Number, r.URL, r.URL, id); err != nil {
				return err
			}
		}
		return s.takeConflicts(ctx, tx, id, r)
	})
	if err != nil {
		return false, fmt.Errorf("record the %s result of %s version %d: %w", r.Outcome, r.ExternalID, r.Version, err)
	}
	return known, nil
}

// takeConflicts sets each field ServiceNow won to ServiceNow's value,
// unless a change newer than the one answered changed it again.
func (s *Store) takeConflicts(ctx context.Context, tx *sql.Tx, id int64, r wire.Result) error {
	if r.Outcome != wire.OutcomeConflict {
		return nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT changed FROM changes WHERE ticket_id = ? AND version > ?`, id, r.Version)
	if err != nil {
		return err
	}
	newer := map[string]bool{}
	for rows.Next() {
		var cj string
		if err := rows.Scan(&cj); err != nil {
			rows.Close()
			return err
		}
		var fs []string
		_ = json.Unmarshal([]byte(cj), &fs)
		for _, f := range fs {
			newer[f] = true
		}
	}
	rows.Close()
	for _, c := range r.Conflicts {
		if c.Winner != "servicenow" || newer[c.Field] || !slices.Contains(syncedFields, c.Field) {
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tickets SET `+c.Field+` = ? WHERE id = ?`, c.ServiceNow, id); err != nil {
			return err
		}
	}
	return nil
}
