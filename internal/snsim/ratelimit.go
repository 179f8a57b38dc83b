package snsim

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RateLimitRule is one sys_rate_limit_rules row: at most Count requests per
// hour to Resource ("GET /now/table/incident", "" for every resource) by
// User (a user name), by users with Role, or by everyone (both empty). The
// most specific rule wins (user, then role, then everyone); among several
// of one kind the lowest count wins.
type RateLimitRule struct {
	SysID    string
	Resource string
	User     string
	Role     string
	Count    int
}

// BurstRule is the sys_id reported for the per-second test knob.
const BurstRule = "snsim_burst_limit"

type limiter struct {
	rules  []RateLimitRule
	roles  map[string][]string // user -> roles
	counts map[string]int      // rule|user|window -> requests
	burst  int
	bucket map[string]int // user|second -> requests
	window time.Duration  // the rules' counting period (SetRateLimitWindow); 0 is an hour
}

func newLimiter() *limiter {
	return &limiter{counts: map[string]int{}, bucket: map[string]int{}, roles: map[string][]string{}}
}

// SetRateLimitRules replaces the hourly rules and resets their counters.
func (s *Server) SetRateLimitRules(rules []RateLimitRule) error {
	for i, r := range rules {
		if r.Count <= 0 {
			return fmt.Errorf("snsim: rate limit rule #%d: count must be positive, got %d", i+1, r.Count)
		}
	}
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	s.limits.rules = nil
	for i, r := range rules {
		if r.SysID == "" {
			r.SysID = stableID("sys_rate_limit_rules", strconv.Itoa(i))
		}
		s.limits.rules = append(s.limits.rules, r)
	}
	s.limits.counts = map[string]int{}
	return nil
}

// SetUserRoles gives a user roles, for role-specific rate limit rules.
func (s *Server) SetUserRoles(user string, roles ...string) {
	s.knobMu.Lock()
	s.limits.roles[user] = roles
	s.knobMu.Unlock()
}

// SetBurstLimit caps API requests per user per second (0 turns it off): a
// fast way for tests to provoke 429. It behaves as a rule of that many
// requests per second for every resource: its X-RateLimit-* headers (rule
// BurstRule) come on every answer it counts, as a rule's do, unless an
// hourly rule matches too (whose headers win).
func (s *Server) SetBurstLimit(perSecond int) {
	s.knobMu.Lock()
	s.limits.burst = max(perSecond, 0)
	s.limits.bucket = map[string]int{}
	s.knobMu.Unlock()
}

// resource names a request the way rate limit rules do.
func resource(r *http.Request, ap apiPath) string {
	p := strings.TrimPrefix(ap.base, "/api") + "/" + ap.table
	return r.Method + " " + p
}

// pick chooses the rule that governs user on res.
func (l *limiter) pick(user, res string) (RateLimitRule, bool) {
	var best RateLimitRule
	bestRank := 0
	for _, r := range l.rules {
		if r.Resource != "" && !strings.EqualFold(r.Resource, res) {
			continue
		}
		rank := 0
		switch {
		case r.User != "":
			if r.User != user {
				continue
			}
			rank = 3
		case r.Role != "":
			has := false
			for _, role := range l.roles[user] {
				has = has || role == r.Role
			}
			if !has {
				continue
			}
			rank = 2
		default:
			rank = 1
		}
		if rank > bestRank || rank == bestRank && r.Count < best.Count {
			best, bestRank = r, rank
		}
	}
	return best, bestRank > 0
}

// rateLimit applies the rules; it answers 429 and returns false when the
// request is over a limit.
func (s *Server) rateLimit(w http.ResponseWriter, r *http.Request, user string, ap apiPath) bool {
	now := s.now()
	s.knobMu.Lock()
	l := s.limits
	if l.burst > 0 {
		sec := now.Unix()
		key := user + "|" + strconv.FormatInt(sec, 10)
		if len(l.bucket) > 1000 {
			l.bucket = map[string]int{}
		}
		if l.bucket[key] >= l.burst {
			s.knobMu.Unlock()
			reject(w, l.burst, sec+1, 1, BurstRule)
			return false
		}
		l.bucket[key]++
	}
	rule, ok := l.pick(user, resource(r, ap))
	if !ok {
		burst := l.burst
		s.knobMu.Unlock()
		if burst > 0 {
			rateHeaders(w.Header(), burst, now.Unix()+1, BurstRule)
		}
		return true
	}
	window := now.Truncate(l.period())
	reset := window.Add(l.period()).Unix()
	key := rule.SysID + "|" + user + "|" + strconv.FormatInt(window.Unix(), 10)
	if l.counts[key] >= rule.Count {
		s.knobMu.Unlock()
		retry := max(reset-now.Unix(), 1)
		reject(w, rule.Count, reset, retry, rule.SysID)
		return false
	}
	l.counts[key]++
	s.knobMu.Unlock()
	// Every response a rule matches carries the rule's headers.
	rateHeaders(w.Header(), rule.Count, reset, rule.SysID)
	return true
}

func rateHeaders(h http.Header, limit int, reset int64, rule string) {
	h.Set("X-RateLimit-Limit", strconv.Itoa(limit))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(reset, 10))
	h.Set("X-RateLimit-Rule", rule)
}

func reject(w http.ResponseWriter, limit int, reset, retry int64, rule string) {
	w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
	rateHeaders(w.Header(), limit, reset, rule)
	writeError(w, http.StatusTooManyRequests, "Rate limit exceeded",
		fmt.Sprintf("Rate limit of %d requests exceeded (rule %s); retry after %d seconds", limit, rule, retry))
}
