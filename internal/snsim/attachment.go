package snsim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/jsonw"
)

// The Attachment API (see doc.go's "Attachments" and
// docs/servicenow-attachments.md for the facts and their sources).

// DefaultAttachmentMaxSize is com.glide.attachment.max_size's default,
// 1024 MB (the property holds megabytes; the simulator's knob takes bytes).
const DefaultAttachmentMaxSize int64 = 1024 << 20

// AttachmentTable is the table attachments' metadata lives in.
const AttachmentTable = "sys_attachment"

// attachmentChunkSize is chunk_size_bytes as recorded responses show it.
const attachmentChunkSize = "700000"

// AttachmentInfo is one sys_attachment record as a test sees it, with the
// SHA-256 of the bytes the simulator holds (the same as Hash unless
// CorruptAttachment changed the bytes).
type AttachmentInfo struct {
	SysID       string
	Table       string // table_name
	TableSysID  string // table_sys_id
	FileName    string
	ContentType string
	SizeBytes   int64
	Hash        string // the record's hash field (SHA-256 hex), "" without SetAttachmentHashField
	SHA256      string // of the stored bytes
	CreatedOn   string
	CreatedBy   string
	ModCount    int
}

// attachmentState is what the attachment endpoints keep besides the
// sys_attachment rows (under s.mu).
type attachmentState struct {
	data map[string][]byte // sys_id -> file bytes
}

func attachmentSchema() *tableSchema {
	fs := append(sysFields(AttachmentTable),
		&field{name: "table_name", label: "Table name", maxLen: 100},
		&field{name: "table_sys_id", label: "Table sys ID", maxLen: 32},
		&field{name: "file_name", label: "File name", maxLen: 100},
		&field{name: "content_type", label: "Content type", maxLen: 100},
		&field{name: "size_bytes", label: "Size bytes", typ: typeInteger},
		&field{name: "size_compressed", label: "Size compressed", typ: typeInteger},
		&field{name: "compressed", label: "Compressed", typ: typeBoolean},
		&field{name: "average_image_color", label: "Average image color", maxLen: 40},
		&field{name: "image_width", label: "Image width", typ: typeInteger},
		&field{name: "image_height", label: "Image height", typ: typeInteger},
		&field{name: "hash", label: "Hash", maxLen: 64},
		&field{name: "state", label: "State", maxLen: 40},
		&field{name: "chunk_size_bytes", label: "Chunk size bytes", maxLen: 40},
		&field{name: "sys_tags", label: "Tags", maxLen: 40},
	)
	t := newSchema(AttachmentTable, "Attachment", "", "file_name", fs)
	// Written through the Attachment API only; readable through the Table
	// API where the record it belongs to is (rowHiddenLocked).
	t.readOnly = true
	return t
}

// metadataOrder is the order of a metadata object's fields in recorded
// answers (GET /api/now/attachment on a Tokyo-era instance);
// download_link is not a column, and the X-Attachment-Metadata header
// leaves it out.
var metadataOrder = []string{
	"size_bytes", "file_name", "sys_mod_count", "average_image_color", "image_width", "sys_updated_on", "sys_tags",
	"table_name", "sys_id", "image_height", "sys_updated_by", "download_link", "content_type", "sys_created_on",
	"size_compressed", "compressed", "state", "table_sys_id", "chunk_size_bytes", "hash", "sys_created_by",
}

// SetAttachmentMaxSize sets com.glide.attachment.max_size, in bytes (0
// restores the default, DefaultAttachmentMaxSize). Uploads above it are
// refused; attachments added by tests are not checked.
func (s *Server) SetAttachmentMaxSize(n int64) {
	s.knobMu.Lock()
	if n <= 0 {
		n = DefaultAttachmentMaxSize
	}
	s.attMax = n
	s.knobMu.Unlock()
}

// AttachmentMaxSize returns com.glide.attachment.max_size in bytes.
func (s *Server) AttachmentMaxSize() int64 {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return s.attMax
}

// SetAttachmentHashField emulates a release whose sys_attachment has no
// hash field (off): metadata, the X-Attachment-Metadata header and the
// business rule's record leave hash out. On by default.
func (s *Server) SetAttachmentHashField(on bool) {
	s.knobMu.Lock()
	s.attNoHash = !on
	s.knobMu.Unlock()
}

func (s *Server) hashField() bool {
	s.knobMu.Lock()
	defer s.knobMu.Unlock()
	return !s.attNoHash
}

// AddAttachment attaches data to a record as a person (beth.anglin) does in
// the UI: the after-insert business rule on sys_attachment runs. It returns
// the attachment's sys_id. The record need not exist (an attachment whose
// record the API user cannot read is hidden from it).
func (s *Server) AddAttachment(table, sysID, fileName, contentType string, data []byte) string {
	return s.AddAttachmentAs("beth.anglin", table, sysID, fileName, contentType, data)
}

// AddAttachmentAs is AddAttachment as the named user.
func (s *Server) AddAttachmentAs(user, table, sysID, fileName, contentType string, data []byte) string {
	sum := sha256.Sum256(data)
	meta, _ := s.insertAttachment(user, table, sysID, fileName, contentType, bytes.Clone(data), hex.EncodeToString(sum[:]))
	return meta.id
}

// RemoveAttachment deletes an attachment as a person does (the after-delete
// business rule runs). It reports whether the attachment existed.
func (s *Server) RemoveAttachment(sysID string) bool {
	return s.deleteAttachment("beth.anglin", sysID)
}

// Attachments returns a record's attachments, oldest first (no ACL).
func (s *Server) Attachments(table, sysID string) []AttachmentInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tables[AttachmentTable]
	var out []AttachmentInfo
	for _, r := range t.index {
		if t.get("table_name", r) == table && t.get("table_sys_id", r) == sysID {
			out = append(out, s.infoLocked(t, r))
		}
	}
	slices.SortStableFunc(out, func(a, b AttachmentInfo) int { return strings.Compare(a.CreatedOn, b.CreatedOn) })
	return out
}

// Attachment returns one attachment's metadata (no ACL).
func (s *Server) Attachment(sysID string) (AttachmentInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tables[AttachmentTable]
	r := t.rows[sysID]
	if r == nil {
		return AttachmentInfo{}, false
	}
	return s.infoLocked(t, r), true
}

// AttachmentBytes returns a copy of an attachment's bytes.
func (s *Server) AttachmentBytes(sysID string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.att.data[sysID]
	return bytes.Clone(b), ok
}

// CorruptAttachment flips a byte of the stored file (its metadata, hash
// included, stays): for tests of a client's integrity check. It reports
// whether there was a non-empty file to corrupt.
func (s *Server) CorruptAttachment(sysID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.att.data[sysID]
	if len(b) == 0 {
		return false
	}
	c := bytes.Clone(b)
	c[len(c)/2] ^= 0xff
	s.att.data[sysID] = c
	return true
}

func (s *Server) infoLocked(t *table, r *row) AttachmentInfo {
	size, _ := strconv.ParseInt(t.get("size_bytes", r), 10, 64)
	mc, _ := strconv.Atoi(t.get("sys_mod_count", r))
	sum := sha256.Sum256(s.att.data[r.id(t)])
	return AttachmentInfo{
		SysID: r.id(t), Table: t.get("table_name", r), TableSysID: t.get("table_sys_id", r),
		FileName: t.get("file_name", r), ContentType: t.get("content_type", r), SizeBytes: size,
		Hash: t.get("hash", r), SHA256: hex.EncodeToString(sum[:]),
		CreatedOn: t.get("sys_created_on", r), CreatedBy: t.get("sys_created_by", r), ModCount: mc,
	}
}

// insertedAttachment is what an upload answers: the record as first
// written (state pending, sys_mod_count 0), before the instance finishes
// processing it.
type insertedAttachment struct {
	id   string
	vals Record
}

// insertAttachment stores an attachment, runs the after-insert rule, then
// marks it available as the instance does once the file is processed
// (sys_mod_count 1, updated by system; recorded answers show both states).
func (s *Server) insertAttachment(user, table, tableSysID, fileName, contentType string, data []byte, hash string) (insertedAttachment, <-chan struct{}) {
	withHash := s.hashField()
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tables[AttachmentTable]
	now := s.nowStamp()
	r := t.newRow()
	id := s.randHex(32)
	set := func(r *row, n, v string) { r.vals[t.s.idx(n)] = v }
	for n, v := range map[string]string{
		"sys_id": id, "sys_created_on": now, "sys_created_by": user, "sys_updated_on": now, "sys_updated_by": user,
		"sys_mod_count": "0", "table_name": table, "table_sys_id": tableSysID, "file_name": fileName,
		"content_type": contentType, "size_bytes": strconv.Itoa(len(data)), "size_compressed": "", "compressed": "false",
		"state": "pending", "chunk_size_bytes": attachmentChunkSize,
	} {
		set(r, n, v)
	}
	if withHash {
		set(r, "hash", hash)
	}
	t.put(r)
	s.att.data[id] = data
	first := insertedAttachment{id: id, vals: t.toRecord(r)}
	done := s.fireAttachmentLocked(t, r, events.ActionInsert, user)
	avail := r.clone()
	set(avail, "state", "available")
	set(avail, "sys_mod_count", "1")
	set(avail, "sys_updated_by", "system")
	t.put(avail)
	return first, done
}

// deleteAttachment removes an attachment and runs the after-delete rule.
func (s *Server) deleteAttachment(user, sysID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tables[AttachmentTable]
	r := t.remove(sysID)
	if r == nil {
		return false
	}
	delete(s.att.data, sysID)
	s.fireAttachmentLocked(t, r, events.ActionDelete, user)
	return true
}

// removeRecordAttachmentsLocked drops the attachments of a deleted record,
// as the platform does with its sys_attachment rows. No attachment rule
// runs for them here: the record's own delete event tells the bridge.
func (s *Server) removeRecordAttachmentsLocked(table, sysID string) {
	t := s.tables[AttachmentTable]
	if t == nil || len(t.rows) == 0 {
		return
	}
	var ids []string
	for id, r := range t.rows {
		if t.get("table_name", r) == table && t.get("table_sys_id", r) == sysID {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		t.remove(id)
		delete(s.att.data, id)
	}
}

// fireAttachmentLocked runs the business rule "nowbridge webhook
// (attachment)" (servicenow/business_rules/webhook_attachment.js): after
// insert and after delete on sys_attachment, only for attachments of a
// synced table (one WebhookOptions.Fields lists, as nowbridge.tables
// does). The body is the SNEvent NowbridgeWebhook.buildAttachmentEvent
// builds.
func (s *Server) fireAttachmentLocked(t *table, r *row, action, user string) <-chan struct{} {
	d := s.hooks
	d.mu.Lock()
	opts, targets, closed := d.opts, d.targets, d.closed
	d.mu.Unlock()
	if _, synced := opts.Fields[t.get("table_name", r)]; !synced || closed || len(targets) == 0 {
		return closedChan
	}
	rec := events.Fields{}
	for _, f := range AttachmentWebhookFields {
		if f == "hash" && !s.hashField() {
			continue // a release without the field: the script skips it
		}
		rec[f] = t.get(f, r)
	}
	mc, _ := strconv.Atoi(t.get("sys_mod_count", r))
	ev := &events.SNEvent{
		Instance:     s.cfg.InstanceName,
		Table:        AttachmentTable,
		SysID:        r.id(t),
		Action:       action,
		SysModCount:  events.ModCount(mc),
		SysUpdatedOn: t.get("sys_updated_on", r),
		SysUpdatedBy: t.get("sys_updated_by", r),
		Record:       rec,
	}
	return d.enqueue(s, ev, user, opts, targets)
}

// AttachmentWebhookFields are the fields of sys_attachment the attachment
// rule sends in `record` (NowbridgeWebhook.ATTACHMENT_FIELDS): no content.
var AttachmentWebhookFields = []string{"content_type", "file_name", "hash", "size_bytes", "table_name", "table_sys_id"}

// attachmentPath is a parsed Attachment API path.
type attachmentPath struct {
	base  string // "/api/now/attachment" or "/api/now/v1/attachment"
	sysID string // "" for the collection and for /file uploads
	file  bool   // .../file: download (with sysID) or upload (without)
	other string // a sub-resource the simulator does not implement
}

func parseAttachmentPath(p string) (attachmentPath, bool) {
	var out attachmentPath
	rest := ""
	switch {
	case p == "/api/now/attachment" || strings.HasPrefix(p, "/api/now/attachment/"):
		out.base, rest = "/api/now/attachment", strings.TrimPrefix(p, "/api/now/attachment")
	case p == "/api/now/v1/attachment" || strings.HasPrefix(p, "/api/now/v1/attachment/"):
		out.base, rest = "/api/now/v1/attachment", strings.TrimPrefix(p, "/api/now/v1/attachment")
	default:
		return out, false
	}
	rest = strings.Trim(rest, "/")
	parts := strings.Split(rest, "/")
	switch {
	case rest == "":
	case len(parts) == 1 && parts[0] == "file":
		out.file = true
	case len(parts) == 1 && parts[0] == "upload":
		out.other = "upload"
	case len(parts) == 1:
		out.sysID = parts[0]
	case len(parts) == 2 && parts[1] == "file":
		out.sysID, out.file = parts[0], true
	default:
		out.sysID, out.other = parts[0], strings.Join(parts[1:], "/")
	}
	return out, true
}

// handleAttachment serves the Attachment API: auth and rate limits as for
// the Table API (rules name the resource "GET /now/attachment").
func (s *Server) handleAttachment(w http.ResponseWriter, r *http.Request) {
	ap, _ := parseAttachmentPath(r.URL.Path)
	user := s.authenticate(w, r)
	if user == "" {
		return
	}
	if !s.rateLimit(w, r, user, apiPath{base: strings.TrimSuffix(ap.base, "/attachment"), table: "attachment"}) {
		return
	}
	if ap.other != "" {
		s.log.Error("snsim: Attachment API resource not implemented; answering 400 so the test notices", "path", r.URL.Path)
		writeError(w, http.StatusBadRequest, "snsim: Attachment API resource not implemented", ap.other)
		return
	}
	acl := s.currentView()
	switch {
	case r.Method == http.MethodGet && ap.sysID == "" && !ap.file:
		s.listAttachments(w, r, ap, acl)
	case r.Method == http.MethodGet && ap.sysID != "" && !ap.file:
		s.attachmentMeta(w, r, ap, acl)
	case r.Method == http.MethodGet && ap.sysID != "" && ap.file:
		s.downloadAttachment(w, r, ap, acl)
	case r.Method == http.MethodPost && ap.sysID == "" && ap.file:
		s.uploadAttachment(w, r, ap, acl, user)
	case r.Method == http.MethodDelete && ap.sysID != "" && !ap.file:
		s.deleteAttachmentAPI(w, r, ap, acl, user)
	default:
		writeError(w, http.StatusMethodNotAllowed, "Method not Supported", r.Method+" method not supported for API")
	}
}

// attachmentHiddenLocked: an attachment is readable where the record it
// belongs to is; one whose table or record the simulator does not know is
// hidden (the ACL cannot grant what it cannot check).
func (s *Server) attachmentHiddenLocked(t *table, r *row, v view) bool {
	parent := s.tables[t.get("table_name", r)]
	if parent == nil {
		return true
	}
	pr := parent.rows[t.get("table_sys_id", r)]
	if pr == nil {
		return true
	}
	return s.rowHiddenLocked(parent, pr, v)
}

// listAttachments answers GET /api/now/attachment: sysparm_query on
// sys_attachment, sysparm_limit (default 1000), sysparm_offset;
// X-Total-Count and Link as on the Table API; rows the ACL hides are
// dropped after the limit.
func (s *Server) listAttachments(w http.ResponseWriter, r *http.Request, ap attachmentPath, acl view) {
	q := r.URL.Query()
	p := parseParams(q)
	p.limit = 1000
	if n, err := strconv.Atoi(q.Get("sysparm_limit")); err == nil && n > 0 {
		p.limit = n
	}
	query, err := ParseQuery(p.query)
	if err != nil {
		s.log.Error("snsim: unsupported encoded query; answering 400 so the test notices", "table", AttachmentTable, "query", p.query, "err", err)
		s.addQueryProblem(QueryProblem{Kind: "unsupported", Table: AttachmentTable, Query: p.query, Detail: err.Error()})
		writeError(w, http.StatusBadRequest, "snsim: unsupported encoded query syntax", err.Error())
		return
	}
	s.knobMu.Lock()
	noRows := s.noRows
	s.knobMu.Unlock()
	withHash := s.hashField()
	base := baseURL(r)
	s.mu.RLock()
	t := s.tables[AttachmentTable]
	pl := bind(query, t.s, noRows)
	if len(pl.dropped) > 0 {
		s.log.Warn("snsim: attachment query names fields sys_attachment does not have", "query", p.query, "clauses", pl.dropped)
		s.addQueryProblem(QueryProblem{Kind: "dropped", Table: AttachmentTable, Query: p.query, Detail: strings.Join(pl.dropped, ", ")})
	}
	res := t.scan(pl, p.offset, p.limit, !p.noCount)
	body := append(make([]byte, 0, 256+len(res.rows)*700), `{"result":[`...)
	n := 0
	for _, row := range res.rows {
		if s.attachmentHiddenLocked(t, row, acl) {
			continue
		}
		if n > 0 {
			body = append(body, ',')
		}
		body = appendMetadata(body, t.toRecord(row), base+ap.base, withHash, false)
		n++
	}
	s.mu.RUnlock()
	body = append(body, "]}"...)
	if res.total >= 0 {
		w.Header().Set("X-Total-Count", strconv.Itoa(res.total))
	}
	if !p.suppressLnk {
		if l := linkHeader(base+r.URL.Path, q, p, res); l != "" {
			w.Header().Set("Link", l)
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// visibleAttachment returns the attachment's values if the API user may
// read it, else answers 404 and returns nil.
func (s *Server) visibleAttachment(w http.ResponseWriter, sysID string, acl view) (Record, []byte) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tables[AttachmentTable]
	r := t.rows[sysID]
	if r == nil || s.attachmentHiddenLocked(t, r, acl) {
		writeError(w, errNotFound.status, errNotFound.message, errNotFound.detail)
		return nil, nil
	}
	return t.toRecord(r), s.att.data[sysID]
}

// attachmentMeta answers GET /api/now/attachment/{sys_id}.
func (s *Server) attachmentMeta(w http.ResponseWriter, r *http.Request, ap attachmentPath, acl view) {
	rec, _ := s.visibleAttachment(w, ap.sysID, acl)
	if rec == nil {
		return
	}
	body := append([]byte(`{"result":`), nil...)
	body = appendMetadata(body, rec, baseURL(r)+ap.base, s.hashField(), false)
	writeJSON(w, http.StatusOK, append(body, '}'))
}

// downloadAttachment answers GET /api/now/attachment/{sys_id}/file: the
// bytes with the file's content type, X-Attachment-Metadata and
// Content-Disposition as recorded answers carry them. An Accept header
// that admits neither the file's type nor */* is refused with 406.
func (s *Server) downloadAttachment(w http.ResponseWriter, r *http.Request, ap attachmentPath, acl view) {
	rec, data := s.visibleAttachment(w, ap.sysID, acl)
	if rec == nil {
		return
	}
	ct := rec["content_type"]
	if !acceptable(r.Header.Get("Accept"), ct) {
		writeError(w, http.StatusNotAcceptable, "Not Acceptable", "The attachment's content type "+ct+" is not in the request's Accept header")
		return
	}
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(len(data)))
	h.Set("X-Attachment-Metadata", string(appendMetadata(nil, rec, "", s.hashField(), true)))
	h.Set("Content-Disposition", contentDisposition(rec["file_name"]))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(data)
}

// uploadAttachment answers POST /api/now/attachment/file?table_name=&
// table_sys_id=&file_name= with the raw file as the body.
func (s *Server) uploadAttachment(w http.ResponseWriter, r *http.Request, ap attachmentPath, acl view, user string) {
	q := r.URL.Query()
	table, tableSysID, fileName := q.Get("table_name"), q.Get("table_sys_id"), q.Get("file_name")
	var missing []string
	for n, v := range map[string]string{"table_name": table, "table_sys_id": tableSysID, "file_name": fileName} {
		if v == "" {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		writeError(w, http.StatusBadRequest, "Missing required parameter(s)", "Required query parameter(s) missing: "+strings.Join(missing, ", "))
		return
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		writeError(w, http.StatusBadRequest, "Content-Type header is mandatory", "Set Content-Type to the file's content type, e.g. image/jpeg or */*")
		return
	}
	s.mu.RLock()
	parent := s.tables[table]
	var pr *row
	if parent != nil {
		pr = parent.rows[tableSysID]
	}
	hidden := parent == nil || pr == nil || s.rowHiddenLocked(parent, pr, acl)
	s.mu.RUnlock()
	if hidden {
		// Documented: 404 when the record does not exist or the user
		// cannot access it.
		writeError(w, errNotFound.status, errNotFound.message, errNotFound.detail)
		return
	}
	if acl.writeDenied(parent) {
		writeError(w, http.StatusForbidden, "Operation Failed", "ACL Exception Insert Failed due to security constraints")
		return
	}
	limit := s.AttachmentMaxSize()
	if r.ContentLength > limit {
		tooLarge(w, r.ContentLength, limit)
		return
	}
	// One allocation of the announced size (bytes.Buffer.Grow allocates
	// twice under the race detector).
	buf := bytes.NewBuffer(make([]byte, 0, max(r.ContentLength, 0)))
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(buf, h), io.LimitReader(r.Body, limit+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "Exception while reading request", err.Error())
		return
	}
	if n > limit {
		tooLarge(w, -1, limit)
		return
	}
	meta, hook := s.insertAttachment(user, table, tableSysID, fileName, ct, buf.Bytes(), hex.EncodeToString(h.Sum(nil)))
	if s.hooks.beforeResponse() {
		select {
		case <-hook:
		case <-r.Context().Done():
		}
	}
	link := baseURL(r) + ap.base + "/" + meta.id + "/file"
	w.Header().Set("Location", link)
	body := append([]byte(`{"result":`), nil...)
	body = appendMetadata(body, meta.vals, baseURL(r)+ap.base, s.hashField(), false)
	writeJSON(w, http.StatusCreated, append(body, '}'))
}

// tooLarge answers an upload over com.glide.attachment.max_size. The
// wire form of this answer is not documented (see
// docs/servicenow-attachments.md): the simulator uses a status the
// endpoint documents (400) and a message naming the limit.
func tooLarge(w http.ResponseWriter, size, limit int64) {
	what := "The file"
	if size >= 0 {
		what = fmt.Sprintf("The file (%d bytes)", size)
	}
	writeError(w, http.StatusBadRequest, "Failed to create the attachment: maximum file size exceeded",
		fmt.Sprintf("%s exceeds the maximum attachment size of %d bytes (com.glide.attachment.max_size)", what, limit))
}

// deleteAttachmentAPI answers DELETE /api/now/attachment/{sys_id}.
func (s *Server) deleteAttachmentAPI(w http.ResponseWriter, r *http.Request, ap attachmentPath, acl view, user string) {
	s.mu.RLock()
	t := s.tables[AttachmentTable]
	row := t.rows[ap.sysID]
	hidden := row == nil || s.attachmentHiddenLocked(t, row, acl)
	var parent *table
	if !hidden {
		parent = s.tables[t.get("table_name", row)]
	}
	s.mu.RUnlock()
	if hidden {
		writeError(w, errNotFound.status, errNotFound.message, errNotFound.detail)
		return
	}
	if acl.writeDenied(parent) {
		writeError(w, http.StatusForbidden, "Operation Failed", "ACL Exception Delete Failed due to security constraints")
		return
	}
	if !s.deleteAttachment(user, ap.sysID) {
		writeError(w, errNotFound.status, errNotFound.message, errNotFound.detail)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// appendMetadata renders an attachment's metadata in the recorded field
// order, every value a string. header: the X-Attachment-Metadata form
// (`{  "k" : "v",  ...}`, no download_link, non-ASCII as \u escapes so
// the header stays ASCII).
func appendMetadata(b []byte, rec Record, apiBase string, withHash, header bool) []byte {
	b = append(b, '{')
	first := true
	for _, name := range metadataOrder {
		v := rec[name]
		switch name {
		case "download_link":
			if header {
				continue
			}
			v = apiBase + "/" + rec["sys_id"] + "/file"
		case "hash":
			if !withHash {
				continue
			}
		}
		if header {
			if !first {
				b = append(b, ',')
			}
			b = append(b, "  "...)
			b = appendASCIIString(b, name)
			b = append(b, " : "...)
			b = appendASCIIString(b, v)
		} else {
			if !first {
				b = append(b, ',')
			}
			b = jsonw.AppendString(b, name)
			b = append(b, ':')
			b = jsonw.AppendString(b, v)
		}
		first = false
	}
	return append(b, '}')
}

// appendASCIIString is appendString with every non-ASCII character escaped.
func appendASCIIString(b []byte, s string) []byte {
	start := len(b)
	b = jsonw.AppendString(b, s)
	if !hasNonASCII(b[start:]) {
		return b
	}
	esc := make([]byte, 0, len(b)-start+16)
	for _, r := range string(b[start:]) {
		switch {
		case r < 0x80:
			esc = append(esc, byte(r))
		case r > 0xffff:
			r1, r2 := utf16Pair(r)
			esc = fmt.Appendf(esc, `\u%04x\u%04x`, r1, r2)
		default:
			esc = fmt.Appendf(esc, `\u%04x`, r)
		}
	}
	return append(b[:start], esc...)
}

func hasNonASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// contentDisposition is the header recorded downloads carry:
// attachment;filename="name";filename*=UTF-8”name.
func contentDisposition(name string) string {
	plain := strings.Map(func(r rune) rune {
		if r < 0x20 || r >= 0x7f || r == '"' || r == '\\' {
			return '_'
		}
		return r
	}, name)
	return `attachment;filename="` + plain + `";filename*=UTF-8''` + url.PathEscape(name)
}

// acceptable reports whether an Accept header admits contentType (no
// header admits everything).
func acceptable(accept, contentType string) bool {
	if strings.TrimSpace(accept) == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(contentType))
	}
	major, _, _ := strings.Cut(mt, "/")
	for _, part := range strings.Split(accept, ",") {
		rng, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		rng = strings.ToLower(strings.TrimSpace(rng))
		if rng == "*/*" || rng == mt || rng == major+"/*" {
			return true
		}
	}
	return false
}
