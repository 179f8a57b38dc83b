package mapping

import (
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"slices"
	"strings"
)

// DefaultIncident is the shipped mapping of incident (SPEC §3); the same
// bytes ship as deploy/mapping/incident.yaml.
//
//go:embed incident.yaml
var DefaultIncident []byte

// shipped holds every mapping nowbridge ships, one <table>.yaml each; the
// same files are in deploy/mapping/.
//
//go:embed *.yaml
var shipped embed.FS

// DefaultTable is the table synced when no table is configured.
const DefaultTable = "incident"

// Shipped lists the tables nowbridge ships a mapping for, sorted.
func Shipped() []string {
	entries, _ := fs.ReadDir(shipped, ".") // an embed.FS root always reads
	var out []string
	for _, e := range entries {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	return out
}

// ShippedFile returns the shipped mapping file of a table.
func ShippedFile(table string) ([]byte, bool) {
	data, err := shipped.ReadFile(table + ".yaml")
	return data, err == nil
}

// parseShipped parses the shipped mapping of a table.
func parseShipped(table string) (*Table, bool, error) {
	data, ok := ShippedFile(table)
	if !ok {
		return nil, false, nil
	}
	t, err := Parse(table+".yaml (shipped)", data)
	return t, true, err
}

// Set is the mapping of every synced table. It is immutable and safe for
// concurrent use.
type Set struct {
	byTable  map[string]*Table
	byEntity map[string]*Table
	log      *slog.Logger
}

// NewSet combines table mappings; two files for one table or one entity are
// an error. log receives debug lines about fields the mapping ignores (nil:
// discard).
func NewSet(log *slog.Logger, tables ...*Table) (*Set, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Set{byTable: map[string]*Table{}, byEntity: map[string]*Table{}, log: log}
	for _, t := range tables {
		if prev, dup := s.byTable[t.Name]; dup {
			return nil, fmt.Errorf("mapping %s: table %s is already mapped by %s", t.Source, t.Name, prev.Source)
		}
		if prev, dup := s.byEntity[t.Entity]; dup {
			return nil, fmt.Errorf("mapping %s: entity %s is already mapped by %s (table %s); give each table its own entity", t.Source, t.Entity, prev.Source, prev.Name)
		}
		s.byTable[t.Name], s.byEntity[t.Entity] = t, t
	}
	return s, nil
}

// Default is the shipped incident mapping alone: incident <-> ticket.
func Default(log *slog.Logger) *Set {
	t, _, err := parseShipped(DefaultTable)
	if err != nil {
		panic(err) // the embedded files are tested
	}
	s, _ := NewSet(log, t)
	return s
}

// Load builds the mapping of each synced table (BRIDGE_TABLES; none means
// incident): the file of fsys that maps it, else the mapping nowbridge
// ships for it. fsys is BRIDGE_MAPPING_DIR (os.DirFS), nil for none; every
// *.yaml and *.yml file at its top is parsed, and a file mapping a table
// that is not synced is left out with a log line. The first broken file
// stops loading with an error naming its line; a synced table with neither
// a file nor a shipped mapping is an error naming both remedies.
func Load(fsys fs.FS, tables []string, log *slog.Logger) (*Set, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(tables) == 0 {
		tables = []string{DefaultTable}
	}
	files, err := readDir(fsys)
	if err != nil {
		return nil, err
	}
	var out []*Table
	fromFile := map[string]*Table{}
	for _, t := range files {
		if !slices.Contains(tables, t.Name) {
			log.Info("mapping file left out: its table is not synced (BRIDGE_TABLES)", "file", t.Source, "table", t.Name, "tables", tables)
			continue
		}
		if prev, dup := fromFile[t.Name]; dup {
			return nil, fmt.Errorf("mapping %s: table %s is already mapped by %s", t.Source, t.Name, prev.Source)
		}
		fromFile[t.Name] = t
		out = append(out, t)
	}
	for _, name := range tables {
		own, hasFile := fromFile[name]
		ship, hasShipped, err := parseShipped(name)
		if err != nil {
			return nil, err
		}
		switch {
		case hasFile && hasShipped:
			warnMissingKnowledge(log, own, ship)
		case hasFile:
		case hasShipped:
			out = append(out, ship)
		default:
			return nil, fmt.Errorf("table %s (BRIDGE_TABLES) has no mapping: nowbridge ships mappings for %s; for %s add %s.yaml to BRIDGE_MAPPING_DIR (deploy/mapping/README.md describes the format)",
				name, strings.Join(Shipped(), ", "), name, name)
		}
	}
	return NewSet(log, out...)
}

// readDir parses every mapping file at the top of fsys.
func readDir(fsys fs.FS) ([]*Table, error) {
	if fsys == nil {
		return nil, nil
	}
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read mapping directory: %w", err)
	}
	var out []*Table
	for _, e := range entries {
		ext := path.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		data, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read mapping %s: %w", e.Name(), err)
		}
		t, err := Parse(e.Name(), data)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// warnMissingKnowledge says when a file replacing a shipped mapping drops
// what the shipped one knows about the table: a copy made before those
// keys existed would otherwise quietly lose echo suppression of journal
// and derived fields, or the delete behaviour.
func warnMissingKnowledge(log *slog.Logger, own, ship *Table) {
	var missing []string
	for _, k := range []struct {
		key        string
		own, ships bool
	}{
		{"parents", len(own.Parents) > 0, len(ship.Parents) > 0},
		{"journal", len(own.Journal) > 0, len(ship.Journal) > 0},
		{"derived", len(own.Derived) > 0, len(ship.Derived) > 0},
		{"insert_fills", len(own.InsertFills) > 0, len(ship.InsertFills) > 0},
		{"close", own.Close != nil, ship.Close != nil},
		{"delete", own.Delete.Mode != "", ship.Delete.Mode != ""},
	} {
		if k.ships && !k.own {
			missing = append(missing, k.key)
		}
	}
	if len(missing) > 0 {
		log.Warn("mapping file replaces the shipped mapping of its table without some of what that one knows; copy the keys from deploy/mapping/"+own.Name+".yaml unless you mean to drop them",
			"file", own.Source, "table", own.Name, "missing", missing)
	}
}

// ForTable returns the mapping of a ServiceNow table.
func (s *Set) ForTable(table string) (*Table, bool) { t, ok := s.byTable[table]; return t, ok }

// ForEntity returns the mapping of a SaaS entity.
func (s *Set) ForEntity(entity string) (*Table, bool) { t, ok := s.byEntity[entity]; return t, ok }

// Table is the ServiceNow table an entity syncs with.
func (s *Set) Table(entity string) (string, bool) {
	t, ok := s.byEntity[entity]
	if !ok {
		return "", false
	}
	return t.Name, true
}

// Entity is the SaaS entity a ServiceNow table syncs with.
func (s *Set) Entity(table string) (string, bool) {
	t, ok := s.byTable[table]
	if !ok {
		return "", false
	}
	return t.Entity, true
}

// Tables lists the mapped ServiceNow tables, sorted.
func (s *Set) Tables() []string { return slices.Sorted(maps.Keys(s.byTable)) }

// Fields lists the ServiceNow fields the table's mapping reads (reconcile's
// sysparm_fields); nil for a table without a mapping.
func (s *Set) Fields(table string) []string {
	t, ok := s.byTable[table]
	if !ok {
		return nil
	}
	return t.ServiceNowFields()
}

// Close returns the closing rule of a table; nil when it has none.
func (s *Set) Close(table string) *Close {
	if t, ok := s.byTable[table]; ok {
		return t.Close
	}
	return nil
}

// Delete returns what an app delete does to a record of table by default;
// the zero Delete when the table is not mapped or its file says nothing.
func (s *Set) Delete(table string) Delete {
	if t, ok := s.byTable[table]; ok {
		return t.Delete
	}
	return Delete{}
}

// FieldKind says what the platform does with a field of a table on a
// write (system fields alike on every table, mapped or not).
func (s *Set) FieldKind(table, field string) FieldKind {
	if t, ok := s.byTable[table]; ok {
		return t.Kind(field)
	}
	return systemKind(field)
}

// Parents lists, per mapped table, the tables it extends (snclient's
// Config.TableParents: inherited fields are defined on them).
func (s *Set) Parents() map[string][]string {
	out := make(map[string][]string, len(s.byTable))
	for name, t := range s.byTable {
		out[name] = slices.Clone(t.Parents)
	}
	return out
}

// ToServiceNow maps an app change's fields (writeback). Unknown fields are
// ignored with a debug log; a value outside a value map is an error.
func (s *Set) ToServiceNow(entity string, fields map[string]string) (map[string]string, error) {
	t, ok := s.byEntity[entity]
	if !ok {
		return nil, fmt.Errorf("entity %q has no mapping (mapped: %s)", entity, strings.Join(slices.Sorted(maps.Keys(s.byEntity)), ", "))
	}
	out, unknown, err := t.ToServiceNow(fields)
	if len(unknown) > 0 {
		s.log.Debug("app fields not in the mapping ignored", "entity", entity, "fields", unknown)
	}
	return out, err
}

// ToSaaS maps a ServiceNow record (apply) to its entity and the app's
// fields. Fields the mapping does not name are ignored with a debug log.
func (s *Set) ToSaaS(table string, record map[string]string) (entity string, fields map[string]string, err error) {
	t, ok := s.byTable[table]
	if !ok {
		return "", nil, fmt.Errorf("table %q has no mapping (mapped: %s)", table, strings.Join(s.Tables(), ", "))
	}
	fields, unknown, unmapped := t.ToSaaS(record)
	if len(unknown) > 0 {
		s.log.Debug("ServiceNow fields not in the mapping ignored", "table", table, "fields", unknown)
	}
	if len(unmapped) > 0 {
		s.log.Debug("ServiceNow values not in the value map passed through", "table", table, "values", unmapped)
	}
	return t.Entity, fields, nil
}
