package snsim

import (
	"net/http"
	"strconv"
	"unicode/utf8"
)

// writeError writes ServiceNow's error envelope. An empty detail is JSON
// null, as the platform sends it (e.g. 400 Invalid table X).
func writeError(w http.ResponseWriter, status int, message, detail string) {
	b := make([]byte, 0, 128)
	b = append(b, `{"error":{"message":`...)
	b = appendString(b, message)
	b = append(b, `,"detail":`...)
	if detail == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, detail)
	}
	b = append(b, `},"status":"failure"}`...)
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeJSON(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string without HTML escaping, as
// ServiceNow's serializer writes it.
func appendString(b []byte, s string) []byte {
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
			case '"', '\\':
				b = append(b, '\\', c)
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
			b = append(b, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
