package snclient

import (
	"net/url"
	"strconv"
	"strings"
)

// Link is one entry of a Link header.
type Link struct {
	URL string
	Rel string
}

// Offset is the link's sysparm_offset, and false when it has none, it is
// not a number, or it is negative (ServiceNow's page 1 carries a prev link
// with a negative offset: never follow it).
func (l Link) Offset() (int, bool) {
	u, err := url.Parse(l.URL)
	if err != nil {
		return 0, false
	}
	s := u.Query().Get("sysparm_offset")
	if s == "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// ParseLinks parses a Link header leniently: entries joined by commas with
// or without spaces (ServiceNow writes none), rel quoted or not, extra
// parameters ignored, several header lines concatenated. Entries that are
// not <url>;rel=... are skipped rather than failing the page.
func ParseLinks(headers ...string) []Link {
	var out []Link
	for _, h := range headers {
		for len(h) > 0 {
			start := strings.IndexByte(h, '<')
			if start < 0 {
				break
			}
			end := strings.IndexByte(h[start:], '>')
			if end < 0 {
				break
			}
			target := h[start+1 : start+end]
			rest := h[start+end+1:]
			// Parameters run up to the next '<' (URLs may hold commas, so
			// splitting on commas first would cut them).
			next := strings.IndexByte(rest, '<')
			params := rest
			if next >= 0 {
				params = rest[:next]
				h = rest[next:]
			} else {
				h = ""
			}
			rel := ""
			for _, p := range strings.Split(params, ";") {
				p = strings.TrimSpace(strings.TrimRight(strings.TrimSpace(p), ","))
				k, v, ok := strings.Cut(p, "=")
				if !ok || !strings.EqualFold(strings.TrimSpace(k), "rel") {
					continue
				}
				rel = strings.ToLower(strings.Trim(strings.TrimSpace(v), `"`))
			}
			if rel == "" {
				continue
			}
			// rel may list several relation types.
			for _, r := range strings.Fields(rel) {
				out = append(out, Link{URL: strings.TrimSpace(target), Rel: r})
			}
		}
	}
	return out
}

// findLink returns the first link with the relation.
func findLink(links []Link, rel string) (Link, bool) {
	for _, l := range links {
		if l.Rel == rel {
			return l, true
		}
	}
	return Link{}, false
}
