package snsim

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/jsonw"
)

// apiPath is a parsed Table API path.
type apiPath struct {
	v1    bool // /api/now/v1: a list without matches is 404; later versions answer []
	table string
	sysID string
	base  string // "/api/now/table", "/api/now/v1/table" or "/api/now/v2/table"
}

// parseAPIPath reads a Table API path. An unversioned path is the latest
// version (v2), as on the platform.
func parseAPIPath(p string) (apiPath, bool) {
	var out apiPath
	rest := ""
	switch {
	case strings.HasPrefix(p, "/api/now/v2/table/"):
		out.base, rest = "/api/now/v2/table", p[len("/api/now/v2/table/"):]
	case strings.HasPrefix(p, "/api/now/v1/table/"):
		out.v1, out.base, rest = true, "/api/now/v1/table", p[len("/api/now/v1/table/"):]
	case strings.HasPrefix(p, "/api/now/table/"):
		out.base, rest = "/api/now/table", p[len("/api/now/table/"):]
	default:
		return out, false
	}
	rest = strings.TrimSuffix(rest, "/")
	out.table, out.sysID, _ = strings.Cut(rest, "/")
	if out.table == "" || strings.Contains(out.sysID, "/") {
		return out, false
	}
	return out, true
}

// params are the sysparm_* options shared by reads and writes.
type params struct {
	display     string // false, true, all
	fields      []string
	excludeRef  bool
	limit       int
	offset      int
	query       string
	noCount     bool
	suppressLnk bool
}

func parseParams(q url.Values) params {
	p := params{display: "false", limit: 10000}
	switch strings.ToLower(q.Get("sysparm_display_value")) {
	case "true":
		p.display = "true"
	case "all":
		p.display = "all"
	}
	if f := q.Get("sysparm_fields"); f != "" {
		for _, name := range strings.Split(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				p.fields = append(p.fields, name)
			}
		}
	}
	p.excludeRef = strings.EqualFold(q.Get("sysparm_exclude_reference_link"), "true")
	if n, err := strconv.Atoi(q.Get("sysparm_limit")); err == nil && n > 0 {
		p.limit = n
	}
	if n, err := strconv.Atoi(q.Get("sysparm_offset")); err == nil && n > 0 {
		p.offset = n
	}
	p.query = q.Get("sysparm_query")
	p.noCount = strings.EqualFold(q.Get("sysparm_no_count"), "true")
	p.suppressLnk = strings.EqualFold(q.Get("sysparm_suppress_pagination_header"), "true")
	return p
}

func baseURL(r *http.Request) string {
	scheme := "http"
	// Behind a TLS-terminating proxy, links must say https like the instance's.
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// handleAPI serves the Table API.
func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	if _, ok := parseAttachmentPath(r.URL.Path); ok {
		s.handleAttachment(w, r)
		return
	}
	ap, ok := parseAPIPath(r.URL.Path)
	if !ok {
		writeError(w, http.StatusBadRequest, "Requested URI does not represent any resource", "")
		return
	}
	user := s.authenticate(w, r)
	if user == "" {
		return
	}
	if !s.rateLimit(w, r, user, ap) {
		return
	}
	s.mu.RLock()
	t, known := s.tables[ap.table]
	s.mu.RUnlock()
	if !known {
		writeError(w, http.StatusBadRequest, "Invalid table "+ap.table, "")
		return
	}
	p := parseParams(r.URL.Query())
	acl := s.currentView()
	switch r.Method {
	case http.MethodGet:
		if ap.sysID == "" {
			s.list(w, r, t, ap, p, acl)
		} else {
			s.getOne(w, r, t, ap, p, acl)
		}
	case http.MethodPost:
		if ap.sysID != "" {
			writeError(w, http.StatusMethodNotAllowed, "Method not Supported", "POST method not supported for API")
			return
		}
		s.writeAPI(w, r, t, ap, p, acl, user, events.ActionInsert)
	case http.MethodPut, http.MethodPatch:
		if ap.sysID == "" {
			writeError(w, http.StatusMethodNotAllowed, "Method not Supported", r.Method+" method not supported for API")
			return
		}
		s.writeAPI(w, r, t, ap, p, acl, user, events.ActionUpdate)
	case http.MethodDelete:
		if ap.sysID == "" {
			writeError(w, http.StatusMethodNotAllowed, "Method not Supported", "DELETE method not supported for API")
			return
		}
		s.writeAPI(w, r, t, ap, p, acl, user, events.ActionDelete)
	default:
		writeError(w, http.StatusMethodNotAllowed, "Method not Supported", r.Method+" method not supported for API")
	}
}

// view is what the API user may see and do for one request: the ACL and
// the grants, read once so a request sees one consistent setting.
type view struct {
	ACL
	grants Grants
}

func (s *Server) currentView() view {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return view{ACL: s.acl, grants: s.grants}
}

// tableHidden reports whether the table's read ACL keeps every row from the
// API user: the least-privilege roles cannot read sys_dictionary,
// sys_audit_delete or HR cases unless granted, and a user without itil
// (NoRoles) cannot read the ITSM tables or their journal entries.
func (v view) tableHidden(t *table) bool {
	switch t.s.read {
	case accessITIL:
		return v.NoRoles
	case accessHR:
		return v.NoRoles || !v.grants.hrRead()
	case accessDictionary:
		return !v.grants.Dictionary
	case accessAuditDelete:
		return !v.grants.AuditDelete
	}
	return false
}

// writeDenied reports whether the API user may not write the table: system
// tables, tables it cannot read, DenyWrites, and HR cases without a role
// that writes them (sn_hr_core.case_reader only reads).
func (v view) writeDenied(t *table) bool {
	if v.DenyWrites || t.s.readOnly || v.tableHidden(t) {
		return true
	}
	return t.s.read == accessHR && !v.grants.hrWrite()
}

// rowHiddenLocked reports whether the API user may not read a row: its
// table is hidden, ACL.HideRow hides it, or it is a journal entry of a
// hidden record. The caller holds s.mu.
func (s *Server) rowHiddenLocked(t *table, r *row, v view) bool {
	if v.tableHidden(t) {
		return true
	}
	if t.s.name == AttachmentTable {
		return s.attachmentHiddenLocked(t, r, v)
	}
	var parent *table
	if t.s.name == "sys_journal_field" {
		// Journal entries are readable where their record is: never when
		// its table is hidden (an HR case's entries without an HR role).
		if parent = s.tables[t.get("name", r)]; parent != nil && v.tableHidden(parent) {
			return true
		}
	}
	if v.HideRow == nil {
		return false
	}
	if v.HideRow(t.s.name, t.toRecord(r)) {
		return true
	}
	if parent != nil {
		if pr := parent.rows[t.get("element_id", r)]; pr != nil {
			return v.HideRow(parent.s.name, parent.toRecord(pr))
		}
	}
	return false
}

func hiddenSet(acl ACL, table string) map[string]bool {
	names := acl.HiddenFields[table]
	if len(names) == 0 {
		return nil
	}
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// list answers GET /api/now/table/{table}.
func (s *Server) list(w http.ResponseWriter, r *http.Request, t *table, ap apiPath, p params, acl view) {
	q, err := ParseQuery(p.query)
	if err != nil {
		s.log.Error("snsim: unsupported encoded query; answering 400 so the test notices", "table", t.s.name, "query", p.query, "err", err)
		s.addQueryProblem(QueryProblem{Kind: "unsupported", Table: t.s.name, Query: p.query, Detail: err.Error()})
		writeError(w, http.StatusBadRequest, "snsim: unsupported encoded query syntax", err.Error())
		return
	}
	hidden := hiddenSet(acl.ACL, t.s.name)
	s.knobMu.Lock()
	noRows := s.noRows
	s.knobMu.Unlock()
	pl := bind(q, t.s, noRows)
	var denied []string
	for _, part := range q.Parts {
		for _, g := range part.Groups {
			for _, c := range g {
				if hidden[c.Field] {
					denied = append(denied, c.Field)
				}
			}
		}
	}
	if len(denied) > 0 {
		writeError(w, http.StatusForbidden, "Insufficient rights to query records", "Field(s) present in the query do not have permission to be read")
		return
	}
	if len(pl.dropped) > 0 {
		mode := "dropped (the rest of the query still runs)"
		if noRows {
			mode = "makes the query return no rows (glide.invalid_query.returns_no_rows)"
		}
		s.log.Warn("snsim: query names fields the table does not have; "+mode, "table", t.s.name, "query", p.query, "clauses", pl.dropped)
		s.addQueryProblem(QueryProblem{Kind: "dropped", Table: t.s.name, Query: p.query, Detail: strings.Join(pl.dropped, ", ")})
	}
	base := baseURL(r)
	s.mu.RLock()
	res := t.scan(pl, p.offset, p.limit, !p.noCount)
	body := make([]byte, 0, 256+len(res.rows)*512)
	body = append(body, `{"result":[`...)
	n := 0
	for _, row := range res.rows {
		if s.rowHiddenLocked(t, row, acl) {
			continue // row ACLs run after the limit: the page comes back short
		}
		if n > 0 {
			body = append(body, ',')
		}
		body = s.appendRecord(body, t, row, p, hidden, base+ap.base)
		n++
	}
	body = append(body, "]}"...)
	s.mu.RUnlock()
	s.knobMu.Lock()
	cost := s.rowCost * time.Duration(min(p.offset, res.skipped))
	s.knobMu.Unlock()
	if cost > 0 {
		_ = sleepCtx(r.Context(), cost)
	}
	if len(res.rows) == 0 && ap.v1 {
		// v1 answers a query without matches with 404; v2 (and the
		// unversioned path) with [].
		writeError(w, errNotFound.status, errNotFound.message, errNotFound.detail)
		return
	}
	if res.total >= 0 {
		w.Header().Set("X-Total-Count", strconv.Itoa(res.total))
	}
	if !p.suppressLnk {
		if l := linkHeader(base+r.URL.Path, r.URL.Query(), p, res); l != "" {
			w.Header().Set("Link", l)
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// linkHeader builds Link the way recorded responses show it: entries joined
// by a comma without a space, page 1's prev at a negative offset, no next
// on the last page, last at total - limit.
func linkHeader(base string, q url.Values, p params, res scanResult) string {
	rest := make(url.Values, len(q))
	for k, v := range q {
		if k != "sysparm_limit" && k != "sysparm_offset" {
			rest[k] = v
		}
	}
	tail := rest.Encode()
	link := func(offset int, rel string) string {
		u := base + "?sysparm_limit=" + strconv.Itoa(p.limit) + "&sysparm_offset=" + strconv.Itoa(offset)
		if tail != "" {
			u += "&" + tail
		}
		return "<" + u + ">;rel=\"" + rel + "\""
	}
	parts := []string{link(0, "first"), link(p.offset-p.limit, "prev")}
	hasNext := res.more
	if res.total >= 0 {
		hasNext = p.offset+p.limit < res.total
	}
	if hasNext {
		parts = append(parts, link(p.offset+p.limit, "next"))
	}
	if res.total >= 0 {
		parts = append(parts, link(res.total-p.limit, "last"))
	}
	return strings.Join(parts, ",")
}

// getOne answers GET /api/now/table/{table}/{sys_id}.
func (s *Server) getOne(w http.ResponseWriter, r *http.Request, t *table, ap apiPath, p params, acl view) {
	hidden := hiddenSet(acl.ACL, t.s.name)
	s.mu.RLock()
	row := t.rows[ap.sysID]
	if row == nil || s.rowHiddenLocked(t, row, acl) {
		s.mu.RUnlock()
		writeError(w, errNotFound.status, errNotFound.message, errNotFound.detail)
		return
	}
	body := append([]byte(`{"result":`), nil...)
	body = s.appendRecord(body, t, row, p, hidden, baseURL(r)+ap.base)
	body = append(body, '}')
	s.mu.RUnlock()
	writeJSON(w, http.StatusOK, body)
}

// writeAPI answers POST, PUT, PATCH and DELETE.
func (s *Server) writeAPI(w http.ResponseWriter, r *http.Request, t *table, ap apiPath, p params, acl view, user, action string) {
	if acl.writeDenied(t) {
		writeError(w, http.StatusForbidden, "Operation Failed", "ACL Exception Update Failed due to security constraints")
		return
	}
	if acl.HideRow != nil && action != events.ActionInsert {
		s.mu.RLock()
		row := t.rows[ap.sysID]
		hiddenRow := row != nil && s.rowHiddenLocked(t, row, acl)
		s.mu.RUnlock()
		if hiddenRow {
			writeError(w, errNotFound.status, errNotFound.message, errNotFound.detail)
			return
		}
	}
	var fields map[string]string
	if action != events.ActionDelete {
		body, err := readBody(r)
		if err != nil {
			writeError(w, http.StatusBadRequest, "Exception while reading request", err.Error())
			return
		}
		if fields, err = decodeFields(body); err != nil {
			writeError(w, http.StatusBadRequest, "Exception while reading request", "The payload is not valid JSON.")
			return
		}
	}
	res, err := s.apply(write{table: t.s.name, sysID: ap.sysID, action: action, fields: fields, user: user, workflow: true})
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			writeError(w, ae.status, ae.message, ae.detail)
			return
		}
		s.log.Error("snsim write failed", "table", t.s.name, "sys_id", ap.sysID, "err", err)
		writeError(w, http.StatusInternalServerError, "Internal Server Error", "")
		return
	}
	if s.hooks.beforeResponse() && res.hook != nil {
		// Echo-race knob: the business rule's webhook lands before the
		// API caller sees its own write.
		select {
		case <-res.hook:
		case <-r.Context().Done():
		}
	}
	if action == events.ActionDelete {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	hidden := hiddenSet(acl.ACL, t.s.name)
	base := baseURL(r)
	s.mu.RLock()
	body := append([]byte(`{"result":`), nil...)
	body = s.appendRecord(body, t, res.rec, p, hidden, base+ap.base)
	body = append(body, '}')
	id := res.rec.id(t)
	s.mu.RUnlock()
	status := http.StatusOK
	if action == events.ActionInsert {
		status = http.StatusCreated
		w.Header().Set("Location", base+ap.base+"/"+t.s.name+"/"+id)
	}
	writeJSON(w, status, body)
}

// decodeFields reads a JSON object of field values; numbers, booleans and
// {"value": ...} objects become their string form.
func decodeFields(body []byte) (map[string]string, error) {
	if len(strings.TrimSpace(string(body))) == 0 {
		return map[string]string{}, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		sv, err := events.FieldString(v)
		if err != nil {
			return nil, err
		}
		out[k] = sv
	}
	return out, nil
}

// appendRecord renders one record per sysparm_fields, display_value and
// exclude_reference_link, omitting fields the ACL hides. Reference links
// start with tableBase, the request's scheme, host and Table API version
// ("https://host/api/now/v2/table").
func (s *Server) appendRecord(b []byte, t *table, r *row, p params, hidden map[string]bool, tableBase string) []byte {
	b = append(b, '{')
	first := true
	emit := func(i int) {
		f := t.s.fields[i]
		if hidden[f.name] {
			return
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = jsonw.AppendString(b, f.name)
		b = append(b, ':')
		b = s.appendValue(b, t, r, f, r.vals[i], p, tableBase)
	}
	if len(p.fields) > 0 {
		seen := make(map[string]bool, len(p.fields))
		for _, name := range p.fields {
			if i := t.s.idx(name); i >= 0 && !seen[name] {
				seen[name] = true
				emit(i)
			}
		}
	} else {
		for i := range t.s.fields {
			emit(i)
		}
	}
	return append(b, '}')
}

func (s *Server) appendValue(b []byte, t *table, r *row, f *field, v string, p params, tableBase string) []byte {
	switch f.typ {
	case typeReference:
		if v == "" {
			if p.display == "all" {
				return append(b, `{"display_value":"","value":""}`...)
			}
			return append(b, `""`...)
		}
		link := tableBase + "/" + f.ref + "/" + v
		switch p.display {
		case "true":
			d := s.refDisplay(f.ref, v)
			if p.excludeRef {
				return jsonw.AppendString(b, d)
			}
			b = append(b, `{"display_value":`...)
			b = jsonw.AppendString(b, d)
			b = append(b, `,"link":`...)
			b = jsonw.AppendString(b, link)
			return append(b, '}')
		case "all":
			b = append(b, `{"display_value":`...)
			b = jsonw.AppendString(b, s.refDisplay(f.ref, v))
			if !p.excludeRef {
				b = append(b, `,"link":`...)
				b = jsonw.AppendString(b, link)
			}
			b = append(b, `,"value":`...)
			b = jsonw.AppendString(b, v)
			return append(b, '}')
		}
		if p.excludeRef {
			return jsonw.AppendString(b, v)
		}
		b = append(b, `{"link":`...)
		b = jsonw.AppendString(b, link)
		b = append(b, `,"value":`...)
		b = jsonw.AppendString(b, v)
		return append(b, '}')
	case typeJournal:
		// Raw reads of a journal field are empty; display values hold the
		// entries, newest first.
		if p.display == "false" {
			return append(b, `""`...)
		}
		d := s.formatJournal(s.journalLocked(r.id(t), f.name), f.label)
		if p.display == "true" {
			return jsonw.AppendString(b, d)
		}
		b = append(b, `{"display_value":`...)
		b = jsonw.AppendString(b, d)
		return append(b, `,"value":""}`...)
	}
	if p.display == "false" {
		return jsonw.AppendString(b, v)
	}
	d := v
	if f.labels != nil {
		if l, ok := f.labels[v]; ok {
			d = l
		}
	}
	if p.display == "true" {
		return jsonw.AppendString(b, d)
	}
	b = append(b, `{"display_value":`...)
	b = jsonw.AppendString(b, d)
	b = append(b, `,"value":`...)
	b = jsonw.AppendString(b, v)
	return append(b, '}')
}

// refDisplay is the display value of a reference: the referenced record's
// display field, or the raw value when it points nowhere known.
func (s *Server) refDisplay(table, id string) string {
	if id == "global" {
		return "global"
	}
	t := s.tables[table]
	if t == nil {
		return id
	}
	r := t.rows[id]
	if r == nil {
		return id
	}
	return t.get(t.s.display, r)
}
