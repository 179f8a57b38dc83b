// Package jsonscan reads the common shapes of webhook JSON — objects of
// string values, arrays of strings, unsigned integers — in one pass over the
// bytes, without reflection. It is the receiver's fast path: anything it does
// not recognise, valid or not, is refused (ok false) and left to
// encoding/json, so a caller never accepts what encoding/json would refuse or
// read a value differently from it (fuzz targets in sdk/wire and
// internal/events hold it to that).
package jsonscan

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"
)

// Space returns the index of the first byte at or after i that is not JSON
// whitespace.
func Space(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// String reads the string literal at b[i] and returns its value and the
// index after it. all must hold the same bytes as b: a literal without
// escapes is returned as a substring of all, so the strings of one body share
// one copy of it. A literal with escapes is unquoted by encoding/json.
func String(b []byte, all string, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	start, ascii := i+1, true
	for j := plainRun(b, start); j < len(b); j = plainRun(b, j+1) {
		c := b[j]
		switch {
		case c == '"':
			if !ascii && !utf8.Valid(b[start:j]) {
				return "", 0, false
			}
			return all[start:j], j + 1, true
		case c == '\\':
			return escaped(b, i)
		case c < 0x20:
			return "", 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", 0, false
}

// escaped reads the string literal at b[i] that holds an escape (a journal
// entry's "\n"). The rare literal with a lone surrogate or invalid UTF-8,
// which encoding/json reads with U+FFFD in its place, is left to it.
func escaped(b []byte, i int) (string, int, bool) {
	if s, next, ok := unescape(b, i); ok {
		return s, next, true
	}
	j := i + 1
	for ; j < len(b) && b[j] != '"'; j++ {
		if b[j] == '\\' {
			j++
		}
	}
	if j >= len(b) {
		return "", 0, false
	}
	var s string
	if json.Unmarshal(b[i:j+1], &s) != nil {
		return "", 0, false
	}
	return s, j + 1, true
}

// unescape reads the string literal at b[i] with its escapes, refusing a lone
// surrogate or invalid UTF-8.
func unescape(b []byte, i int) (string, int, bool) {
	out := make([]byte, 0, 64)
	start := i + 1
	for j := start; j < len(b); {
		c := b[j]
		switch {
		case c == '"':
			out = append(out, b[start:j]...)
			if !utf8.Valid(out) {
				return "", 0, false
			}
			return string(out), j + 1, true
		case c < 0x20:
			return "", 0, false
		case c != '\\':
			j++
			continue
		}
		out = append(out, b[start:j]...)
		if j+1 >= len(b) {
			return "", 0, false
		}
		switch e := b[j+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, size, ok := escapedRune(b, j)
			if !ok {
				return "", 0, false
			}
			out = utf8.AppendRune(out, r)
			j += size
			start = j
			continue
		default:
			return "", 0, false
		}
		j += 2
		start = j
	}
	return "", 0, false
}

// escapedRune reads the \uXXXX escape at b[j], or the surrogate pair of two
// of them, and returns the character and the bytes read. A lone surrogate is
// refused.
func escapedRune(b []byte, j int) (rune, int, bool) {
	r, ok := hex4(b, j+2)
	if !ok {
		return 0, 0, false
	}
	if !utf16.IsSurrogate(r) {
		return r, 6, true
	}
	if r >= 0xDC00 || j+12 > len(b) || b[j+6] != '\\' || b[j+7] != 'u' {
		return 0, 0, false
	}
	r2, ok := hex4(b, j+8)
	if !ok {
		return 0, 0, false
	}
	pair := utf16.DecodeRune(r, r2)
	if pair == utf8.RuneError {
		return 0, 0, false
	}
	return pair, 12, true
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// Object reads the object at b[i] whose values are all strings and returns
// it and the index after its '}'. A repeated key keeps its last value, as
// encoding/json does (ObjectOnce tells).
func Object(b []byte, all string, i int) (map[string]string, int, bool) {
	out, next, _, ok := ObjectOnce(b, all, i)
	return out, next, ok
}

// ObjectOnce is Object, and (third) whether every key appeared once.
func ObjectOnce(b []byte, all string, i int) (map[string]string, int, bool, bool) {
	if i >= len(b) || b[i] != '{' {
		return nil, 0, false, false
	}
	out := make(map[string]string, members(b, i))
	i = Space(b, i+1)
	if i < len(b) && b[i] == '}' {
		return out, i + 1, true, true
	}
	read := 0
	for {
		k, next, ok := String(b, all, i)
		if !ok {
			return nil, 0, false, false
		}
		i = Space(b, next)
		if i >= len(b) || b[i] != ':' {
			return nil, 0, false, false
		}
		v, next, ok := String(b, all, Space(b, i+1))
		if !ok {
			return nil, 0, false, false
		}
		out[k] = v
		read++
		i = Space(b, next)
		if i >= len(b) {
			return nil, 0, false, false
		}
		switch b[i] {
		case ',':
			i = Space(b, i+1)
		case '}':
			return out, i + 1, read == len(out), true
		default:
			return nil, 0, false, false
		}
	}
}

// members estimates the members of the object at b[i] (colons up to the
// first '}'), so its map is sized once.
func members(b []byte, i int) int {
	b = b[i:]
	if end := bytes.IndexByte(b, '}'); end >= 0 {
		b = b[:end]
	}
	return bytes.Count(b, []byte{':'})
}

// StringArray reads the array of strings at b[i] and returns it and the
// index after its ']'.
func StringArray(b []byte, all string, i int) ([]string, int, bool) {
	if i >= len(b) || b[i] != '[' {
		return nil, 0, false
	}
	out := []string{}
	i = Space(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, i + 1, true
	}
	for {
		s, next, ok := String(b, all, i)
		if !ok {
			return nil, 0, false
		}
		out = append(out, s)
		i = Space(b, next)
		if i >= len(b) {
			return nil, 0, false
		}
		switch b[i] {
		case ',':
			i = Space(b, i+1)
		case ']':
			return out, i + 1, true
		default:
			return nil, 0, false
		}
	}
}

// Uint reads the unsigned integer at b[i] — a JSON number of at most 18
// digits without sign, fraction or exponent, as JSON writes it (no leading
// zero) — and returns it and the index after it.
func Uint(b []byte, i int) (int64, int, bool) {
	return digits(b, i, true)
}

// UintText is Uint for the text of a string ("4"): the same digits.
func UintText(s string) (int64, bool) {
	n, next, ok := digits([]byte(s), 0, false)
	return n, ok && next == len(s)
}

func digits(b []byte, i int, number bool) (int64, int, bool) {
	start := i
	var n int64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		if i-start == 18 {
			return 0, 0, false
		}
		n = n*10 + int64(b[i]-'0')
		i++
	}
	if i == start || (number && b[start] == '0' && i-start > 1) {
		return 0, 0, false
	}
	if number && i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, 0, false
	}
	return n, i, true
}

// SkipString checks the string literal at b[i] as String reads it, without
// building its value, and returns the index after it. ok true promises that
// String reads it too; ok false promises nothing: read it with String (a lone
// surrogate, say, which encoding/json reads as U+FFFD).
func SkipString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	// UTF-8 is checked per run between escapes: an escape decodes to whole
	// characters, so the value is valid exactly when every run is.
	run, ascii := i+1, true
	for j := run; j < len(b); {
		j = plainRun(b, j)
		if j >= len(b) {
			break
		}
		c := b[j]
		switch {
		case c == '"':
			if !ascii && !utf8.Valid(b[run:j]) {
				return 0, false
			}
			return j + 1, true
		case c < 0x20:
			return 0, false
		case c == '\\':
			if !ascii && !utf8.Valid(b[run:j]) {
				return 0, false
			}
			if j+1 >= len(b) {
				return 0, false
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				_, size, ok := escapedRune(b, j)
				if !ok {
					return 0, false
				}
				j += size
			default:
				return 0, false
			}
			run, ascii = j, true
			continue
		case c >= utf8.RuneSelf:
			ascii = false
		}
		j++
	}
	return 0, false
}

// plainRun returns the index of the first byte at or after j that is not
// plain printable ASCII ('"', '\\', a control byte or a byte of a multi-byte
// character), or len(b): eight bytes at a time while they are plain.
func plainRun(b []byte, j int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; j+8 <= len(b); j += 8 {
		x := binary.LittleEndian.Uint64(b[j:])
		// A byte's high bit in special is set if the byte is below 0x20,
		// is '"' or '\\', or has its own high bit set (the usual SWAR
		// tests for a zero byte in x-0x20, x^'"' and x^'\\').
		special := (x - ones*0x20) | (x ^ (ones * '"') - ones) | (x ^ (ones * '\\') - ones) | x
		if special &= highs; special != 0 {
			// Borrows only run upwards from a byte that is special
			// itself, so the lowest marked byte is the first special one.
			return j + bits.TrailingZeros64(special)/8
		}
	}
	for ; j < len(b); j++ {
		if c := b[j]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			return j
		}
	}
	return j
}

// maxShapeMembers bounds the objects ObjectShape checks; larger ones are
// left to ObjectOnce.
const maxShapeMembers = 256

// ObjectShape checks the object at b[i] as ObjectOnce reads it — every value
// a string — without building it, and returns the index after its '}' and
// its member count. ok true promises that ObjectOnce reads it with every key
// once. ok false promises nothing: read it with ObjectOnce (it refuses a
// repeated key, a key with an escape, whose repeats only a decoder can see,
// more than maxShapeMembers members, and whatever SkipString refuses).
func ObjectShape(b []byte, i int) (next, members int, ok bool) {
	if i >= len(b) || b[i] != '{' {
		return 0, 0, false
	}
	i = Space(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, 0, true
	}
	// The keys seen, by hash: an open-addressed table of 1 + the offset of
	// each key's opening quote, twice as large as the members it may hold.
	var seen [2 * maxShapeMembers]uint32
	for {
		if members == maxShapeMembers {
			return 0, 0, false
		}
		end, ok := SkipString(b, i)
		if !ok {
			return 0, 0, false
		}
		key := b[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 || !addKey(&seen, b, i, key) {
			return 0, 0, false
		}
		members++
		i = Space(b, end)
		if i >= len(b) || b[i] != ':' {
			return 0, 0, false
		}
		if end, ok = SkipString(b, Space(b, i+1)); !ok {
			return 0, 0, false
		}
		i = Space(b, end)
		if i >= len(b) {
			return 0, 0, false
		}
		switch b[i] {
		case ',':
			i = Space(b, i+1)
		case '}':
			return i + 1, members, true
		default:
			return 0, 0, false
		}
	}
}

// addKey records key (whose literal opens at b[at]) in seen, and reports
// false if an equal key is there already.
func addKey(seen *[2 * maxShapeMembers]uint32, b []byte, at int, key []byte) bool {
	h := uint32(2166136261) // FNV-1a
	for _, c := range key {
		h = (h ^ uint32(c)) * 16777619
	}
	mask := uint32(len(seen) - 1)
	for slot := h & mask; ; slot = (slot + 1) & mask {
		s := seen[slot]
		if s == 0 {
			seen[slot] = uint32(at) + 1
			return true
		}
		// The other key's literal has no escape either: its bytes are it.
		other := b[s:]
		if len(other) > len(key) && other[len(key)] == '"' && bytes.Equal(other[:len(key)], key) {
			return false
		}
	}
}
