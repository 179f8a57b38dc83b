package snsim

import (
	"slices"
	"strings"
	"time"
)

// scanResult is one page of a list query, before ACL filtering.
type scanResult struct {
	rows    []*row
	total   int  // rows matching the query; -1 when not counted
	more    bool // rows follow this page
	visited int  // rows walked, for tests of the offset cost
	skipped int  // matching rows walked past because of the offset
}

// keyRange is the part of the (sys_updated_on, sys_id) index a query part
// can match, and whether the range alone decides the part (every clause was
// used to bound it), so counting it costs nothing.
type keyRange struct {
	from, to int
	exact    bool
}

// rangeOf narrows one part to an index range from its AND-ed clauses on
// sys_updated_on (and on sys_id within one second): the keyset queries the
// facts file prescribes become a binary search.
func (t *table) rangeOf(groups [][]boundCond) keyRange {
	r := keyRange{from: 0, to: len(t.index), exact: true}
	var eqUpdated string
	haveEq := false
	var idConds []boundCond
	for _, g := range groups {
		if len(g) != 1 {
			r.exact = false
			continue
		}
		c := g[0]
		switch {
		case c.fi == t.iUpdated && validTime(c.Value) && (c.Op == opEQ || c.Op == opGT || c.Op == opGE || c.Op == opLT || c.Op == opLE):
			switch c.Op {
			case opEQ:
				r.from = max(r.from, t.lowerBoundUpdated(c.Value))
				r.to = min(r.to, t.upperBoundUpdated(c.Value))
				eqUpdated, haveEq = c.Value, true
			case opGT:
				r.from = max(r.from, t.upperBoundUpdated(c.Value))
			case opGE:
				r.from = max(r.from, t.lowerBoundUpdated(c.Value))
			case opLT:
				r.to = min(r.to, t.lowerBoundUpdated(c.Value))
			case opLE:
				r.to = min(r.to, t.upperBoundUpdated(c.Value))
			}
		case c.fi == t.iUpdated && c.Op == opBetween && validTime(c.Values[0]) && validTime(c.Values[1]):
			r.from = max(r.from, t.lowerBoundUpdated(c.Values[0]))
			r.to = min(r.to, t.upperBoundUpdated(c.Values[1]))
		case c.fi == t.iID && (c.Op == opEQ || c.Op == opGT || c.Op == opGE || c.Op == opLT || c.Op == opLE):
			idConds = append(idConds, c)
		default:
			r.exact = false
		}
	}
	for _, c := range idConds {
		if !haveEq {
			r.exact = false
			continue
		}
		// Within one second the index is in sys_id order.
		i, found := t.pos(eqUpdated, c.Value)
		switch c.Op {
		case opEQ:
			r.from = max(r.from, i)
			if found {
				r.to = min(r.to, i+1)
			} else {
				r.to = min(r.to, i)
			}
		case opGT:
			if found {
				i++
			}
			r.from = max(r.from, i)
		case opGE:
			r.from = max(r.from, i)
		case opLT:
			r.to = min(r.to, i)
		case opLE:
			if found {
				i++
			}
			r.to = min(r.to, i)
		}
	}
	if r.to < r.from {
		r.to = r.from
	}
	return r
}

func validTime(s string) bool {
	if len(s) != len(snTimeLayout) {
		return false
	}
	_, err := time.Parse(snTimeLayout, s)
	return err == nil
}

// indexOrder reports whether rows in index positions [from,to) are already
// in the plan's ORDERBY order, forwards (1) or backwards (-1); 0 when the
// rows must be sorted.
func (t *table) indexOrder(p *plan, from, to int) int {
	if len(p.order) == 0 {
		return 1
	}
	oneSecond := to > from && t.index[from].vals[t.iUpdated] == t.index[to-1].vals[t.iUpdated]
	dir := 0
	for i, o := range p.order {
		d := 1
		if o.desc {
			d = -1
		}
		if i == 0 {
			dir = d
		} else if d != dir {
			return 0
		}
		switch {
		case o.fi == t.iUpdated && i == 0:
		case o.fi == t.iID && (i == len(p.order)-1) && (i == 1 && p.order[0].fi == t.iUpdated || oneSecond):
		case o.fi == t.iUpdated && oneSecond:
		default:
			return 0
		}
	}
	return dir
}

// scan runs a bound query: it walks matching rows in the requested order,
// skipping offset of them one by one (like a database does, so deep offsets
// cost more), keeps limit rows and counts the rest when asked to.
func (t *table) scan(p *plan, offset, limit int, count bool) scanResult {
	res := scanResult{total: -1}
	if p.noRows {
		if count {
			res.total = 0
		}
		return res
	}
	from, to, exact := 0, len(t.index), true
	exactTotal := len(t.index)
	if len(p.parts) > 0 {
		// Each part narrows to an index range; when every part is decided
		// by its range alone (the keyset forms, ^NQ included), the count is
		// the size of the ranges' union and costs nothing.
		ranges := make([]keyRange, 0, len(p.parts))
		from, to = len(t.index), 0
		for _, part := range p.parts {
			r := t.rangeOf(part)
			ranges = append(ranges, r)
			from, to = min(from, r.from), max(to, r.to)
			exact = exact && r.exact
		}
		if to < from {
			to = from
		}
		exactTotal = unionSize(ranges)
	}
	dir := t.indexOrder(p, from, to)
	if dir == 0 {
		// Ordered by sys_id alone: the primary key's index serves it.
		if byID, ok := t.scanByID(p, offset, limit, count); ok {
			return byID
		}
	}
	var ordered []*row
	if dir == 0 {
		// Not the index order: collect the matches and sort them, as a
		// database without a fitting index must.
		for _, r := range t.index[from:to] {
			res.visited++
			if p.match(r.vals) {
				ordered = append(ordered, r)
			}
		}
		slices.SortStableFunc(ordered, func(a, b *row) int { return p.compareRows(a.vals, b.vals) })
		exact, exactTotal = true, len(ordered)
		from, to, dir = 0, len(ordered), 1
	}
	at := func(i int) *row {
		switch {
		case ordered != nil:
			return ordered[i]
		case dir < 0:
			return t.index[to-1-(i-from)]
		}
		return t.index[i]
	}
	matched := 0
	i := from
	for ; i < to; i++ {
		r := at(i)
		if ordered == nil {
			res.visited++
			if !p.match(r.vals) {
				continue
			}
		}
		matched++
		if matched <= offset {
			res.skipped++
			continue // walked, not returned: the cost of an offset
		}
		if len(res.rows) < limit {
			res.rows = append(res.rows, r)
			continue
		}
		res.more = true
		i++
		break
	}
	if !count {
		return res
	}
	if exact {
		res.total = exactTotal
		return res
	}
	for ; i < to; i++ {
		res.visited++
		if p.match(at(i).vals) {
			matched++
		}
	}
	res.total = matched
	return res
}

// unionSize is the number of index positions covered by the ranges.
func unionSize(rs []keyRange) int {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b keyRange) int { return a.from - b.from })
	n, end := 0, 0
	for _, r := range rs {
		lo := max(r.from, end)
		if r.to > lo {
			n += r.to - lo
		}
		end = max(end, r.to)
	}
	return n
}

// scanByID serves a query ordered by sys_id alone, without ^NQ, from the
// sys_id index: its sys_id comparisons (and the bounds of a sys_id IN
// list) narrow the range, every clause is still matched row by row unless
// the range alone decides the query. ok is false for other queries.
func (t *table) scanByID(p *plan, offset, limit int, count bool) (res scanResult, ok bool) {
	if len(p.order) != 1 || p.order[0].fi != t.iID || p.order[0].desc || len(p.parts) > 1 {
		return res, false
	}
	lower := func(v string) int { // first position with sys_id >= v
		i, _ := slices.BinarySearchFunc(t.ids, v, func(r *row, k string) int { return strings.Compare(r.vals[t.iID], k) })
		return i
	}
	upper := func(v string) int { // first position with sys_id > v
		i, found := slices.BinarySearchFunc(t.ids, v, func(r *row, k string) int { return strings.Compare(r.vals[t.iID], k) })
		if found {
			i++
		}
		return i
	}
	from, to, exact := 0, len(t.ids), true
	for _, part := range p.parts {
		for _, g := range part {
			// Bounds only from lower-case values: the comparison of
			// the query itself ignores case, a binary search does not.
			if len(g) != 1 || g[0].fi != t.iID || g[0].Value != strings.ToLower(g[0].Value) {
				exact = false
				continue
			}
			switch c := g[0]; c.Op {
			case opGT:
				from = max(from, upper(c.Value))
			case opGE:
				from = max(from, lower(c.Value))
			case opLT:
				to = min(to, lower(c.Value))
			case opLE:
				to = min(to, upper(c.Value))
			case opEQ:
				from, to = max(from, lower(c.Value)), min(to, upper(c.Value))
			case opIN:
				exact = false
				if len(c.Values) > 0 && !slices.ContainsFunc(c.Values, func(v string) bool { return v != strings.ToLower(v) }) {
					from, to = max(from, lower(slices.Min(c.Values))), min(to, upper(slices.Max(c.Values)))
				}
			default:
				exact = false
			}
		}
	}
	to = max(to, from)
	res.total = -1
	matched, i := 0, from
	for ; i < to; i++ {
		r := t.ids[i]
		res.visited++
		if !exact && !p.match(r.vals) {
			continue
		}
		matched++
		if matched <= offset {
			res.skipped++
			continue // walked, not returned: the cost of an offset
		}
		if len(res.rows) < limit {
			res.rows = append(res.rows, r)
			continue
		}
		res.more = true
		i++
		break
	}
	if !count {
		return res, true
	}
	if exact {
		res.total = to - from
		return res, true
	}
	for ; i < to; i++ {
		res.visited++
		if p.match(t.ids[i].vals) {
			matched++
		}
	}
	res.total = matched
	return res, true
}
