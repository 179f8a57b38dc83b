package events

import (
	"time"

	"github.com/nowbridge/nowbridge/internal/jsonscan"
)

// The receiver's fast path. Nearly every webhook is one event whose members
// are the event's own keys with plain values and a record of strings; it is
// read in one scan and checked by hand-written rules. Anything else — an
// unknown or differently-cased key, a number or object where a string is
// usual, a problem to report — takes the general path (encoding/json,
// go-playground/validator), which names every problem. The fast path only
// ever returns what the general path would: FuzzDecodeFast holds the two to
// the same events.

// lazyRecord is a record the fast path checked but did not read: its object
// (raw, and all holding the same bytes) and its member count. Most records
// are stored as the sender wrote them and never read by the receiver.
type lazyRecord struct {
	raw     []byte
	all     string
	members int
}

// read decodes the record; the fast path checked that it can.
func (r lazyRecord) read() Fields {
	m, _, _ := jsonscan.Object(r.raw, r.all, 0)
	return m
}

// decodeFast reads the event object at raw (whitespace around it allowed)
// into e. ok false leaves e in any state: decode raw again the general way.
// verbatim says raw may be stored as it is (see Webhook.AppendStored): every
// key appeared once, a record included, and none was "source".
//
// With lazy, a record whose every key appears once is only checked, not
// read: e.Record stays nil and rec holds it (rec.raw nil: read as usual).
func decodeFast(raw []byte, e *SNEvent, lazy bool) (ok, verbatim bool, rec lazyRecord) {
	all := string(raw)
	i := jsonscan.Space(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return false, false, rec
	}
	i = jsonscan.Space(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return false, false, rec // no sys_mod_count: the general path reports it
	}
	var seen uint16 // a bit per key read
	verbatim = true
	for {
		key, next, ok := jsonscan.String(raw, all, i)
		if !ok {
			return false, false, rec
		}
		i = jsonscan.Space(raw, next)
		if i >= len(raw) || raw[i] != ':' {
			return false, false, rec
		}
		i = jsonscan.Space(raw, i+1)
		bit := uint16(0)
		switch key {
		case "sys_mod_count":
			i, ok = fastCount(raw, all, i, e)
			bit = 1 << 0
		case "changed":
			e.Changed, i, ok = jsonscan.StringArray(raw, all, i)
			bit = 1 << 1
		case "record":
			bit = 1 << 2
			if lazy && seen&bit == 0 {
				if end, n, shaped := jsonscan.ObjectShape(raw, i); shaped {
					rec = lazyRecord{raw: raw[i:end], all: all[i:end], members: n}
					i = end
					break
				}
			}
			var once bool
			e.Record, i, once, ok = jsonscan.ObjectOnce(raw, all, i)
			rec = lazyRecord{}
			verbatim = verbatim && once
		default:
			field, n := e.stringField(key)
			if field == nil {
				return false, false, rec
			}
			*field, i, ok = jsonscan.String(raw, all, i)
			bit = 1 << (3 + n)
			verbatim = verbatim && key != "source"
		}
		if !ok {
			return false, false, rec
		}
		verbatim = verbatim && seen&bit == 0
		seen |= bit
		i = jsonscan.Space(raw, i)
		if i >= len(raw) {
			return false, false, rec
		}
		switch raw[i] {
		case ',':
			i = jsonscan.Space(raw, i+1)
		case '}':
			if seen&1 == 0 || jsonscan.Space(raw, i+1) != len(raw) {
				return false, false, rec
			}
			return true, verbatim, rec
		default:
			return false, false, rec
		}
	}
}

// stringField is the event's string member named key and its number (0–6),
// nil for any other key.
func (e *SNEvent) stringField(key string) (*string, int) {
	switch key {
	case "instance":
		return &e.Instance, 0
	case "table":
		return &e.Table, 1
	case "sys_id":
		return &e.SysID, 2
	case "action":
		return &e.Action, 3
	case "sys_updated_on":
		return &e.SysUpdatedOn, 4
	case "sys_updated_by":
		return &e.SysUpdatedBy, 5
	case "source":
		return &e.Source, 6
	}
	return nil, 0
}

// fastCount reads sys_mod_count as ServiceNow writes it ("4") or as a JSON
// number (4).
func fastCount(raw []byte, all string, i int, e *SNEvent) (int, bool) {
	if i < len(raw) && raw[i] == '"' {
		s, next, ok := jsonscan.String(raw, all, i)
		if !ok {
			return 0, false
		}
		n, ok := jsonscan.UintText(s)
		e.SysModCount = ModCount(n)
		return next, ok
	}
	n, next, ok := jsonscan.Uint(raw, i)
	e.SysModCount = ModCount(n)
	return next, ok
}

// valid reports whether e passes every rule of Validate. It is Validate's
// fast path: true means no problems; false means run Validate for them. A
// length is checked in bytes, which is never less than go-playground's
// count of characters, so true is never wrong.
//
// rec is the event's record if decodeFast left it unread (rec.raw nil: none
// or e.Record).
func (v *Validator) valid(e *SNEvent, rec lazyRecord) bool {
	switch e.Action {
	case ActionInsert, ActionUpdate:
		if e.Record == nil && rec.raw == nil {
			return false
		}
	case ActionDelete:
	default:
		return false
	}
	if len(e.Instance) > 100 || len(e.SysUpdatedBy) > 100 || len(e.Changed) > 1000 || len(e.Record) > 2000 || rec.members > 2000 || e.SysModCount < 0 {
		return false
	}
	if !ValidTable(e.Table) || !v.tables[e.Table] || !ValidSysID(e.SysID) || !validSNTime(e.SysUpdatedOn) {
		return false
	}
	switch e.Source {
	case "", SourceWebhook, SourceReconcile:
	default:
		return false
	}
	for _, c := range e.Changed {
		if c == "" || len(c) > 80 {
			return false
		}
	}
	return true
}

// validSNTime reports whether s is a ServiceNow date-time, the "sntime" rule.
func validSNTime(s string) bool {
	if plainSNTime(s) {
		return true
	}
	// Anything else the layout's parser may still take (a one-digit hour,
	// a fraction of a second).
	_, err := time.ParseInLocation(SNTimeLayout, s, time.UTC)
	return err == nil
}

// plainSNTime reports whether s is "YYYY-MM-DD hh:mm:ss" naming a real
// moment, the way ServiceNow writes it; time.ParseInLocation takes every
// such string (TestPlainSNTime_AgreesWithTimeParse).
func plainSNTime(s string) bool {
	if len(s) != len(SNTimeLayout) || s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' || s[16] != ':' {
		return false
	}
	num := func(i, n int) int {
		v := 0
		for _, c := range []byte(s[i : i+n]) {
			if c < '0' || c > '9' {
				return -1
			}
			v = v*10 + int(c-'0')
		}
		return v
	}
	year, month, day := num(0, 4), num(5, 2), num(8, 2)
	hour, minute, second := num(11, 2), num(14, 2), num(17, 2)
	if year < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 59 {
		return false
	}
	// The last day of the month: day 0 of the next one.
	return day <= time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// ValidTable reports whether s is a well-formed ServiceNow table name:
// ^[a-z][a-z0-9_]{0,79}$.
func ValidTable(s string) bool {
	if len(s) == 0 || len(s) > 80 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ValidSysID reports whether s is 32 lowercase hex characters.
func ValidSysID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
