package mapping

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

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
	p := parser{file: name, lines: map[string]int{}}
	// Without a link key, the task table's link fields (every shipped table
	// extends task): the writeback must find the records it creates again.
	t := &Table{Source: name, LinkField: DefaultLinkField, LinkDisplayField: DefaultLinkDisplayField}
	p.mapping(root, "the file", map[string]func(k, v *yaml.Node){
		"table":   func(k, v *yaml.Node) { t.Name = p.name(v, "table") },
		"entity":  func(k, v *yaml.Node) { t.Entity = p.name(v, "entity") },
		"parents": func(k, v *yaml.Node) { t.Parents = p.names(v, "parents") },
		"link": func(k, v *yaml.Node) {
			t.LinkField, t.LinkDisplayField = "", ""
			p.mapping(v, "link", map[string]func(k, v *yaml.Node){
				"field":         func(k, v *yaml.Node) { t.LinkField = p.name(v, "link.field") },
				"display_field": func(k, v *yaml.Node) { t.LinkDisplayField = p.name(v, "link.display_field") },
			})
		},
		"journal":      func(k, v *yaml.Node) { t.Journal = p.names(v, "journal") },
		"derived":      func(k, v *yaml.Node) { t.Derived = p.names(v, "derived") },
		"insert_fills": func(k, v *yaml.Node) { t.InsertFills = p.names(v, "insert_fills") },
		"close":        func(k, v *yaml.Node) { t.Close = p.close(v) },
		"delete":       func(k, v *yaml.Node) { t.Delete = p.delete(k, v) },
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
	if err := p.index(t); err != nil {
		return nil, err
	}
	if err := p.checkKinds(t); err != nil {
		return nil, err
	}
	if err := p.checkStates(t); err != nil {
		return nil, err
	}
	t.snFields = t.computeFields()
	return t, nil
}

// index builds the field lookups, refusing a field mapped twice or the
// link mapped as a pair.
func (p *parser) index(t *Table) error {
	t.bySaaS = make(map[string]*Field, len(t.Fields))
	t.bySN = make(map[string]*Field, len(t.Fields))
	for i := range t.Fields {
		f := &t.Fields[i]
		if prev, dup := t.bySaaS[f.SaaS]; dup {
			return p.errAt(f.Line, "saas field %q is already mapped at line %d", f.SaaS, prev.Line)
		}
		if prev, dup := t.bySN[f.ServiceNow]; dup {
			return p.errAt(f.Line, "servicenow field %q is already mapped at line %d", f.ServiceNow, prev.Line)
		}
		if f.ServiceNow == t.LinkField || f.ServiceNow == t.LinkDisplayField {
			return p.errAt(f.Line, "servicenow field %q is the link field; the bridge writes it, it cannot be mapped", f.ServiceNow)
		}
		if f.SaaS == "external_id" {
			return p.errAt(f.Line, "saas field external_id is the link itself (set link.field instead)")
		}
		t.bySaaS[f.SaaS] = f
		t.bySN[f.ServiceNow] = f
	}
	return nil
}

// checkKinds builds the field kinds. A field cannot be journal and derived
// (one is written by appending, the other never by us), the link is neither,
// and a journal field is never sent to the app: its value is every entry
// rendered, which the app would send back as a new entry.
func (p *parser) checkKinds(t *Table) error {
	t.kinds = map[string]FieldKind{}
	for _, l := range []struct {
		key   string
		names []string
		kind  FieldKind
	}{{"journal", t.Journal, KindJournal}, {"derived", t.Derived, KindDerived}, {"insert_fills", t.InsertFills, KindInsertFill}} {
		for _, f := range l.names {
			line := p.lines[l.key+"."+f]
			if f == t.LinkField || f == t.LinkDisplayField {
				return p.errAt(line, "%s names %s, the link field: the bridge writes it", l.key, f)
			}
			t.kinds[f] |= l.kind
		}
	}
	for _, f := range t.Journal {
		if t.kinds[f].Derived() {
			return p.errAt(p.lines["derived."+f], "%s is both a journal field (line %d) and derived: a journal field is what a write appends to, a derived one what the platform sets", f, p.lines["journal."+f])
		}
		if pair, ok := t.bySN[f]; ok && pair.Direction.toSaaS() {
			return p.errAt(pair.Line, "servicenow field %s is a journal field (line %d): map it with direction: to_servicenow (its value is every entry rendered, which the app would send back as a new entry)", f, p.lines["journal."+f])
		}
	}
	return nil
}

// checkStates checks the close and delete states against the state
// field's value map, when the mapping has one: a state the map does not
// know is a typo, or a value of another table.
func (p *parser) checkStates(t *Table) error {
	if t.Delete.Mode == DeleteRecord && (t.Delete.State != "" || t.Delete.CloseCode != "") {
		return p.errAt(t.Delete.Line, "delete.state and delete.close_code only apply to mode resolve")
	}
	if t.Delete.Mode == DeleteResolve && t.Delete.State == "" {
		return p.errAt(t.Delete.Line, "delete mode resolve needs state: the %s a delete sets (e.g. the table's resolved, closed or canceled value)", StateField)
	}
	if t.Delete.CloseCode != "" && !t.Close.Closes(t.Delete.State) {
		return p.errAt(p.lines["delete.close_code"], "delete.close_code is only sent when delete.state closes the record (one of close.states)")
	}
	known := t.StateValues()
	if known == nil {
		return nil
	}
	valid := func(v string) bool { return slices.Contains(known, v) }
	if t.Close != nil {
		for _, s := range t.Close.States {
			if !valid(s) {
				return p.errAt(p.lines["close.states."+s], "close state %q is not a value of the %s map (known: %s)", s, StateField, strings.Join(known, ", "))
			}
		}
	}
	if t.Delete.State != "" && !valid(t.Delete.State) {
		return p.errAt(p.lines["delete.state"], "delete state %q is not a value of the %s map (known: %s)", t.Delete.State, StateField, strings.Join(known, ", "))
	}
	return nil
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
	// lines remembers where list items and scalars were, for checks made
	// after the walk ("journal.comments", "delete.state", ...).
	lines map[string]int
}

func (p *parser) fail(line int, format string, a ...any) {
	if p.err == nil {
		p.err = &ParseError{File: p.file, Line: line, Msg: fmt.Sprintf(format, a...)}
	}
}

func (p *parser) errAt(line int, format string, a ...any) error {
	return &ParseError{File: p.file, Line: line, Msg: fmt.Sprintf(format, a...)}
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
		"states":     func(k, v *yaml.Node) { c.States = p.list(v, "close.states") },
		"code_field": func(k, v *yaml.Node) { c.CodeField = p.name(v, "close.code_field") },
		"notes_field": func(k, v *yaml.Node) {
			c.NotesFields = []string{p.name(v, "close.notes_field")}
			p.lines["close.notes_field"] = v.Line
		},
		"notes_fields":    func(k, v *yaml.Node) { c.NotesFields = p.names(v, "close.notes_fields") },
		"notes_by_code":   func(k, v *yaml.Node) { c.NotesByCode = p.notesByCode(v) },
		"preferred_codes": func(k, v *yaml.Node) { c.PreferredCodes = p.list(v, "close.preferred_codes") },
	})
	if p.err != nil {
		return nil
	}
	if p.lines["close.notes_field"] > 0 && p.lines["close.notes_fields"] > 0 {
		p.fail(n.Line, "close takes notes_field or notes_fields, not both")
		return nil
	}
	if len(c.States) == 0 || c.CodeField == "" || (len(c.NotesFields) == 0 && len(c.NotesByCode) == 0) {
		p.fail(n.Line, "close needs states (the values that close a record), code_field and notes_field (or notes_fields, notes_by_code)")
		return nil
	}
	if slices.Contains(c.AllNotes(), c.CodeField) {
		p.fail(max(p.lines["close.notes_fields."+c.CodeField], p.lines["close.notes_field"], p.lines["close.notes_by_code"]), "%s is the close code field; notes fields hold text", c.CodeField)
		return nil
	}
	if len(c.NotesFields) > 0 {
		c.NotesField = c.NotesFields[0]
	}
	return c
}

// notesByCode reads close.notes_by_code: code -> the notes fields a close
// with that code needs.
func (p *parser) notesByCode(n *yaml.Node) map[string][]string {
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		p.fail(n.Line, "close.notes_by_code must be a non-empty mapping of close code: [notes fields]")
		return nil
	}
	p.lines["close.notes_by_code"] = n.Line
	out := map[string][]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		code := p.scalar(k, "a close code of close.notes_by_code")
		if p.err != nil {
			return nil
		}
		if _, dup := out[code]; dup {
			p.fail(k.Line, "close.notes_by_code lists code %q twice", code)
			return nil
		}
		out[code] = p.names(v, "close.notes_by_code."+code)
		if p.err != nil {
			return nil
		}
	}
	return out
}

// delete reads what an app delete does.
func (p *parser) delete(k, n *yaml.Node) Delete {
	d := Delete{Line: k.Line}
	p.mapping(n, "delete", map[string]func(k, v *yaml.Node){
		"mode": func(k, v *yaml.Node) {
			d.Mode = DeleteMode(p.scalar(v, "delete.mode"))
			if p.err == nil && !d.Mode.Valid() {
				p.fail(v.Line, "delete.mode %q: want resolve (set delete.state) or delete (remove the record)", d.Mode)
			}
		},
		"state": func(k, v *yaml.Node) {
			d.State = p.scalar(v, "delete.state")
			p.lines["delete.state"] = v.Line
			if p.err == nil && strings.TrimSpace(d.State) == "" {
				p.fail(v.Line, "delete.state is empty")
			}
		},
		"close_code": func(k, v *yaml.Node) {
			d.CloseCode = p.scalar(v, "delete.close_code")
			p.lines["delete.close_code"] = v.Line
			if p.err == nil && strings.TrimSpace(d.CloseCode) == "" {
				p.fail(v.Line, "delete.close_code is empty")
			}
		},
	})
	if p.err == nil && d.Mode == "" {
		p.fail(n.Line, "delete needs mode: resolve or delete")
	}
	return d
}

// list reads a sequence of non-empty scalars (flow or block style),
// remembering each item's line under "<what>.<item>".
func (p *parser) list(v *yaml.Node, what string) []string {
	if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		p.fail(v.Line, "%s must be a non-empty list", what)
		return nil
	}
	p.lines[what] = v.Line
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
		if line, dup := p.lines[what+"."+s]; dup {
			p.fail(item.Line, "%s lists %s twice (first at line %d)", what, s, line)
			return nil
		}
		p.lines[what+"."+s] = item.Line
		out = append(out, s)
	}
	return out
}

// names is list for ServiceNow names (tables, fields).
func (p *parser) names(v *yaml.Node, what string) []string {
	out := p.list(v, what)
	for _, s := range out {
		if !nameRe.MatchString(s) {
			p.fail(p.lines[what+"."+s], "%s: %q must match ^[a-z][a-z0-9_]{0,79}$", what, s)
			return nil
		}
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
