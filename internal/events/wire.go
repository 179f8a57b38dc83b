package events

import (
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// EncodeWebhookBody renders an event exactly as the shipped business rules do
// (servicenow/business_rules/NowbridgeWebhook.js), so the simulator's
// business-rule emulation and the real scripts send byte-identical bodies for
// the same record. The shared vectors in servicenow/testdata hold the proof.
//
// The shape is JSON.stringify of an object built in this order: instance
// (omitted when empty), table, sys_id, action, sys_mod_count (a string),
// sys_updated_on, sys_updated_by (omitted when empty), changed (sorted,
// omitted when empty), record (keys sorted by UTF-16 code units, as
// Array.prototype.sort does; {} when nil). Source is never sent.
//
// Strings are escaped the way JSON.stringify escapes them, which is not what
// encoding/json does: only '"', '\\' and control characters are escaped
// (\b \f \n \r \t, else \u00xx in lower case); '<', '>', '&', U+2028 and
// U+2029 stay raw. Invalid UTF-8 becomes U+FFFD, one per maximal invalid
// subpart, which is what a JavaScript engine sees after decoding the same
// bytes with TextDecoder (WHATWG Encoding), and is written raw.
//
// Record keys that look like array indexes ("0", "12") would be reordered by
// a JavaScript object; ServiceNow column names never do.
func EncodeWebhookBody(e *SNEvent) ([]byte, error) {
	b := make([]byte, 0, 256+64*len(e.Record))
	b = append(b, '{')
	first := true
	field := func(name string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSString(b, name)
		b = append(b, ':')
	}
	str := func(name, v string) {
		field(name)
		b = appendJSString(b, v)
	}
	if e.Instance != "" {
		str("instance", e.Instance)
	}
	str("table", e.Table)
	str("sys_id", e.SysID)
	str("action", e.Action)
	str("sys_mod_count", strconv.FormatInt(int64(e.SysModCount), 10))
	str("sys_updated_on", e.SysUpdatedOn)
	if e.SysUpdatedBy != "" {
		str("sys_updated_by", e.SysUpdatedBy)
	}
	if len(e.Changed) > 0 {
		changed := slices.Clone(e.Changed)
		slices.SortFunc(changed, compareUTF16)
		field("changed")
		b = append(b, '[')
		for i, c := range changed {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSString(b, c)
		}
		b = append(b, ']')
	}
	field("record")
	keys := make([]string, 0, len(e.Record))
	for k := range e.Record {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareUTF16)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSString(b, k)
		b = append(b, ':')
		b = appendJSString(b, e.Record[k])
	}
	b = append(b, '}', '}')
	return b, nil
}

// compareUTF16 orders strings by UTF-16 code units, JavaScript's default sort.
// It differs from byte order only between U+E000–U+FFFF and astral characters.
func compareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			ua, ub := firstUnit(ra), firstUnit(rb)
			if ua != ub {
				return int(ua) - int(ub)
			}
			return int(ra) - int(rb) // same lead surrogate: order by code point
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

func firstUnit(r rune) rune {
	if r >= 0x10000 {
		hi, _ := utf16.EncodeRune(r)
		return hi
	}
	return r
}

const hexDigits = "0123456789abcdef"

// appendJSString appends s quoted the way JSON.stringify quotes a string.
func appendJSString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"':
				b = append(b, '\\', '"')
			case '\\':
				b = append(b, '\\', '\\')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\uFFFD"...)
			i += invalidSubpart(s[i:])
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// invalidSubpart returns the length of the maximal subpart of an ill-formed
// UTF-8 sequence at the start of s (WHATWG Encoding / Unicode §3.9 D93b): the
// bytes a conforming decoder replaces with a single U+FFFD. s[0] is known to
// start an invalid sequence.
func invalidSubpart(s string) int {
	c := s[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default: // 0x80–0xC1, 0xF5–0xFF: never valid as a lead byte
		return 1
	}
	n := 1
	for ; n <= need && n < len(s); n++ {
		if s[n] < lo || s[n] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return n
}
