package snclient

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/secret"
)

// fakeSN is an httptest handler that answers exactly as the facts file
// records ServiceNow answering: form-encoded client-credentials tokens,
// the {"result": ...} envelope with string values, X-Total-Count, Link
// headers joined without spaces with a negative prev offset on page 1, v1's
// 404 for an empty list, the error bodies, and ACL filtering applied after
// the limit. Its query engine knows the subset the client sends and fails
// the test on anything else, so no test passes by accident. It stands in
// where internal/snsim lacks a mode; see sim_test.go for the simulator.
type fakeSN struct {
	t        testing.TB
	srv      *httptest.Server
	id, sec  string
	ttl      atomic.Int64 // token lifetime, seconds
	tokenReq atomic.Int64
	apiReq   atomic.Int64

	mu     sync.Mutex
	tokens map[string]bool
	seq    int
	// modes
	rejectTokens  bool // 401 access_denied at /oauth_token.do
	appUserUnset  bool // tokens issued, API answers 401
	hidden        func(rec map[string]string) bool
	hideFields    []string
	intercept     func(w http.ResponseWriter, r *http.Request) bool // true: handled
	tables        map[string][]map[string]string
	dictionary    map[string][]string
	dictRequests  atomic.Int64
	queries       []string
	recordQueries bool
}

func newFakeSN(t testing.TB) *fakeSN {
	f := &fakeSN{t: t, id: "bridge-client", sec: "s3cr3t-value", tokens: map[string]bool{}, tables: map[string][]map[string]string{}}
	f.ttl.Store(1799)
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSN) config() Config {
	return Config{
		InstanceURL: f.srv.URL, ClientID: f.id, ClientSecret: secret.String(f.sec),
		RetryInitial: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond, RetryMaxElapsed: 5 * time.Second,
		RequestTimeout: 5 * time.Second, BreakerOpenFor: 200 * time.Millisecond,
		SkipFieldValidation: true,
		Logger:              slog.New(slog.DiscardHandler),
	}
}

func (f *fakeSN) set(fn func(f *fakeSN)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func snError(w http.ResponseWriter, status int, msg, detail string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"message": msg, "detail": detail}, "status": "failure"})
}

func (f *fakeSN) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/oauth_token.do" {
		f.token(w, r)
		return
	}
	f.apiReq.Add(1)
	f.mu.Lock()
	icpt := f.intercept
	f.mu.Unlock()
	if icpt != nil && icpt(w, r) {
		return
	}
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	ok := f.tokens[tok] && !f.appUserUnset
	f.mu.Unlock()
	if !ok {
		snError(w, 401, "User Not Authenticated", "Required to provide Auth information")
		return
	}
	f.table(w, r)
}

func (f *fakeSN) token(w http.ResponseWriter, r *http.Request) {
	f.tokenReq.Add(1)
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		f.t.Errorf("token request %s %s: want a form POST", r.Method, r.Header.Get("Content-Type"))
	}
	if _, _, basic := r.BasicAuth(); basic {
		f.t.Errorf("token request uses HTTP Basic; ServiceNow documents the credentials in the body")
	}
	_ = r.ParseForm()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rejectTokens || r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Get("client_id") != f.id || r.PostForm.Get("client_secret") != f.sec {
		writeJSON(w, 401, map[string]string{"error_description": "access_denied", "error": "server_error"})
		return
	}
	f.seq++
	tok := fmt.Sprintf("tok-%d-%d", f.seq, time.Now().UnixNano())
	f.tokens[tok] = true
	writeJSON(w, 200, map[string]any{"access_token": tok, "scope": "", "token_type": "Bearer", "expires_in": f.ttl.Load()})
}

func (f *fakeSN) revokeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.tokens)
}

// table serves /api/now/table/{table}[/{sys_id}] and the v2 path.
func (f *fakeSN) table(w http.ResponseWriter, r *http.Request) {
	path, v2 := r.URL.Path, false
	switch {
	case strings.HasPrefix(path, "/api/now/v2/table/"):
		path, v2 = strings.TrimPrefix(path, "/api/now/v2/table/"), true
	case strings.HasPrefix(path, "/api/now/table/"):
		path = strings.TrimPrefix(path, "/api/now/table/")
	default:
		snError(w, 400, "Requested URI does not represent any resource", "")
		return
	}
	table, sysID, _ := strings.Cut(path, "/")
	f.mu.Lock()
	defer f.mu.Unlock()
	if table == "sys_dictionary" {
		f.dictRequests.Add(1)
		f.dictionaryList(w, r)
		return
	}
	rows, ok := f.tables[table]
	if !ok {
		snError(w, 400, "Invalid table "+table, "")
		return
	}
	if sysID != "" || r.Method != http.MethodGet {
		f.t.Errorf("fakeSN serves lists only; got %s %s", r.Method, r.URL.Path)
		snError(w, 500, "fake", "")
		return
	}
	q := r.URL.Query()
	if f.recordQueries {
		f.queries = append(f.queries, q.Get("sysparm_query"))
	}
	match, order, err := parseFakeQuery(q.Get("sysparm_query"))
	if err != nil {
		f.t.Errorf("fakeSN: %v", err)
		snError(w, 500, "fake: unsupported query", err.Error())
		return
	}
	var hits []map[string]string
	for _, rec := range rows {
		if match(rec) {
			hits = append(hits, rec)
		}
	}
	slices.SortStableFunc(hits, order)
	limit, _ := strconv.Atoi(q.Get("sysparm_limit"))
	if limit <= 0 {
		limit = 10000
	}
	offset, _ := strconv.Atoi(q.Get("sysparm_offset"))
	total := len(hits)
	end := min(offset+limit, total)
	var page []map[string]string
	if offset < total {
		page = hits[offset:end]
	}
	var out []map[string]string
	var fields []string
	if s := q.Get("sysparm_fields"); s != "" {
		fields = strings.Split(s, ",")
	}
	for _, rec := range page {
		if f.hidden != nil && f.hidden(rec) {
			continue // ACL: filtered after the limit
		}
		o := map[string]string{}
		for k, v := range rec {
			if (fields == nil || slices.Contains(fields, k)) && !slices.Contains(f.hideFields, k) {
				o[k] = v
			}
		}
		out = append(out, o)
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(total))
	base := "https://fake.service-now.com" + r.URL.Path + "?" + withoutOffset(q)
	link := func(off int, rel string) string {
		return "<" + base + "&sysparm_offset=" + strconv.Itoa(off) + ">;rel=\"" + rel + "\""
	}
	links := []string{link(0, "first"), link(offset-limit, "prev")}
	if end < total {
		links = append(links, link(end, "next"))
	}
	links = append(links, link(max(total-limit, 0), "last"))
	w.Header().Set("Link", strings.Join(links, ","))
	if len(out) == 0 && !v2 && total == 0 {
		snError(w, 404, "No Record found", "Records matching query not found. Check query parameter or offset parameter")
		return
	}
	if out == nil {
		out = []map[string]string{}
	}
	writeJSON(w, 200, map[string]any{"result": out})
}

func withoutOffset(q url.Values) string {
	c := url.Values{}
	for k, v := range q {
		if k != "sysparm_offset" {
			c[k] = v
		}
	}
	return c.Encode()
}

func (f *fakeSN) dictionaryList(w http.ResponseWriter, r *http.Request) {
	match, _, err := parseFakeQuery(r.URL.Query().Get("sysparm_query"))
	if err != nil || r.URL.Query().Get("sysparm_fields") != "element" {
		f.t.Errorf("sys_dictionary query %q fields %q: %v", r.URL.Query().Get("sysparm_query"), r.URL.Query().Get("sysparm_fields"), err)
	}
	out := []map[string]string{}
	for table, elems := range f.dictionary {
		if match != nil && !match(map[string]string{"name": table}) {
			continue
		}
		out = append(out, map[string]string{"element": ""})
		for _, e := range elems {
			out = append(out, map[string]string{"element": e})
		}
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(len(out)))
	writeJSON(w, 200, map[string]any{"result": out})
}

// parseFakeQuery understands a^b^ORc with =, !=, >, >=, <, <= and
// ORDERBY/ORDERBYDESC, comparing strings (ServiceNow's date-time format
// and sys_ids sort as strings). Anything else is an error.
func parseFakeQuery(s string) (func(map[string]string) bool, func(a, b map[string]string) int, error) {
	var groups [][]func(map[string]string) bool
	var orders []func(a, b map[string]string) int
	if strings.Contains(s, "^NQ") {
		return nil, nil, fmt.Errorf("fake: ^NQ unsupported in %q", s)
	}
	for _, part := range splitCaret(s) {
		or := strings.HasPrefix(part, "OR") && !strings.HasPrefix(part, "ORDERBY")
		part = strings.TrimPrefix(part, "OR")
		if strings.HasPrefix(part, "DERBY") {
			part = "OR" + part
			or = false
		}
		switch {
		case part == "":
			continue
		case strings.HasPrefix(part, "ORDERBYDESC"):
			fld := strings.TrimPrefix(part, "ORDERBYDESC")
			orders = append(orders, func(a, b map[string]string) int { return strings.Compare(b[fld], a[fld]) })
			continue
		case strings.HasPrefix(part, "ORDERBY"):
			fld := strings.TrimPrefix(part, "ORDERBY")
			orders = append(orders, func(a, b map[string]string) int { return strings.Compare(a[fld], b[fld]) })
			continue
		}
		var pred func(map[string]string) bool
		for _, op := range []string{">=", "<=", "!=", ">", "<", "="} {
			fld, val, ok := strings.Cut(part, op)
			if !ok || !fieldNameRE.MatchString(fld) {
				continue
			}
			val = strings.ReplaceAll(val, "^^", "^")
			switch op {
			case ">=":
				pred = func(r map[string]string) bool { return r[fld] >= val }
			case "<=":
				pred = func(r map[string]string) bool { return r[fld] <= val }
			case "!=":
				pred = func(r map[string]string) bool { return r[fld] != val }
			case ">":
				pred = func(r map[string]string) bool { return r[fld] > val }
			case "<":
				pred = func(r map[string]string) bool { return r[fld] < val }
			case "=":
				pred = func(r map[string]string) bool { return r[fld] == val }
			}
			break
		}
		if pred == nil {
			return nil, nil, fmt.Errorf("fake: unsupported clause %q in %q", part, s)
		}
		if or && len(groups) > 0 {
			groups[len(groups)-1] = append(groups[len(groups)-1], pred)
		} else {
			groups = append(groups, []func(map[string]string) bool{pred})
		}
	}
	match := func(r map[string]string) bool {
		for _, g := range groups {
			if !slices.ContainsFunc(g, func(p func(map[string]string) bool) bool { return p(r) }) {
				return false
			}
		}
		return true
	}
	order := func(a, b map[string]string) int {
		for _, o := range orders {
			if c := o(a, b); c != 0 {
				return c
			}
		}
		return 0
	}
	return match, order, nil
}

// splitCaret splits on ^ but not on the escaped ^^.
func splitCaret(s string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '^' {
			if i+1 < len(s) && s[i+1] == '^' {
				cur.WriteString("^^")
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(parts, cur.String())
}

// seedFake fills table with n incident-like records, perSecond of them
// sharing each sys_updated_on second, sys_ids in random order within it.
func seedRows(n, perSecond int, start time.Time) []map[string]string {
	rows := make([]map[string]string, 0, n)
	for i := range n {
		at := start.Add(time.Duration(i/perSecond) * time.Second)
		// A multiplicative hash scatters sys_ids so id order and insert
		// order differ within a second.
		id := fmt.Sprintf("%032x", uint64(i)*0x9E3779B97F4A7C15)
		rows = append(rows, map[string]string{
			"sys_id": id, "number": fmt.Sprintf("INC%07d", 10001+i), "sys_updated_on": at.UTC().Format(TimeLayout),
			"sys_mod_count": "0", "short_description": "seed " + strconv.Itoa(i), "state": "1", "active": "true",
		})
	}
	return rows
}
