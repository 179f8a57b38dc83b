package snsim

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Encoded-query operators the simulator implements.
const (
	opEQ         = "="
	opNE         = "!="
	opGT         = ">"
	opGE         = ">="
	opLT         = "<"
	opLE         = "<="
	opIN         = "IN"
	opNotIn      = "NOT IN"
	opLike       = "LIKE"
	opNotLike    = "NOT LIKE"
	opStarts     = "STARTSWITH"
	opEnds       = "ENDSWITH"
	opEmpty      = "ISEMPTY"
	opNotEmpty   = "ISNOTEMPTY"
	opBetween    = "BETWEEN"
	opAnything   = "ANYTHING"
	snTimeLayout = "2006-01-02 15:04:05"
)

// Keyword operators, longest first, so ISNOTEMPTY is not read as IS....
var keywordOps = []string{opNotEmpty, opEmpty, opStarts, opEnds, opNotLike, opNotIn, opBetween, opAnything, opLike, opIN}

// ServiceNow operators the simulator does not implement: a query using one
// must fail loudly, never match by accident (INSTANCEOF would otherwise be
// read as IN "STANCEOF...").
var unsupportedOps = []string{
	"INSTANCEOF", "SAMEAS", "NSAMEAS", "DYNAMIC", "NOTON", "ON", "EMPTYSTRING", "VALCHANGES", "CHANGESFROM",
	"CHANGESTO", "DATEPART", "RELATIVEGT", "RELATIVELT", "RELATIVEGE", "RELATIVELE", "RELATIVEEE", "MORETHAN",
	"LESSTHAN", "GT_FIELD", "LT_FIELD", "GT_OR_EQUALS_FIELD", "LT_OR_EQUALS_FIELD", "NOT EMPTY", "COLLATE",
}

// Cond is one parsed clause: Field Op Value.
type Cond struct {
	Field  string
	Op     string
	Value  string   // the raw value, after ^^ unescaping and javascript: evaluation
	Values []string // IN / NOT IN items; BETWEEN's two bounds
}

func (c Cond) String() string { return c.Field + c.Op + c.Value }

// OrderBy is one ORDERBY / ORDERBYDESC term.
type OrderBy struct {
	Field string
	Desc  bool
}

// Part is one ^NQ-separated query: an AND of OR-groups, so a^ORb^c is
// [[a b] [c]] = (a OR b) AND c.
type Part struct {
	Groups [][]Cond
}

// Query is a parsed encoded query.
type Query struct {
	Parts []Part
	Order []OrderBy
}

// SyntaxError is encoded-query syntax the simulator does not implement. It is
// answered with 400 and logged at error level: a test must never pass because
// the simulator silently misread its query.
type SyntaxError struct {
	Query  string
	Clause string
	Msg    string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("snsim: unsupported encoded query syntax in clause %q: %s", e.Clause, e.Msg)
}

var fieldRe = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*`)

// splitClauses splits on ^ separators, unescaping ^^ to a literal ^.
func splitClauses(s string) []string {
	var out []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '^' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '^' {
			b.WriteByte('^')
			i++
			continue
		}
		out = append(out, b.String())
		b.Reset()
	}
	return append(out, b.String())
}

// ParseQuery parses an encoded query (sysparm_query). It knows nothing of
// tables: unknown fields are handled when the query is bound to a table.
func ParseQuery(s string) (*Query, error) {
	q := &Query{Parts: []Part{{}}}
	seenOrder := map[string]bool{}
	for _, chunk := range splitClauses(s) {
		cur := &q.Parts[len(q.Parts)-1]
		switch {
		case chunk == "":
			continue
		case chunk == "EQ":
			return q.trim(), nil // ^EQ ends the query, as in list URLs
		case strings.HasPrefix(chunk, "NQ"):
			q.Parts = append(q.Parts, Part{})
			cur = &q.Parts[len(q.Parts)-1]
			chunk = chunk[2:]
			if chunk == "" {
				continue
			}
		}
		switch {
		case strings.HasPrefix(chunk, "ORDERBYDESC"), strings.HasPrefix(chunk, "ORDERBY"):
			desc := strings.HasPrefix(chunk, "ORDERBYDESC")
			f := strings.TrimPrefix(strings.TrimPrefix(chunk, "ORDERBY"), "DESC")
			if !fieldRe.MatchString(f) || fieldRe.FindString(f) != f {
				return nil, &SyntaxError{Query: s, Clause: chunk, Msg: "ORDERBY needs a field name"}
			}
			if strings.Contains(f, ".") {
				return nil, &SyntaxError{Query: s, Clause: chunk, Msg: "ordering by a dot-walked field is not implemented"}
			}
			if !seenOrder[f] {
				seenOrder[f] = true
				q.Order = append(q.Order, OrderBy{Field: f, Desc: desc})
			}
		case strings.HasPrefix(chunk, "GROUPBY"):
			return nil, &SyntaxError{Query: s, Clause: chunk, Msg: "GROUPBY is not implemented"}
		case strings.HasPrefix(chunk, "OR"):
			c, err := parseCond(s, chunk[2:])
			if err != nil {
				return nil, err
			}
			if len(cur.Groups) == 0 {
				cur.Groups = append(cur.Groups, []Cond{c})
			} else {
				g := &cur.Groups[len(cur.Groups)-1]
				*g = append(*g, c)
			}
		default:
			c, err := parseCond(s, chunk)
			if err != nil {
				return nil, err
			}
			cur.Groups = append(cur.Groups, []Cond{c})
		}
	}
	return q.trim(), nil
}

// trim drops empty ^NQ parts (a trailing ^NQ adds nothing).
func (q *Query) trim() *Query {
	parts := q.Parts[:0]
	for _, p := range q.Parts {
		if len(p.Groups) > 0 {
			parts = append(parts, p)
		}
	}
	q.Parts = parts
	return q
}

func parseCond(query, chunk string) (Cond, error) {
	field := fieldRe.FindString(chunk)
	if field == "" {
		return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: "a clause must start with a lowercase field name"}
	}
	if strings.Contains(field, ".") {
		return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: "dot-walked fields are not implemented"}
	}
	rest := chunk[len(field):]
	c := Cond{Field: field}
	for _, u := range unsupportedOps {
		if strings.HasPrefix(rest, u) {
			return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: "operator " + u + " is not implemented"}
		}
	}
	for _, k := range keywordOps {
		if strings.HasPrefix(rest, k) {
			c.Op, c.Value = k, rest[len(k):]
			break
		}
	}
	if c.Op == "" {
		for _, k := range []string{opNE, opGE, opLE, opEQ, opGT, opLT} {
			if strings.HasPrefix(rest, k) {
				c.Op, c.Value = k, rest[len(k):]
				break
			}
		}
	}
	if c.Op == "" {
		op := rest
		if i := strings.IndexAny(op, "=<>!"); i > 0 {
			op = op[:i]
		}
		return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: fmt.Sprintf("operator %q is not implemented", op)}
	}
	var err error
	switch c.Op {
	case opEmpty, opNotEmpty, opAnything:
		c.Value = ""
	case opIN, opNotIn:
		c.Values = strings.Split(c.Value, ",")
		for i, v := range c.Values {
			if c.Values[i], err = evalValue(v); err != nil {
				return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: err.Error()}
			}
		}
	case opBetween:
		lo, hi, ok := strings.Cut(c.Value, "@")
		if !ok {
			return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: "BETWEEN needs two values joined by @"}
		}
		if lo, err = evalValue(lo); err == nil {
			hi, err = evalValue(hi)
		}
		if err != nil {
			return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: err.Error()}
		}
		c.Values = []string{lo, hi}
	default:
		if c.Value, err = evalValue(c.Value); err != nil {
			return Cond{}, &SyntaxError{Query: query, Clause: chunk, Msg: err.Error()}
		}
	}
	return c, nil
}

var dateGenerateRe = regexp.MustCompile(`^javascript:\s*gs\.dateGenerate\(\s*'(\d{4}-\d{2}-\d{2})'\s*,\s*'(\d{2}:\d{2}:\d{2}|start|end)'\s*\)\s*;?$`)

// evalValue evaluates the one javascript: form the bridge uses,
// gs.dateGenerate(date, time); any other script is unsupported.
func evalValue(v string) (string, error) {
	if !strings.HasPrefix(v, "javascript:") {
		return v, nil
	}
	m := dateGenerateRe.FindStringSubmatch(v)
	if m == nil {
		return "", fmt.Errorf("javascript value %.60q is not implemented (only gs.dateGenerate('YYYY-MM-DD','HH:MM:SS'))", v)
	}
	tm := m[2]
	switch tm {
	case "start":
		tm = "00:00:00"
	case "end":
		tm = "23:59:59"
	}
	out := m[1] + " " + tm
	if _, err := time.Parse(snTimeLayout, out); err != nil {
		return "", fmt.Errorf("gs.dateGenerate(%q, %q) is not a valid date-time", m[1], m[2])
	}
	return out, nil
}

// boundCond is a clause bound to a table's field.
type boundCond struct {
	Cond
	fi      int
	numeric bool
	num     float64   // numeric value of Value
	nums    []float64 // numeric values of Values
	lower   []string  // lower-cased Value(s) for case-insensitive operators
}

// plan is a query bound to one table: dropped clauses removed, fields
// resolved, ready to run against rows.
type plan struct {
	parts   [][][]boundCond // parts -> AND groups -> OR conds
	order   []boundOrder
	noRows  bool
	dropped []string // clauses on fields the table does not have
}

type boundOrder struct {
	fi      int
	desc    bool
	numeric bool
	name    string
}

// bind resolves a parsed query against a table. Clauses naming fields the
// table lacks are dropped (GlideRecord's default) or, in invalidNoRows mode,
// make the query match nothing.
func bind(q *Query, t *tableSchema, invalidNoRows bool) *plan {
	p := &plan{}
	for _, part := range q.Parts {
		var groups [][]boundCond
		for _, g := range part.Groups {
			var bg []boundCond
			for _, c := range g {
				f, fi, ok := t.field(c.Field)
				if !ok {
					p.dropped = append(p.dropped, c.String())
					if invalidNoRows {
						p.noRows = true
					}
					continue
				}
				bc := boundCond{Cond: c, fi: fi, numeric: f.numeric}
				if bc.numeric {
					bc.num, _ = strconv.ParseFloat(c.Value, 64)
					for _, v := range c.Values {
						n, _ := strconv.ParseFloat(v, 64)
						bc.nums = append(bc.nums, n)
					}
				}
				bc.lower = []string{strings.ToLower(c.Value)}
				for _, v := range c.Values {
					bc.lower = append(bc.lower, strings.ToLower(v))
				}
				bg = append(bg, bc)
			}
			if len(bg) > 0 {
				groups = append(groups, bg)
			}
		}
		// A part whose every clause was dropped matches everything, as
		// the platform's query without those clauses does.
		p.parts = append(p.parts, groups)
	}
	for _, o := range q.Order {
		f, fi, ok := t.field(o.Field)
		if !ok {
			p.dropped = append(p.dropped, "ORDERBY"+o.Field)
			continue
		}
		p.order = append(p.order, boundOrder{fi: fi, desc: o.Desc, numeric: f.numeric, name: o.Field})
	}
	return p
}

func (p *plan) match(vals []string) bool {
	if p.noRows {
		return false
	}
	if len(p.parts) == 0 {
		return true
	}
	for _, part := range p.parts {
		if matchPart(part, vals) {
			return true
		}
	}
	return false
}

func matchPart(groups [][]boundCond, vals []string) bool {
	for _, g := range groups {
		ok := false
		for i := range g {
			if g[i].match(vals[g[i].fi]) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func (c *boundCond) cmp(v string, want string, wantNum float64) (int, bool) {
	if v == "" {
		return 0, false // SQL NULL: no ordering comparison holds
	}
	if c.numeric {
		n, err := strconv.ParseFloat(v, 64)
		if err == nil {
			switch {
			case n < wantNum:
				return -1, true
			case n > wantNum:
				return 1, true
			}
			return 0, true
		}
	}
	return foldCompare(v, want), true
}

// foldCompare orders text the way the platform's case-insensitive database
// collation does (ASCII letters folded), without allocating.
func foldCompare(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

func (c *boundCond) eq(v, want, lower string, wantNum float64) bool {
	if c.numeric && v != "" && want != "" {
		if n, err := strconv.ParseFloat(v, 64); err == nil {
			return n == wantNum
		}
	}
	if v == want {
		return true
	}
	// The platform's database collation compares text case-insensitively.
	return strings.EqualFold(v, lower)
}

func (c *boundCond) match(v string) bool {
	switch c.Op {
	case opEQ:
		return c.eq(v, c.Value, c.lower[0], c.num)
	case opNE:
		return !c.eq(v, c.Value, c.lower[0], c.num)
	case opGT, opGE, opLT, opLE:
		r, ok := c.cmp(v, c.Value, c.num)
		if !ok {
			return false
		}
		switch c.Op {
		case opGT:
			return r > 0
		case opGE:
			return r >= 0
		case opLT:
			return r < 0
		}
		return r <= 0
	case opIN, opNotIn:
		in := false
		for i, w := range c.Values {
			n := 0.0
			if c.numeric {
				n = c.nums[i]
			}
			if c.eq(v, w, c.lower[i+1], n) {
				in = true
				break
			}
		}
		return in == (c.Op == opIN)
	case opLike:
		return containsFold(v, c.lower[0])
	case opNotLike:
		return !containsFold(v, c.lower[0])
	case opStarts:
		return len(v) >= len(c.lower[0]) && strings.EqualFold(v[:len(c.lower[0])], c.lower[0])
	case opEnds:
		return len(v) >= len(c.lower[0]) && strings.EqualFold(v[len(v)-len(c.lower[0]):], c.lower[0])
	case opEmpty:
		return v == ""
	case opNotEmpty:
		return v != ""
	case opAnything:
		return true
	case opBetween:
		var lo, hi float64
		if c.numeric {
			lo, hi = c.nums[0], c.nums[1]
		}
		a, ok1 := c.cmp(v, c.Values[0], lo)
		b, ok2 := c.cmp(v, c.Values[1], hi)
		return ok1 && ok2 && a >= 0 && b <= 0
	}
	return false
}

func containsFold(s, lowerSub string) bool {
	if lowerSub == "" {
		return true
	}
	if len(lowerSub) > len(s) {
		return false
	}
	return strings.Contains(strings.ToLower(s), lowerSub)
}

// compareRows orders two rows by the plan's ORDERBY terms.
func (p *plan) compareRows(a, b []string) int {
	for _, o := range p.order {
		x, y := a[o.fi], b[o.fi]
		var c int
		if o.numeric {
			nx, ex := strconv.ParseFloat(x, 64)
			ny, ey := strconv.ParseFloat(y, 64)
			switch {
			case ex == nil && ey == nil:
				switch {
				case nx < ny:
					c = -1
				case nx > ny:
					c = 1
				}
			default:
				c = foldCompare(x, y)
			}
		} else {
			c = foldCompare(x, y)
		}
		if o.desc {
			c = -c
		}
		if c != 0 {
			return c
		}
	}
	return 0
}
