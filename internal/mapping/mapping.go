// Package mapping translates between the SaaS app's entities and fields and
// ServiceNow's tables and fields, as described by one YAML file per table
// (deploy/mapping/incident.yaml is the built-in default). It parses bytes and
// maps values; it does no I/O beyond reading the files of an fs.FS it is given.
package mapping

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DefaultIncident is the built-in mapping of incident (SPEC §3); the same
// bytes ship as deploy/mapping/incident.yaml.
//
//go:embed incident.yaml
var DefaultIncident []byte

// Direction says which way a field pair syncs.
type Direction string

// Directions.
const (
	Both         Direction = "both"
	ToServiceNow Direction = "to_servicenow" // written to ServiceNow, never sent to the app (journal fields)
	ToSaaS       Direction = "to_saas"       // sent to the app, never written back
)

func (d Direction) toSaaS() bool       { return d == Both || d == ToSaaS }
func (d Direction) toServiceNow() bool { return d == Both || d == ToServiceNow }

// Field is one saas <-> servicenow pair.
type Field struct {
	SaaS       string
	ServiceNow string
	Direction  Direction
	// Values maps SaaS values to ServiceNow values (e.g. in_progress -> 2);
	// nil when values pass unchanged.
	Values map[string]string
	Line   int // line of the pair in its file, for messages

	fromSN map[string]string // ServiceNow value -> SaaS value
}

// ValueToSaaS maps a ServiceNow value; ok is false when a value map exists
// and does not know v (v is then passed through).
func (f *Field) ValueToSaaS(v string) (string, bool) {
	if f.Values == nil {
		return v, true
	}
	if s, ok := f.fromSN[v]; ok {
		return s, true
	}
	return v, v == ""
}

// ValueToServiceNow maps a SaaS value; ok is false when a value map exists
// and does not know v.
func (f *Field) ValueToServiceNow(v string) (string, bool) {
	if f.Values == nil {
		return v, true
	}
	if s, ok := f.Values[v]; ok {
		return s, true
	}
	return v, v == ""
}

// Table is the mapping of one ServiceNow table to one SaaS entity.
type Table struct {
	Name   string // ServiceNow table
	Entity string // SaaS entity
	// LinkField is the ServiceNow field holding the app's external_id
	// (correlation_id by default); LinkDisplayField names the linked system
	// for ServiceNow users (correlation_display by default).
	LinkField        string
	LinkDisplayField string
	Fields           []Field
	// Close says which states close a record and which fields ServiceNow's
	// data policy requires with them; nil when the table has no such rule.
	Close  *Close
	Source string // file name, for messages

	bySaaS   map[string]*Field
	bySN     map[string]*Field
	snFields []string
}

// Close is a table's closing rule: a write that moves a record into one of
// States must carry CodeField and NotesField (incident: close_code and
// close_notes, a data policy that applies to REST too). CodeField is a
// choice field: its active sys_choice rows are the valid codes, and the
// first of PreferredCodes that is active is the default one.
type Close struct {
	States         []string
	CodeField      string
	NotesField     string
	PreferredCodes []string
}

// ErrCloseCode wraps every reason Pick finds no usable close code; retrying
// does not fix any of them.
var ErrCloseCode = errors.New("no valid close code")

// Pick chooses the close code from the code field's active choices (in
// sys_choice order): override when it is one of them (an error naming the
// valid ones when not: ServiceNow would drop it silently and the data policy
// refuse the write), else the first preferred code that is active, else the
// first active choice.
func (c *Close) Pick(table string, active []string, override string) (string, error) {
	if len(active) == 0 {
		return "", fmt.Errorf("%w: %s.%s has no active choices in sys_choice; set BRIDGE_CLOSE_CODE to a value the instance accepts", ErrCloseCode, table, c.CodeField)
	}
	if override != "" {
		if slices.Contains(active, override) {
			return override, nil
		}
		q := make([]string, len(active))
		for i, v := range active {
			q[i] = strconv.Quote(v)
		}
		return "", fmt.Errorf("%w: BRIDGE_CLOSE_CODE %q is not an active choice of %s.%s on this instance (ServiceNow would drop it and refuse the resolve); valid: %s",
			ErrCloseCode, override, table, c.CodeField, strings.Join(q, ", "))
	}
	for _, p := range c.PreferredCodes {
		if slices.Contains(active, p) {
			return p, nil
		}
	}
	return active[0], nil
}

// Closes reports whether state is one of the closing states.
func (c *Close) Closes(state string) bool { return c != nil && slices.Contains(c.States, state) }

// FieldBySaaS returns the pair of a SaaS field name.
func (t *Table) FieldBySaaS(name string) (*Field, bool) { f, ok := t.bySaaS[name]; return f, ok }

// FieldByServiceNow returns the pair of a ServiceNow field name.
func (t *Table) FieldByServiceNow(name string) (*Field, bool) { f, ok := t.bySN[name]; return f, ok }

// ToSaaS maps a ServiceNow record to the app's field names and values.
// Only pairs that sync towards the app are included; the link field, system
// fields and fields the mapping does not name are left out (unknown returns
// the names of the latter, sorted, for a debug log). A value the value map
// does not know passes through unchanged and is listed in unmapped.
func (t *Table) ToSaaS(record map[string]string) (fields map[string]string, unknown, unmapped []string) {
	fields = make(map[string]string, len(t.Fields))
	for name, v := range record {
		f, ok := t.bySN[name]
		if !ok {
			if name != t.LinkField && name != t.LinkDisplayField && name != "number" && !strings.HasPrefix(name, "sys_") {
				unknown = append(unknown, name)
			}
			continue
		}
		if !f.Direction.toSaaS() {
			continue
		}
		mv, known := f.ValueToSaaS(v)
		if !known {
			unmapped = append(unmapped, name+"="+v)
		}
		fields[f.SaaS] = mv
	}
	sort.Strings(unknown)
	sort.Strings(unmapped)
	return fields, unknown, unmapped
}

// ToServiceNow maps the app's fields to ServiceNow names and values. Pairs
// that sync only towards the app, and fields the mapping does not name, are
// left out (unknown lists the latter, sorted). A value the value map does not
// know is an error: ServiceNow would store it as is, or reject it.
func (t *Table) ToServiceNow(fields map[string]string) (out map[string]string, unknown []string, err error) {
	out = make(map[string]string, len(fields))
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		v := fields[name]
		f, ok := t.bySaaS[name]
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		if !f.Direction.toServiceNow() {
			continue
		}
		mv, known := f.ValueToServiceNow(v)
		if !known {
			errs = append(errs, fmt.Errorf("%s %s: value %q of field %s is not in its value map (%s line %d; known: %s)",
				t.Entity, t.Name, v, name, t.Source, f.Line, strings.Join(slices.Sorted(maps.Keys(f.Values)), ", ")))
			continue
		}
		out[f.ServiceNow] = mv
	}
	return out, unknown, errors.Join(errs...)
}

// ServiceNowFields lists the ServiceNow fields the mapping reads from
// records (for sysparm_fields): every pair synced towards the app, the
// link fields and number, sorted. System fields (sys_id, sys_mod_count,
// sys_updated_on...) are the caller's to add.
func (t *Table) ServiceNowFields() []string { return slices.Clone(t.snFields) }

// ReadFields is ServiceNowFields without the copy; callers must not modify it.
func (t *Table) ReadFields() []string { return t.snFields }

func (t *Table) computeFields() []string {
	set := map[string]bool{"number": true}
	if t.LinkField != "" {
		set[t.LinkField] = true
	}
	if t.LinkDisplayField != "" {
		set[t.LinkDisplayField] = true
	}
	if t.Close != nil {
		// The writeback keeps them in its base, so it knows whether a
		// record already carries a code and notes when it closes it.
		set[t.Close.CodeField] = true
		set[t.Close.NotesField] = true
	}
	for _, f := range t.Fields {
		if f.Direction.toSaaS() {
			set[f.ServiceNow] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

var nameRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,79}$`)

// ParseError is a problem in a mapping file, at a line.
type ParseError struct {
	File string
	Line int // 0 when the problem is not at one line
	Msg  string
}

func (e *ParseError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("mapping %s line %d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("mapping %s: %s", e.File, e.Msg)
}

// Parse reads one mapping file. name is the file name used in messages;
// every error is a *ParseError naming the line.
func Parse(name string, data []byte) (*Table, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ParseError{File: name, Msg: "file is empty"}
		}
		return nil, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &ParseError{File: name, Line: extra.Line, Msg: "holds more than one YAML document; use one file per table"}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	p := parser{file: name}
	t := &Table{Source: name}
	p.mapping(root, "the file", map[string]func(k, v *yaml.Node){
		"table":  func(k, v *yaml.Node) { t.Name = p.name(v, "table") },
		"entity": func(k, v *yaml.Node) { t.Entity = p.name(v, "entity") },
		"link": func(k, v *yaml.Node) {
			p.mapping(v, "link", map[string]func(k, v *yaml.Node){
				"field":         func(k, v *yaml.Node) { t.LinkField = p.name(v, "link.field") },
				"display_field": func(k, v *yaml.Node) { t.LinkDisplayField = p.name(v, "link.display_field") },
			})
		},
		"close": func(k, v *yaml.Node) { t.Close = p.close(v) },
		"fields": func(k, v *yaml.Node) {
			if v.Kind != yaml.SequenceNode {
				p.fail(v.Line, "fields must be a list of {saas, servicenow} pairs")
				return
			}
			for _, item := range v.Content {
				if f, ok := p.field(item); ok {
					t.Fields = append(t.Fields, f)
				}
			}
		},
	})
	if p.err != nil {
		return nil, p.err
	}
	if t.Name == "" {
		return nil, &ParseError{File: name, Line: root.Line, Msg: "table is required (the ServiceNow table, e.g. incident)"}
	}
	if t.Entity == "" {
		return nil, &ParseError{File: name, Line: root.Line, Msg: "entity is required (the SaaS entity, e.g. ticket)"}
	}
	if len(t.Fields) == 0 {
		return nil, &ParseError{File: name, Line: root.Line, Msg: "fields is required: at least one saas/servicenow pair"}
	}
	t.bySaaS = make(map[string]*Field, len(t.Fields))
	t.bySN = make(map[string]*Field, len(t.Fields))
	for i := range t.Fields {
		f := &t.Fields[i]
		if prev, dup := t.bySaaS[f.SaaS]; dup {
			return nil, &ParseError{File: name, Line: f.Line, Msg: fmt.Sprintf("saas field %q is already mapped at line %d", f.SaaS, prev.Line)}
		}
		if prev, dup := t.bySN[f.ServiceNow]; dup {
			return nil, &ParseError{File: name, Line: f.Line, Msg: fmt.Sprintf("servicenow field %q is already mapped at line %d", f.ServiceNow, prev.Line)}
		}
		if f.ServiceNow == t.LinkField || f.ServiceNow == t.LinkDisplayField {
			return nil, &ParseError{File: name, Line: f.Line, Msg: fmt.Sprintf("servicenow field %q is the link field; the bridge writes it, it cannot be mapped", f.ServiceNow)}
		}
		if f.SaaS == "external_id" {
			return nil, &ParseError{File: name, Line: f.Line, Msg: "saas field external_id is the link itself (set link.field instead)"}
		}
		t.bySaaS[f.SaaS] = f
		t.bySN[f.ServiceNow] = f
	}
	t.snFields = t.computeFields()
	return t, nil
}

// yamlError turns a YAML syntax error ("yaml: line 3: ...") into a ParseError.
func yamlError(file string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil {
		if _, rest, ok := strings.Cut(msg, ":"); ok {
			msg = strings.TrimSpace(rest)
		}
	}
	return &ParseError{File: file, Line: line, Msg: "not valid YAML: " + msg}
}

type parser struct {
	file string
	err  error
}

func (p *parser) fail(line int, format string, a ...any) {
	if p.err == nil {
		p.err = &ParseError{File: p.file, Line: line, Msg: fmt.Sprintf(format, a...)}
	}
}

// mapping walks a YAML mapping, calling the handler of each known key and
// failing on unknown or repeated ones.
func (p *parser) mapping(n *yaml.Node, what string, keys map[string]func(k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, "%s must be a mapping of keys to values", what)
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		h, ok := keys[k.Value]
		if !ok {
			p.fail(k.Line, "unknown key %q in %s (known: %s)", k.Value, what, strings.Join(slices.Sorted(maps.Keys(keys)), ", "))
			return
		}
		if line, dup := seen[k.Value]; dup {
			p.fail(k.Line, "key %q repeats the one at line %d", k.Value, line)
			return
		}
		seen[k.Value] = k.Line
		h(k, v)
		if p.err != nil {
			return
		}
	}
}

func (p *parser) scalar(v *yaml.Node, what string) string {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		p.fail(v.Line, "%s must be a single value", what)
		return ""
	}
	return v.Value
}

func (p *parser) name(v *yaml.Node, what string) string {
	s := p.scalar(v, what)
	if p.err == nil && !nameRe.MatchString(s) {
		p.fail(v.Line, "%s %q must match ^[a-z][a-z0-9_]{0,79}$", what, s)
	}
	return s
}

// close reads a table's closing rule.
func (p *parser) close(n *yaml.Node) *Close {
	c := &Close{}
	p.mapping(n, "close", map[string]func(k, v *yaml.Node){
		"states":          func(k, v *yaml.Node) { c.States = p.list(v, "close.states") },
		"code_field":      func(k, v *yaml.Node) { c.CodeField = p.name(v, "close.code_field") },
		"notes_field":     func(k, v *yaml.Node) { c.NotesField = p.name(v, "close.notes_field") },
		"preferred_codes": func(k, v *yaml.Node) { c.PreferredCodes = p.list(v, "close.preferred_codes") },
	})
	if p.err != nil {
		return nil
	}
	if len(c.States) == 0 || c.CodeField == "" || c.NotesField == "" {
		p.fail(n.Line, "close needs states (the values that close a record), code_field and notes_field")
		return nil
	}
	return c
}

// list reads a sequence of non-empty scalars.
func (p *parser) list(v *yaml.Node, what string) []string {
	if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		p.fail(v.Line, "%s must be a non-empty list", what)
		return nil
	}
	out := make([]string, 0, len(v.Content))
	for _, item := range v.Content {
		s := p.scalar(item, "an item of "+what)
		if p.err != nil {
			return nil
		}
		if strings.TrimSpace(s) == "" {
			p.fail(item.Line, "%s holds an empty item", what)
			return nil
		}
		out = append(out, s)
	}
	return out
}

func (p *parser) field(n *yaml.Node) (Field, bool) {
	f := Field{Line: n.Line, Direction: Both}
	p.mapping(n, "a field pair", map[string]func(k, v *yaml.Node){
		"saas": func(k, v *yaml.Node) {
			f.SaaS = p.scalar(v, "saas")
			if p.err == nil && (strings.TrimSpace(f.SaaS) == "" || len(f.SaaS) > 200) {
				p.fail(v.Line, "saas field name must be 1 to 200 characters")
			}
		},
		"servicenow": func(k, v *yaml.Node) { f.ServiceNow = p.name(v, "servicenow field") },
		"direction": func(k, v *yaml.Node) {
			d := Direction(p.scalar(v, "direction"))
			if p.err == nil && d != Both && d != ToServiceNow && d != ToSaaS {
				p.fail(v.Line, "direction %q: want both, to_servicenow or to_saas", d)
			}
			f.Direction = d
		},
		"values": func(k, v *yaml.Node) {
			if v.Kind != yaml.MappingNode || len(v.Content) == 0 {
				p.fail(v.Line, "values must be a non-empty mapping of saas value: servicenow value")
				return
			}
			f.Values = map[string]string{}
			f.fromSN = map[string]string{}
			lines := map[string]int{}
			for i := 0; i+1 < len(v.Content); i += 2 {
				sk, sv := v.Content[i], v.Content[i+1]
				saas := p.scalar(sk, "a saas value")
				sn := p.scalar(sv, "the servicenow value of "+sk.Value)
				if p.err != nil {
					return
				}
				if _, dup := f.Values[saas]; dup {
					p.fail(sk.Line, "saas value %q is mapped twice", saas)
					return
				}
				if line, dup := lines[sn]; dup {
					p.fail(sv.Line, "servicenow value %q is already the value of another saas value at line %d; the map must work both ways", sn, line)
					return
				}
				f.Values[saas], f.fromSN[sn], lines[sn] = sn, saas, sv.Line
			}
		},
	})
	if p.err != nil {
		return f, false
	}
	if f.SaaS == "" || f.ServiceNow == "" {
		p.fail(n.Line, "a field pair needs both saas and servicenow")
		return f, false
	}
	return f, true
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
			return nil, fmt.Errorf("mapping %s: entity %s is already mapped by %s", t.Source, t.Entity, prev.Source)
		}
		s.byTable[t.Name], s.byEntity[t.Entity] = t, t
	}
	return s, nil
}

// Default is the built-in set: incident <-> ticket.
func Default(log *slog.Logger) *Set {
	t, err := Parse("incident.yaml (built-in)", DefaultIncident)
	if err != nil {
		panic(err) // the embedded file is tested
	}
	s, _ := NewSet(log, t)
	return s
}

// Load reads every *.yaml and *.yml file at the top of fsys (pass
// os.DirFS(BRIDGE_MAPPING_DIR)); the built-in incident mapping is added
// unless a file maps incident or its entity. A nil fsys gives the default.
// The first broken file stops loading with an error naming its line.
func Load(fsys fs.FS, log *slog.Logger) (*Set, error) {
	def, err := Parse("incident.yaml (built-in)", DefaultIncident)
	if err != nil {
		return nil, err
	}
	if fsys == nil {
		return NewSet(log, def)
	}
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read mapping directory: %w", err)
	}
	var tables []*Table
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
		tables = append(tables, t)
	}
	if !slices.ContainsFunc(tables, func(t *Table) bool { return t.Name == def.Name || t.Entity == def.Entity }) {
		tables = append(tables, def)
	}
	return NewSet(log, tables...)
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
