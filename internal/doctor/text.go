package doctor

// Small helpers that turn answers and errors into a line for a person.

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/snclient"
)

func apiMessage(err error) string {
	var ae *snclient.APIError
	if errors.As(err, &ae) {
		return strings.TrimSpace(ae.Message)
	}
	return ""
}

func statusText(err error) string {
	var ae *snclient.APIError
	if errors.As(err, &ae) {
		return strconv.Itoa(ae.Status) + " " + strings.TrimSpace(ae.Message)
	}
	return trim(err.Error())
}

func orHint(err error, def string) string {
	if h := snclient.Hint(err); h != "" {
		return h
	}
	return def
}

func recordName(r snclient.Record) string {
	if n := r.Get("number"); n != "" {
		return n
	}
	return r.SysID()
}

func countText(total int) string {
	if total < 0 {
		return "absent"
	}
	return strconv.Itoa(total)
}

func notIn(list, set []string) []string {
	var out []string
	for _, f := range list {
		if !slices.Contains(set, f) {
			out = append(out, f)
		}
	}
	return out
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func aheadBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}

// trim keeps an error on one readable line.
func trim(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
