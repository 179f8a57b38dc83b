package snclient

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// TimeLayout is how ServiceNow writes date-times: UTC, one-second resolution.
const TimeLayout = "2006-01-02 15:04:05"

// fieldNameRE admits dot-walked names (caller_id.name); the first segment is
// what query validation checks against the table.
var fieldNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$`)

// Cond is one condition of an encoded query: field, operator, value.
// Build it with Field(name).OP(value).
type Cond struct {
	field string
	op    string
	value string
	err   error
}

// FieldRef names a field to compare; see Field.
type FieldRef struct{ name string }

// Field starts a condition on a field.
func Field(name string) FieldRef { return FieldRef{name: name} }

func (f FieldRef) cond(op string, v any) Cond {
	c := Cond{field: f.name, op: op}
	if !fieldNameRE.MatchString(f.name) {
		c.err = fmt.Errorf("query: %q is not a field name", f.name)
		return c
	}
	c.value, c.err = formatValue(v)
	return c
}

// EQ is field=v. Values are strings, integers, bools, time.Time (written in
// UTC as ServiceNow compares them) or fmt.Stringers.
func (f FieldRef) EQ(v any) Cond   { return f.cond("=", v) }
func (f FieldRef) NEQ(v any) Cond  { return f.cond("!=", v) }
func (f FieldRef) GT(v any) Cond   { return f.cond(">", v) }
func (f FieldRef) GTE(v any) Cond  { return f.cond(">=", v) }
func (f FieldRef) LT(v any) Cond   { return f.cond("<", v) }
func (f FieldRef) LTE(v any) Cond  { return f.cond("<=", v) }
func (f FieldRef) Like(v any) Cond { return f.cond("LIKE", v) }
func (f FieldRef) NotLike(v any) Cond {
	return f.cond("NOT LIKE", v)
}
func (f FieldRef) StartsWith(v any) Cond { return f.cond("STARTSWITH", v) }
func (f FieldRef) EndsWith(v any) Cond   { return f.cond("ENDSWITH", v) }
func (f FieldRef) IsEmpty() Cond         { return f.cond("ISEMPTY", "") }
func (f FieldRef) IsNotEmpty() Cond      { return f.cond("ISNOTEMPTY", "") }

// In is field IN a,b,c. ServiceNow has no escape for a comma inside a list
// value, so such a value is an error rather than a silently split list.
func (f FieldRef) In(vs ...any) Cond    { return f.list("IN", vs) }
func (f FieldRef) NotIn(vs ...any) Cond { return f.list("NOT IN", vs) }

// Between is field BETWEEN a@b.
func (f FieldRef) Between(a, b any) Cond {
	c := f.cond("BETWEEN", a)
	if c.err != nil {
		return c
	}
	hi, err := formatValue(b)
	if err == nil && (strings.Contains(c.value, "@") || strings.Contains(hi, "@")) {
		err = fmt.Errorf("query: %s BETWEEN: a bound contains '@', which separates the bounds", f.name)
	}
	c.value, c.err = c.value+"@"+hi, err
	return c
}

func (f FieldRef) list(op string, vs []any) Cond {
	c := f.cond(op, "")
	if c.err != nil {
		return c
	}
	if len(vs) == 0 {
		c.err = fmt.Errorf("query: %s %s with no values", f.name, op)
		return c
	}
	parts := make([]string, 0, len(vs))
	for _, v := range vs {
		s, err := formatValue(v)
		if err != nil {
			c.err = err
			return c
		}
		if strings.Contains(s, ",") {
			c.err = fmt.Errorf("query: %s %s: value %q contains a comma, which ServiceNow cannot escape in a list", f.name, op, s)
			return c
		}
		parts = append(parts, s)
	}
	c.value = strings.Join(parts, ",")
	return c
}

// formatValue renders a condition's value. A value ServiceNow would run as
// a script (it starts with javascript:) is refused: query values come from
// records and app changes (an app's external_id in the correlation lookup),
// and must never execute on the instance.
func formatValue(v any) (string, error) {
	s, err := formatPlain(v)
	if err == nil && isScript(s) {
		return "", fmt.Errorf("query: value %.40q starts with javascript:, which ServiceNow would run as a script on the instance", s)
	}
	return s, err
}

// isScript reports whether ServiceNow evaluates a query value as a script.
func isScript(s string) bool {
	s = strings.TrimLeft(s, " \t\r\n")
	return len(s) >= len("javascript:") && strings.EqualFold(s[:len("javascript:")], "javascript:")
}

func formatPlain(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case time.Time:
		if x.IsZero() {
			return "", errors.New("query: zero time")
		}
		return x.UTC().Format(TimeLayout), nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case int32:
		return strconv.FormatInt(int64(x), 10), nil
	case uint:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case bool:
		return strconv.FormatBool(x), nil
	case fmt.Stringer:
		return x.String(), nil
	case nil:
		return "", errors.New("query: nil value")
	default:
		return "", fmt.Errorf("query: unsupported value type %T", v)
	}
}

// encode writes the condition, doubling ^ in the value as ServiceNow wants.
func (c Cond) encode() string {
	return c.field + c.op + strings.ReplaceAll(c.value, "^", "^^")
}

// Part is what And accepts: a single Cond, or an Or group of Conds.
type Part interface{ orGroup() []Cond }

func (c Cond) orGroup() []Cond { return []Cond{c} }

// AnyOf is an OR group of conditions (a^ORb^ORc).
type AnyOf []Cond

func (a AnyOf) orGroup() []Cond { return a }

// Or groups conditions with ^OR. It accepts conditions only, not queries:
// ServiceNow's a^ORb^c means (a OR b) AND c, so an OR can only bind single
// conditions inside an AND; for an OR of whole queries use NQ.
func Or(conds ...Cond) AnyOf { return AnyOf(conds) }

type ordering struct {
	field string
	desc  bool
}

// Query is an encoded query: an AND of OR groups, optionally several of
// them joined with ^NQ, and orderings. The zero Query matches everything.
// Queries are values: every method returns a new Query.
type Query struct {
	groups [][]Cond // AND of ORs
	nq     []Query  // when set, this query is these parts joined by ^NQ
	order  []ordering
	err    error
}

// And builds a query requiring every part.
func And(parts ...Part) Query { return Query{}.And(parts...) }

// And returns q with more required parts. On an NQ query it is an error,
// because ServiceNow would apply the clause to the last part only.
func (q Query) And(parts ...Part) Query {
	out := q.clone()
	if len(q.nq) > 0 && len(parts) > 0 {
		out.err = errors.Join(out.err, errors.New("query: And on an NQ query is ambiguous; add the clause to each part"))
		return out
	}
	for _, p := range parts {
		if p == nil {
			continue
		}
		g := p.orGroup()
		if len(g) == 0 {
			continue
		}
		for _, c := range g {
			if c.err != nil {
				out.err = errors.Join(out.err, c.err)
			}
		}
		out.groups = append(out.groups, append([]Cond(nil), g...))
	}
	return out
}

// NQ joins whole queries with ^NQ (a new query OR-ed with the previous
// ones). Each part keeps its own ordering: the encoding repeats the
// orderings of the result in every part, as ServiceNow expects.
func NQ(qs ...Query) Query {
	out := Query{}
	for _, q := range qs {
		if q.err != nil {
			out.err = errors.Join(out.err, q.err)
		}
		if len(q.nq) > 0 {
			out.nq = append(out.nq, q.nq...)
		} else {
			out.nq = append(out.nq, q)
		}
	}
	return out
}

// OrderBy appends an ascending ordering.
func (q Query) OrderBy(field string) Query { return q.orderBy(field, false) }

// OrderByDesc appends a descending ordering.
func (q Query) OrderByDesc(field string) Query { return q.orderBy(field, true) }

func (q Query) orderBy(field string, desc bool) Query {
	out := q.clone()
	if !fieldNameRE.MatchString(field) {
		out.err = errors.Join(out.err, fmt.Errorf("query: order by %q: not a field name", field))
		return out
	}
	out.order = append(out.order, ordering{field, desc})
	return out
}

func (q Query) clone() Query {
	return Query{
		groups: append([][]Cond(nil), q.groups...),
		nq:     append([]Query(nil), q.nq...),
		order:  append([]ordering(nil), q.order...),
		err:    q.err,
	}
}

// Err reports a query that cannot be encoded faithfully (bad field name,
// unsupported value, comma in an IN value). The client refuses to send it.
func (q Query) Err() error { return q.err }

// IsZero reports a query with no conditions and no ordering.
func (q Query) IsZero() bool { return len(q.groups) == 0 && len(q.nq) == 0 && len(q.order) == 0 }

// Encode returns the sysparm_query value.
func (q Query) Encode() string {
	if len(q.nq) > 0 {
		parts := make([]string, 0, len(q.nq))
		for _, p := range q.nq {
			p = p.clone()
			p.order = append(p.order, q.order...)
			parts = append(parts, p.Encode())
		}
		return strings.Join(parts, "^NQ")
	}
	var b strings.Builder
	for _, g := range q.groups {
		for j, c := range g {
			if b.Len() > 0 {
				if j == 0 {
					b.WriteString("^")
				} else {
					b.WriteString("^OR")
				}
			}
			b.WriteString(c.encode())
		}
	}
	for _, o := range q.order {
		if b.Len() > 0 {
			b.WriteString("^")
		}
		if o.desc {
			b.WriteString("ORDERBYDESC")
		} else {
			b.WriteString("ORDERBY")
		}
		b.WriteString(o.field)
	}
	return b.String()
}

// String is Encode, for logs.
func (q Query) String() string { return q.Encode() }

// Fields lists the field names the query uses (conditions and orderings),
// each once, in order of appearance.
func (q Query) Fields() []string {
	seen := map[string]bool{}
	var out []string
	add := func(f string) {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	var walk func(Query)
	walk = func(q Query) {
		for _, g := range q.groups {
			for _, c := range g {
				add(c.field)
			}
		}
		for _, p := range q.nq {
			walk(p)
		}
		for _, o := range q.order {
			add(o.field)
		}
	}
	walk(q)
	return out
}
