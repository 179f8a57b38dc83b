package events

import (
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"
)

// AppendStored appends the event's stored form (the body of an SN_EVENTS
// message) to b: byte for byte what json.Marshal(e) produces, without its
// reflection and map-key sorting, which were a third of the receiver's
// allocations per webhook. FuzzDecodeBody holds the two to the same bytes.
func AppendStored(b []byte, e *SNEvent) []byte {
	b = append(b, '{')
	if e.Instance != "" {
		b = append(b, `"instance":`...)
		b = appendGoString(b, e.Instance)
		b = append(b, ',')
	}
	b = append(b, `"table":`...)
	b = appendGoString(b, e.Table)
	b = append(b, `,"sys_id":`...)
	b = appendGoString(b, e.SysID)
	b = append(b, `,"action":`...)
	b = appendGoString(b, e.Action)
	b = append(b, `,"sys_mod_count":"`...)
	b = strconv.AppendInt(b, int64(e.SysModCount), 10)
	b = append(b, `","sys_updated_on":`...)
	b = appendGoString(b, e.SysUpdatedOn)
	if e.SysUpdatedBy != "" {
		b = append(b, `,"sys_updated_by":`...)
		b = appendGoString(b, e.SysUpdatedBy)
	}
	if len(e.Changed) > 0 {
		b = append(b, `,"changed":[`...)
		for i, c := range e.Changed {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendGoString(b, c)
		}
		b = append(b, ']')
	}
	b = append(b, `,"record":`...)
	if e.Record == nil {
		b = append(b, "null"...)
	} else {
		// encoding/json sorts map keys by their bytes.
		var small [64]string
		keys := small[:0]
		for k := range e.Record {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendGoString(b, k)
			b = append(b, ':')
			b = appendGoString(b, e.Record[k])
		}
		b = append(b, '}')
	}
	if e.Source != "" {
		b = append(b, `,"source":`...)
		b = appendGoString(b, e.Source)
	}
	return append(b, '}')
}

// invalidUTF8 is how this Go release's encoding/json writes a byte that is
// not UTF-8: "\ufffd" up to Go 1.26, the replacement character itself
// from 1.27 on. The stored form stays byte-identical to json.Marshal's
// whichever release builds the bridge.
var invalidUTF8 = func() string {
	q, err := json.Marshal("\xff")
	if err != nil || len(q) < 2 {
		return `\ufffd`
	}
	return string(q[1 : len(q)-1])
}()

// appendGoString quotes s as encoding/json does (HTML-safe): '<', '>', '&',
// U+2028 and U+2029 as \u escapes, \b \f \n \r \t short, other control
// characters as \u00xx, invalid UTF-8 as json.Marshal writes it (invalidUTF8). (Not JSON.stringify's
// rules: those are appendJSString's, for webhook bodies.)
func appendGoString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
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
			b = append(b, invalidUTF8...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
