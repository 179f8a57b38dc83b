package snsim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// upload posts data to the Attachment API as the integration user.
func (h *harness) upload(table, sysID, name, contentType string, data io.Reader, size int64) response {
	h.t.Helper()
	q := url.Values{"table_name": {table}, "table_sys_id": {sysID}, "file_name": {name}}
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/api/now/attachment/file?"+q.Encode(), data)
	if err != nil {
		h.t.Fatal(err)
	}
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+h.tok)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return h.send(req)
}

func (h *harness) send(req *http.Request) response {
	h.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) download(id, accept string) response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.srv.URL+"/api/now/attachment/"+id+"/file", nil)
	req.Header.Set("Authorization", "Bearer "+h.tok)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	return h.send(req)
}

func incidentID(t *testing.T, s *Server) string {
	t.Helper()
	rec, err := s.Insert("incident", map[string]string{"short_description": "printer on fire"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	return rec["sys_id"]
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// Every metadata value is a string, in the {"result": ...} envelope, with
// the fields recorded answers carry; an upload answers 201 with Location and
// the record as first written (pending, sys_mod_count 0); later reads show
// it processed (available, 1, updated by system).
func TestAttachmentAPI_UploadListMetadataDownloadAsThePlatformAnswers(t *testing.T) {
	h := newHarness(t, Config{Now: func() time.Time { return fixedNow }})
	inc := incidentID(t, h.sim)
	data := bytes.Repeat([]byte("screenshot-bytes "), 1000)
	r := h.upload("incident", inc, "screen shot.png", "image/png", bytes.NewReader(data), int64(len(data)))
	if r.status != http.StatusCreated {
		t.Fatalf("upload: %d %s, want 201", r.status, r.body)
	}
	res := r.result(t)
	id, _ := res["sys_id"].(string)
	wantFields := []string{"size_bytes", "file_name", "sys_mod_count", "average_image_color", "image_width", "sys_updated_on", "sys_tags",
		"table_name", "sys_id", "image_height", "sys_updated_by", "download_link", "content_type", "sys_created_on",
		"size_compressed", "compressed", "state", "table_sys_id", "chunk_size_bytes", "hash", "sys_created_by"}
	for _, f := range wantFields {
		if _, ok := res[f].(string); !ok {
			t.Errorf("upload answer: field %s is %T (%v), want a string", f, res[f], res[f])
		}
	}
	if len(res) != len(wantFields) {
		t.Errorf("upload answer has %d fields, want %d: %v", len(res), len(wantFields), res)
	}
	wantLink := h.srv.URL + "/api/now/attachment/" + id + "/file"
	if res["state"] != "pending" || res["sys_mod_count"] != "0" || res["size_bytes"] != fmt.Sprint(len(data)) ||
		res["hash"] != sha(data) || res["table_name"] != "incident" || res["table_sys_id"] != inc ||
		res["file_name"] != "screen shot.png" || res["content_type"] != "image/png" || res["sys_created_by"] != DefaultAppUser ||
		res["download_link"] != wantLink || res["sys_created_on"] != "2026-11-28 10:00:00" {
		t.Errorf("upload answer = %v", res)
	}
	if loc := r.header.Get("Location"); loc != wantLink {
		t.Errorf("Location = %q, want %q", loc, wantLink)
	}

	m := h.get("/api/now/attachment/"+id, nil)
	if m.status != 200 {
		t.Fatalf("metadata: %d %s", m.status, m.body)
	}
	if meta := m.result(t); meta["state"] != "available" || meta["sys_mod_count"] != "1" || meta["sys_updated_by"] != "system" {
		t.Errorf("metadata after processing = %v, want state available, sys_mod_count 1, updated by system", meta)
	}

	l := h.get("/api/now/attachment", url.Values{"sysparm_query": {"table_name=incident^table_sys_id=" + inc}})
	if rows := l.results(t); l.status != 200 || len(rows) != 1 || rows[0]["sys_id"] != id || l.header.Get("X-Total-Count") != "1" {
		t.Errorf("list: %d X-Total-Count %q rows %v", l.status, l.header.Get("X-Total-Count"), rows)
	}
	if other := h.get("/api/now/attachment", url.Values{"sysparm_query": {"table_sys_id=" + strings.Repeat("0", 32)}}); len(other.results(t)) != 0 {
		t.Errorf("a query for another record listed %s", other.body)
	}

	d := h.download(id, "*/*")
	if d.status != 200 || !bytes.Equal(d.body, data) {
		t.Fatalf("download: %d, %d bytes equal=%v", d.status, len(d.body), bytes.Equal(d.body, data))
	}
	if ct := d.header.Get("Content-Type"); ct != "image/png" {
		t.Errorf("download Content-Type = %q, want the file's image/png", ct)
	}
	if cd := d.header.Get("Content-Disposition"); cd != `attachment;filename="screen shot.png";filename*=UTF-8''screen%20shot.png` {
		t.Errorf("Content-Disposition = %q", cd)
	}
	var hm map[string]any
	if err := json.Unmarshal([]byte(d.header.Get("X-Attachment-Metadata")), &hm); err != nil {
		t.Fatalf("X-Attachment-Metadata is not JSON: %v: %q", err, d.header.Get("X-Attachment-Metadata"))
	}
	if hm["sys_id"] != id || hm["hash"] != sha(data) || hm["size_bytes"] != fmt.Sprint(len(data)) || hm["download_link"] != nil {
		t.Errorf("X-Attachment-Metadata = %v (no download_link, as recorded)", hm)
	}
	if got := h.download(id, "application/json"); got.status != http.StatusNotAcceptable {
		t.Errorf("download accepting only JSON of a PNG: %d, want 406", got.status)
	}
	if got := h.download(id, "image/*"); got.status != 200 {
		t.Errorf("download accepting image/*: %d, want 200", got.status)
	}

	if del := h.do(http.MethodDelete, "/api/now/attachment/"+id, ""); del.status != http.StatusNoContent {
		t.Errorf("delete: %d %s, want 204", del.status, del.body)
	}
	if again := h.do(http.MethodDelete, "/api/now/attachment/"+id, ""); again.status != http.StatusNotFound {
		t.Errorf("second delete: %d, want 404", again.status)
	}
	if gone := h.get("/api/now/attachment/"+id, nil); gone.status != http.StatusNotFound {
		t.Errorf("metadata of a deleted attachment: %d, want 404", gone.status)
	}
	if n := h.sim.RequestCount(http.MethodGet, "/api/now/attachment/{sys_id}/file", 200); n != 2 {
		t.Errorf("request counter for downloads = %d, want 2 (paths normalised)", n)
	}
}

func TestAttachmentAPI_UploadMissingParametersOrContentTypeIs400(t *testing.T) {
	h := newHarness(t, Config{})
	inc := incidentID(t, h.sim)
	if r := h.upload("incident", inc, "", "text/plain", strings.NewReader("x"), 1); r.status != 400 || !strings.Contains(string(r.body), "file_name") {
		t.Errorf("no file_name: %d %s, want 400 naming file_name", r.status, r.body)
	}
	if r := h.upload("incident", inc, "a.txt", "", strings.NewReader("x"), 1); r.status != 400 {
		t.Errorf("no Content-Type: %d %s, want 400", r.status, r.body)
	}
	if r := h.upload("incident", strings.Repeat("a", 32), "a.txt", "text/plain", strings.NewReader("x"), 1); r.status != 404 {
		t.Errorf("record that does not exist: %d %s, want 404", r.status, r.body)
	}
	if n := len(h.sim.Attachments("incident", inc)); n != 0 {
		t.Errorf("%d attachments stored by refused uploads", n)
	}
}

func TestAttachmentAPI_OverMaxSizeRefusedWithoutStoring(t *testing.T) {
	h := newHarness(t, Config{})
	inc := incidentID(t, h.sim)
	if got := h.sim.AttachmentMaxSize(); got != 1024<<20 {
		t.Errorf("default com.glide.attachment.max_size = %d, want 1024 MB", got)
	}
	h.sim.SetAttachmentMaxSize(100)
	for _, chunked := range []bool{false, true} {
		size := int64(101)
		var body io.Reader = bytes.NewReader(make([]byte, 101))
		if chunked {
			size = -1 // unknown length: the limit is found while reading
			body = io.MultiReader(bytes.NewReader(make([]byte, 60)), bytes.NewReader(make([]byte, 41)))
		}
		r := h.upload("incident", inc, "big.bin", "application/octet-stream", body, size)
		var env struct {
			Error  struct{ Message, Detail string } `json:"error"`
			Status string                           `json:"status"`
		}
		_ = json.Unmarshal(r.body, &env)
		if r.status != 400 || env.Status != "failure" || !strings.Contains(env.Error.Detail, "com.glide.attachment.max_size") ||
			!strings.Contains(env.Error.Message, "maximum file size") {
			t.Errorf("chunked=%v: %d %s, want 400 naming the limit", chunked, r.status, r.body)
		}
	}
	if r := h.upload("incident", inc, "ok.bin", "application/octet-stream", bytes.NewReader(make([]byte, 100)), 100); r.status != 201 {
		t.Errorf("a file at the limit: %d %s, want 201", r.status, r.body)
	}
	if n := len(h.sim.Attachments("incident", inc)); n != 1 {
		t.Errorf("%d attachments stored, want only the one at the limit", n)
	}
}

// The integration user acts on attachments of records it may read (list,
// metadata, download) and write (upload, delete), as the documented role
// requirement says; anything else is hidden (404) or refused (403).
func TestAttachmentAPI_LeastPrivilegeFollowsTheRecord(t *testing.T) {
	h := newHarness(t, Config{})
	inc := incidentID(t, h.sim)
	id := h.sim.AddAttachment("incident", inc, "log.txt", "text/plain", []byte("boom"))
	hr, err := h.sim.Insert("sn_hr_core_case", map[string]string{"short_description": "payroll"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	hrAtt := h.sim.AddAttachment("sn_hr_core_case", hr["sys_id"], "contract.pdf", "application/pdf", []byte("%PDF"))
	orphan := h.sim.AddAttachment("incident", strings.Repeat("b", 32), "orphan.txt", "text/plain", []byte("?"))

	// Without an HR role, HR cases' attachments are hidden: the list
	// counts them but does not return them; reads 404.
	l := h.get("/api/now/attachment", nil)
	var ids []string
	for _, r := range l.results(t) {
		ids = append(ids, r["sys_id"].(string))
	}
	if !slices.Contains(ids, id) || slices.Contains(ids, hrAtt) || slices.Contains(ids, orphan) || l.header.Get("X-Total-Count") != "3" {
		t.Errorf("list as least privilege: %v (X-Total-Count %s), want only the incident's attachment, 3 counted", ids, l.header.Get("X-Total-Count"))
	}
	for _, hidden := range []string{hrAtt, orphan} {
		if r := h.get("/api/now/attachment/"+hidden, nil); r.status != 404 {
			t.Errorf("metadata of a hidden attachment: %d, want 404", r.status)
		}
		if r := h.download(hidden, "*/*"); r.status != 404 {
			t.Errorf("download of a hidden attachment: %d, want 404", r.status)
		}
	}
	if r := h.upload("sn_hr_core_case", hr["sys_id"], "x.txt", "text/plain", strings.NewReader("x"), 1); r.status != 404 {
		t.Errorf("upload to an HR case without a role: %d, want 404", r.status)
	}
	// A reader role reads but may not add or delete.
	if err := h.sim.SetGrants(Grants{HRRole: RoleHRCaseReader}); err != nil {
		t.Fatal(err)
	}
	if r := h.download(hrAtt, "*/*"); r.status != 200 || string(r.body) != "%PDF" {
		t.Errorf("download with case_reader: %d %q", r.status, r.body)
	}
	if r := h.upload("sn_hr_core_case", hr["sys_id"], "x.txt", "text/plain", strings.NewReader("x"), 1); r.status != 403 {
		t.Errorf("upload with case_reader: %d %s, want 403", r.status, r.body)
	}
	if r := h.do(http.MethodDelete, "/api/now/attachment/"+hrAtt, ""); r.status != 403 {
		t.Errorf("delete with case_reader: %d, want 403", r.status)
	}
	// DenyWrites: reads work, writes 403; NoRoles: incident's hidden too.
	h.sim.SetACL(ACL{DenyWrites: true})
	if r := h.upload("incident", inc, "x.txt", "text/plain", strings.NewReader("x"), 1); r.status != 403 {
		t.Errorf("upload with DenyWrites: %d, want 403", r.status)
	}
	if r := h.get("/api/now/attachment/"+id, nil); r.status != 200 {
		t.Errorf("metadata with DenyWrites: %d, want 200", r.status)
	}
	h.sim.SetACL(ACL{NoRoles: true})
	if r := h.get("/api/now/attachment/"+id, nil); r.status != 404 {
		t.Errorf("metadata without itil: %d, want 404", r.status)
	}
	// The Table API shows sys_attachment rows by the same rule.
	h.sim.SetACL(ACL{})
	if r := h.get("/api/now/table/sys_attachment/"+id, nil); r.status != 200 || r.result(t)["file_name"] != "log.txt" {
		t.Errorf("Table API read of sys_attachment: %d %s", r.status, r.body)
	}
	if r := h.get("/api/now/table/sys_attachment/"+orphan, nil); r.status != 404 {
		t.Errorf("Table API read of an orphan attachment: %d, want 404", r.status)
	}
}

func TestAttachmentAPI_RateLimitAndAuthAsForTables(t *testing.T) {
	h := newHarness(t, Config{})
	inc := incidentID(t, h.sim)
	id := h.sim.AddAttachment("incident", inc, "a.txt", "text/plain", []byte("a"))
	if err := h.sim.SetRateLimitRules([]RateLimitRule{{SysID: "rl1", Resource: "GET /now/attachment", Count: 2}}); err != nil {
		t.Fatal(err)
	}
	first := h.get("/api/now/attachment/"+id, nil)
	if first.status != 200 || first.header.Get("X-RateLimit-Rule") != "rl1" || first.header.Get("X-RateLimit-Limit") != "2" {
		t.Errorf("first read: %d, rate headers %v", first.status, first.header)
	}
	h.download(id, "*/*")
	third := h.get("/api/now/attachment", nil)
	if third.status != 429 || third.header.Get("Retry-After") == "" || !strings.Contains(string(third.body), "Rate limit exceeded") {
		t.Errorf("third GET under a 2-request rule: %d %v %s, want 429 with Retry-After", third.status, third.header, third.body)
	}
	if r := h.do(http.MethodDelete, "/api/now/attachment/"+id, ""); r.status != 204 {
		t.Errorf("DELETE is another resource than the rule's GET: %d", r.status)
	}
	h.tok = "not-a-token"
	r := h.get("/api/now/attachment/"+id, nil)
	if r.status != 401 || r.header.Get("WWW-Authenticate") != `BASIC realm="Service-now"` || !strings.Contains(string(r.body), "User Not Authenticated") {
		t.Errorf("bad token: %d %v %s, want the Table API's 401", r.status, r.header, r.body)
	}
}

// attachmentReceiver records attachment webhooks, verifying signatures and
// validating bodies as SNEvents with sys_attachment among the tables.
type attachmentReceiver struct {
	srv    *httptest.Server
	secret webhook.Secret
	mu     sync.Mutex
	got    []events.SNEvent
	ids    []string
}

func newAttachmentReceiver(t *testing.T) *attachmentReceiver {
	sec, err := webhook.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	rc := &attachmentReceiver{secret: sec}
	ver := &webhook.Verifier{Secrets: []webhook.Secret{sec}}
	val := events.NewValidator(append(TicketTables(), AttachmentTable))
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get(webhook.HeaderID)
		if err := ver.Verify(id, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body); err != nil {
			t.Errorf("webhook %s: signature does not verify: %v", id, err)
			w.WriteHeader(401)
			return
		}
		evs, err := val.DecodeBody(body)
		if err != nil {
			t.Errorf("webhook %s: body is not a valid SNEvent: %v\n%s", id, err, body)
			w.WriteHeader(422)
			return
		}
		rc.mu.Lock()
		rc.got = append(rc.got, evs...)
		rc.ids = append(rc.ids, id)
		rc.mu.Unlock()
		w.WriteHeader(202)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *attachmentReceiver) events() ([]events.SNEvent, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got), slices.Clone(rc.ids)
}

// The business rule on sys_attachment sends insert and delete of
// attachments of synced tables, with the documented fields and no content;
// attachments of other tables send nothing; the skip user's are skipped.
func TestAttachmentRule_SendsInsertAndDeleteOfSyncedTablesOnly(t *testing.T) {
	rc := newAttachmentReceiver(t)
	h := newHarness(t, Config{Now: func() time.Time { return fixedNow }, InstanceName: "dev12345",
		Webhooks:       []WebhookTarget{{URL: rc.srv.URL, Secrets: []webhook.Secret{rc.secret}}},
		WebhookOptions: WebhookOptions{Fields: map[string][]string{"incident": DefaultWebhookFields["incident"]}}})
	inc := incidentID(t, h.sim)
	wait(t, h.sim)
	before, _ := rc.events()
	data := []byte("hello attachment")
	id := h.sim.AddAttachment("incident", inc, "hello.txt", "text/plain", data)
	prb, err := h.sim.Insert("problem", map[string]string{"short_description": "root cause"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	h.sim.AddAttachment("problem", prb["sys_id"], "not-synced.txt", "text/plain", []byte("x"))
	if !h.sim.RemoveAttachment(id) {
		t.Fatal("RemoveAttachment: the attachment was not there")
	}
	wait(t, h.sim)
	all, ids := rc.events()
	evs := all[len(before):]
	ids = ids[len(before):]
	if len(evs) != 2 {
		t.Fatalf("got %d attachment webhooks (%v), want insert and delete of the incident's attachment only", len(evs), ids)
	}
	ins, del := evs[0], evs[1]
	want := events.Fields{"content_type": "text/plain", "file_name": "hello.txt", "hash": sha(data), "size_bytes": "16",
		"table_name": "incident", "table_sys_id": inc}
	if ins.Table != AttachmentTable || ins.SysID != id || ins.Action != "insert" || ins.SysModCount != 0 ||
		ins.SysUpdatedOn != "2026-11-28 10:00:00" || ins.Instance != "dev12345" || fmt.Sprint(ins.Record) != fmt.Sprint(want) || len(ins.Changed) != 0 {
		t.Errorf("insert event = %+v, want record %v", ins, want)
	}
	if del.Action != "delete" || del.SysID != id || del.SysModCount != 1 || fmt.Sprint(del.Record) != fmt.Sprint(want) {
		t.Errorf("delete event = %+v", del)
	}
	if ids[0] != events.MsgID(AttachmentTable, id, 0, "insert") || ids[1] != events.MsgID(AttachmentTable, id, 1, "delete") {
		t.Errorf("webhook ids %v", ids)
	}

	// A release without the hash field sends no hash; the skip user's
	// attachments send nothing.
	h.sim.SetAttachmentHashField(false)
	h.sim.AddAttachment("incident", inc, "nohash.txt", "text/plain", []byte("y"))
	if err := h.sim.SetWebhookOptions(WebhookOptions{SkipUser: DefaultAppUser, Fields: map[string][]string{"incident": nil}}); err != nil {
		t.Fatal(err)
	}
	if r := h.upload("incident", inc, "by-bridge.txt", "text/plain", strings.NewReader("z"), 1); r.status != 201 {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	wait(t, h.sim)
	all, _ = rc.events()
	last := all[len(all)-1]
	if len(all) != len(before)+3 || last.Record["file_name"] != "nohash.txt" {
		t.Fatalf("after a hashless add and the skip user's upload: %d events, last %+v; want one more (the hashless add)", len(all)-len(before), last)
	}
	if _, has := last.Record["hash"]; has {
		t.Errorf("an instance without the hash field sent hash: %v", last.Record)
	}
}

// Deleting a record drops its attachments (no attachment webhook: the
// record's own delete tells the bridge).
func TestAttachment_RecordDeleteDropsItsAttachments(t *testing.T) {
	h := newHarness(t, Config{})
	inc := incidentID(t, h.sim)
	id := h.sim.AddAttachment("incident", inc, "a.txt", "text/plain", []byte("a"))
	if err := h.sim.Delete("incident", inc, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.sim.AttachmentBytes(id); ok {
		t.Error("the attachment's bytes outlived its record")
	}
	if n := len(h.sim.Attachments("incident", inc)); n != 0 {
		t.Errorf("%d attachments outlived their record", n)
	}
}

func TestAttachment_CorruptChangesBytesNotMetadata(t *testing.T) {
	h := newHarness(t, Config{})
	inc := incidentID(t, h.sim)
	data := []byte("0123456789")
	id := h.sim.AddAttachment("incident", inc, "a.txt", "text/plain", data)
	if !h.sim.CorruptAttachment(id) {
		t.Fatal("CorruptAttachment found nothing to corrupt")
	}
	info, _ := h.sim.Attachment(id)
	if info.Hash != sha(data) || info.SHA256 == sha(data) {
		t.Errorf("after corruption: hash %s (want the original %s), bytes' SHA-256 %s (want different)", info.Hash, sha(data), info.SHA256)
	}
}
