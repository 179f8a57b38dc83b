package snsim

import (
	"net/http"
	"strconv"

	"github.com/nowbridge/nowbridge/internal/jsonw"
)

// writeError writes ServiceNow's error envelope. An empty detail is JSON
// null, as the platform sends it (e.g. 400 Invalid table X).
func writeError(w http.ResponseWriter, status int, message, detail string) {
	b := make([]byte, 0, 128)
	b = append(b, `{"error":{"message":`...)
	b = jsonw.AppendString(b, message)
	b = append(b, `,"detail":`...)
	if detail == "" {
		b = append(b, "null"...)
	} else {
		b = jsonw.AppendString(b, detail)
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
