package snclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// The Attachment API (/api/now/attachment): list, metadata, download,
// upload and delete, through the same token, pacing, breaker, retries and
// error classification as the Table API. Files are streamed both ways and
// never held whole in memory. Facts and sources: docs/servicenow-attachments.md.

const (
	attachmentPath = "/api/now/attachment"
	// attachmentTable names Attachment API calls in errors and metrics.
	attachmentTable = "sys_attachment"
	// AttachmentMetadataHeader carries a download's metadata as JSON.
	AttachmentMetadataHeader = "X-Attachment-Metadata"
)

// ErrAttachmentTooLarge matches an upload the instance refused for its size
// (com.glide.attachment.max_size, 1024 MB by default). It is permanent: the
// same file is refused until an admin raises the limit.
var ErrAttachmentTooLarge = errors.New("servicenow: attachment larger than the instance allows (com.glide.attachment.max_size)")

// ErrAttachmentMismatch matches a download whose bytes do not match the
// attachment's metadata (size_bytes, or hash where the instance has it):
// the reader returns it instead of io.EOF. Not permanent: a new download
// may succeed.
var ErrAttachmentMismatch = errors.New("servicenow: downloaded attachment does not match its metadata")

// HintAttachmentTooLarge says what to do about ErrAttachmentTooLarge.
const HintAttachmentTooLarge = "the file is larger than the instance's com.glide.attachment.max_size (in MB, default 1024): " +
	"an admin may raise it, or set BRIDGE_ATTACHMENT_MAX_BYTES at or below it so such files are refused before they are sent"

// HintAttachmentRights says what a 403 on an attachment means.
const HintAttachmentRights = "the OAuth application user may add or delete attachments only on records it may read and write " +
	"(role itil for incident); ServiceNow has no single role for attachments"

// Attachment is a sys_attachment record as the Attachment API returns it
// (string-valued fields decoded).
type Attachment struct {
	SysID        string
	FileName     string
	ContentType  string
	TableName    string
	TableSysID   string
	SizeBytes    int64
	Hash         string // the instance's "hash" field (SHA-256 hex) where present, else ""
	CreatedOn    string // sys_created_on
	DownloadLink string
}

// Upload is one file to attach to a record.
type Upload struct {
	Table, SysID, FileName, ContentType string
	Size                                int64 // Content-Length
	// Open is called once per attempt, so a retry re-sends from the
	// start; the client closes what it returns.
	Open func() (io.ReadCloser, error)
}

// DecodeAttachment reads one attachment's metadata: an element of the
// Attachment API's result, or the X-Attachment-Metadata header of a
// download. Values may come as strings (as ServiceNow sends them),
// numbers, null or {"value": ...}. sys_id must be a sys_id and size_bytes a
// non-negative integer; a hash that is not 64 hex characters is taken as
// absent ("").
func DecodeAttachment(b []byte) (Attachment, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Attachment{}, fmt.Errorf("decoding attachment metadata: %w", err)
	}
	if r == nil {
		return Attachment{}, errors.New("decoding attachment metadata: not an object")
	}
	return attachmentOf(r)
}

func attachmentOf(r Record) (Attachment, error) {
	a := Attachment{
		SysID: r.Get("sys_id"), FileName: r.Get("file_name"), ContentType: r.Get("content_type"),
		TableName: r.Get("table_name"), TableSysID: r.Get("table_sys_id"), CreatedOn: r.Get("sys_created_on"),
		DownloadLink: r.Get("download_link"),
	}
	if !sysIDRE.MatchString(a.SysID) {
		return Attachment{}, fmt.Errorf("decoding attachment metadata: sys_id %q is not a sys_id", a.SysID)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(r.Get("size_bytes")), 10, 64)
	if err != nil || n < 0 {
		return Attachment{}, fmt.Errorf("decoding attachment metadata of %s: size_bytes %q is not a size", a.SysID, r.Get("size_bytes"))
	}
	a.SizeBytes = n
	if h := strings.ToLower(strings.TrimSpace(r.Get("hash"))); isSHA256Hex(h) {
		a.Hash = h
	}
	return a, nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ListAttachments returns a record's attachments, oldest first, following
// pages (a page the ACL shortened is not the last).
func (c *Client) ListAttachments(ctx context.Context, table, sysID string) ([]Attachment, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	if err := checkSysID(sysID); err != nil {
		return nil, err
	}
	q := And(Field("table_name").EQ(table), Field("table_sys_id").EQ(sysID)).OrderBy("sys_created_on").OrderBy("sys_id")
	return c.listAttachments(ctx, q, fmt.Sprintf("list attachments of %s/%s", table, sysID))
}

func (c *Client) listAttachments(ctx context.Context, q Query, what string) ([]Attachment, error) {
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", what, ErrInvalidQuery, err)
	}
	var out []Attachment
	offset, limit := 0, c.cfg.PageSize
	for page := 0; ; page++ {
		v := url.Values{"sysparm_query": {q.Encode()}, "sysparm_limit": {strconv.Itoa(limit)}}
		if offset > 0 {
			v.Set("sysparm_offset", strconv.Itoa(offset))
		}
		resp, err := c.do(ctx, &call{method: http.MethodGet, table: attachmentTable, path: attachmentPath, query: v})
		if err != nil {
			if isNoRecordFound(err) {
				return out, nil
			}
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		var env struct {
			Result []json.RawMessage `json:"result"`
		}
		if err := json.Unmarshal(resp.body, &env); err != nil {
			return nil, fmt.Errorf("%s: decoding the answer: %w", what, err)
		}
		for _, raw := range env.Result {
			a, err := DecodeAttachment(raw)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			out = append(out, a)
		}
		next, ok := nextAttachmentPage(resp.header, offset, limit, len(env.Result))
		if !ok {
			return out, nil
		}
		if page > 100000 {
			return nil, fmt.Errorf("%s: more than 100000 pages: the instance's Link headers loop", what)
		}
		offset = next
	}
}

// nextAttachmentPage reads where the next page starts: Link rel="next"
// when the answer has a Link header, else X-Total-Count, else a full page.
func nextAttachmentPage(h http.Header, offset, limit, n int) (int, bool) {
	if lines := h.Values("Link"); len(lines) > 0 {
		l, ok := findLink(ParseLinks(lines...), "next")
		if !ok {
			return 0, false
		}
		off, ok := l.Offset()
		if !ok {
			return 0, false
		}
		return max(off, offset+limit), true
	}
	if v := strings.TrimSpace(h.Get("X-Total-Count")); v != "" {
		if total, err := strconv.Atoi(v); err == nil {
			return offset + limit, offset+limit < total
		}
	}
	return offset + limit, n >= limit
}

// Attachment reads one attachment's metadata. A missing attachment (or one
// the ACL hides) is an error for which errors.Is(err, ErrNotFound).
func (c *Client) Attachment(ctx context.Context, sysID string) (Attachment, error) {
	if err := checkSysID(sysID); err != nil {
		return Attachment{}, err
	}
	resp, err := c.do(ctx, &call{method: http.MethodGet, table: attachmentTable, sysID: sysID, path: attachmentPath + "/" + sysID})
	if err != nil {
		return Attachment{}, fmt.Errorf("attachment %s: %w", sysID, err)
	}
	var env struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(resp.body, &env); err != nil || len(env.Result) == 0 {
		return Attachment{}, fmt.Errorf("attachment %s: decoding the answer: no result object (%v)", sysID, err)
	}
	a, err := DecodeAttachment(env.Result)
	if err != nil {
		return Attachment{}, fmt.Errorf("attachment %s: %w", sysID, err)
	}
	return a, nil
}

// DownloadAttachment streams an attachment's bytes; the caller reads and
// closes the body. The metadata comes from the X-Attachment-Metadata
// header (or, without it, a metadata read). The body checks what it
// delivered: at the end it returns an error matching ErrAttachmentMismatch
// instead of io.EOF when the byte count differs from size_bytes or the
// SHA-256 from the hash field (where the instance has one). A connection
// lost mid-body is a read error (not retried here: the caller restarts the
// download). Pacing, the breaker and retries apply until the answer's
// headers arrive; the caller's ctx bounds the body.
func (c *Client) DownloadAttachment(ctx context.Context, sysID string) (io.ReadCloser, Attachment, error) {
	if err := checkSysID(sysID); err != nil {
		return nil, Attachment{}, err
	}
	resp, err := c.do(ctx, &call{method: http.MethodGet, table: attachmentTable, sysID: sysID,
		path: attachmentPath + "/" + sysID + "/file", accept: "*/*", stream: true})
	if err != nil {
		return nil, Attachment{}, fmt.Errorf("download attachment %s: %w", sysID, err)
	}
	meta, merr := DecodeAttachment([]byte(resp.header.Get(AttachmentMetadataHeader)))
	if merr != nil || meta.SysID != sysID {
		c.log.DebugContext(ctx, "servicenow download without usable X-Attachment-Metadata; reading the metadata", "sys_id", sysID, "err", merr)
		if meta, err = c.Attachment(ctx, sysID); err != nil {
			_ = resp.stream.Close()
			return nil, Attachment{}, fmt.Errorf("download attachment %s: %w", sysID, err)
		}
	}
	if meta.ContentType == "" {
		meta.ContentType = resp.header.Get("Content-Type")
	}
	return &verifiedBody{rc: resp.stream, sysID: sysID, want: meta.SizeBytes, hash: meta.Hash, sum: sha256.New()}, meta, nil
}

// verifiedBody passes a download through and checks it at the end.
type verifiedBody struct {
	rc    io.ReadCloser
	sysID string
	want  int64
	hash  string
	sum   hash.Hash
	n     int64
	err   error
}

func (b *verifiedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	b.sum.Write(p[:n])
	switch {
	case err == io.EOF:
		if b.n != b.want {
			b.err = fmt.Errorf("download attachment %s: %w: %d bytes received, size_bytes says %d", b.sysID, ErrAttachmentMismatch, b.n, b.want)
		} else if got := hex.EncodeToString(b.sum.Sum(nil)); b.hash != "" && got != b.hash {
			b.err = fmt.Errorf("download attachment %s: %w: SHA-256 %s, the hash field says %s", b.sysID, ErrAttachmentMismatch, got, b.hash)
		} else {
			b.err = io.EOF
		}
		return n, b.err
	case err != nil:
		b.err = fmt.Errorf("download attachment %s: reading the file after %d bytes: %w", b.sysID, b.n, err)
		return n, b.err
	case b.n > b.want:
		b.err = fmt.Errorf("download attachment %s: %w: more than size_bytes (%d) received", b.sysID, ErrAttachmentMismatch, b.want)
		return n, b.err
	}
	return n, nil
}

func (b *verifiedBody) Close() error { return b.rc.Close() }

// UploadAttachment attaches a file to a record (POST
// /api/now/attachment/file), the body streamed with Content-Length Size and
// Content-Type ContentType, and returns the attachment the instance stored.
// Up.Open is called once per attempt. A 429, a refused token and a failure
// before the request was sent are retried like any call. A 5xx or a
// connection lost after sending may have stored the file: the client then
// looks for it on the record (same name, size and SHA-256, created since the
// upload began) and only sends again when it is not there. A size the
// instance refuses is ErrAttachmentTooLarge (permanent).
func (c *Client) UploadAttachment(ctx context.Context, up Upload) (Attachment, error) {
	what := fmt.Sprintf("upload %q to %s/%s", up.FileName, up.Table, up.SysID)
	if err := checkTable(up.Table); err != nil {
		return Attachment{}, fmt.Errorf("%s: %w", what, err)
	}
	if err := checkSysID(up.SysID); err != nil {
		return Attachment{}, fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case up.FileName == "":
		return Attachment{}, fmt.Errorf("%s: %w: no file name", what, ErrInvalidQuery)
	case up.Open == nil:
		return Attachment{}, fmt.Errorf("%s: no Open function for the file's bytes", what)
	case up.Size < 0:
		return Attachment{}, fmt.Errorf("%s: negative size %d", what, up.Size)
	}
	ct := up.ContentType
	if ct == "" {
		ct = "application/octet-stream" // the header is mandatory
	}
	started := time.Now().UTC()
	var sent string // SHA-256 of the last body sent whole
	open := func() (io.ReadCloser, error) {
		rc, err := up.Open()
		if err != nil {
			return nil, err
		}
		return &hashingBody{rc: rc, size: up.Size, sum: sha256.New(), done: func(h string) { sent = h }}, nil
	}
	q := url.Values{"table_name": {up.Table}, "table_sys_id": {up.SysID}, "file_name": {up.FileName}}
	cl := &call{method: http.MethodPost, table: attachmentTable, path: attachmentPath + "/file", query: q,
		open: open, size: up.Size, contentType: ct}
	op := func() (Attachment, error) {
		resp, err := c.do(ctx, cl)
		if err == nil {
			return c.uploaded(ctx, resp, up, sent)
		}
		if tooLarge(err) {
			return Attachment{}, backoff.Permanent(tooLargeError(err))
		}
		if !maybeStored(err) || ctx.Err() != nil {
			return Attachment{}, backoff.Permanent(err)
		}
		// The request reached the instance and the answer was lost or a
		// failure: the file may be there already.
		if a, found, ferr := c.findUploaded(ctx, up, sent, started); ferr == nil && found {
			c.log.InfoContext(ctx, "servicenow upload failed after sending, but the attachment was stored; not sending again",
				"table", up.Table, "sys_id", up.SysID, "attachment", a.SysID, "err", err)
			return a, nil
		} else if ferr != nil {
			c.log.WarnContext(ctx, "servicenow upload: could not check whether a failed upload was stored", "table", up.Table, "sys_id", up.SysID, "err", ferr)
			return Attachment{}, backoff.Permanent(err)
		}
		return Attachment{}, err
	}
	a, err := backoff.Retry(ctx, op,
		backoff.WithBackOff(newFullJitter(c.cfg.RetryInitial, c.cfg.RetryMax)),
		backoff.WithMaxElapsedTime(c.cfg.RetryMaxElapsed),
		backoff.WithNotify(func(err error, wait time.Duration) {
			c.m.retries.WithLabelValues(attachmentTable, http.MethodPost, "not_stored").Inc()
			c.log.DebugContext(ctx, "servicenow upload retry: the failed attempt did not store the file", "table", up.Table, "sys_id", up.SysID, "wait", wait, "err", err)
		}))
	if err != nil {
		return Attachment{}, fmt.Errorf("%s: %w", what, err)
	}
	return a, nil
}

// uploaded decodes a 201 and checks the stored size and hash against what
// was sent.
func (c *Client) uploaded(ctx context.Context, resp *response, up Upload, sent string) (Attachment, error) {
	var env struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(resp.body, &env); err != nil || len(env.Result) == 0 {
		return Attachment{}, backoff.Permanent(fmt.Errorf("decoding the answer: no result object (%v)", err))
	}
	a, err := DecodeAttachment(env.Result)
	if err != nil {
		return Attachment{}, backoff.Permanent(err)
	}
	if a.SizeBytes != up.Size || (a.Hash != "" && sent != "" && a.Hash != sent) {
		c.log.WarnContext(ctx, "servicenow stored an attachment that differs from the file sent", "attachment", a.SysID,
			"size_sent", up.Size, "size_stored", a.SizeBytes, "sha256_sent", sent, "hash_stored", a.Hash)
	}
	return a, nil
}

// findUploaded looks for the attachment a failed upload may have stored.
func (c *Client) findUploaded(ctx context.Context, up Upload, sent string, since time.Time) (Attachment, bool, error) {
	q := And(Field("table_name").EQ(up.Table), Field("table_sys_id").EQ(up.SysID), Field("file_name").EQ(up.FileName),
		Field("sys_created_on").GTE(since.Add(-time.Second).Format(timeLayout))).OrderBy("sys_created_on")
	list, err := c.listAttachments(ctx, q, "look for a stored upload")
	if err != nil {
		return Attachment{}, false, err
	}
	for _, a := range list {
		if a.SizeBytes == up.Size && (a.Hash == "" || sent == "" || a.Hash == sent) {
			return a, true, nil
		}
	}
	return Attachment{}, false, nil
}

// timeLayout is sys_created_on's form (UTC).
const timeLayout = "2006-01-02 15:04:05"

// hashingBody hashes an upload's bytes as the transport reads them.
type hashingBody struct {
	rc   io.ReadCloser
	size int64
	n    int64
	sum  hash.Hash
	done func(string)
}

func (b *hashingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	b.sum.Write(p[:n])
	if err == io.EOF && b.n == b.size {
		b.done(hex.EncodeToString(b.sum.Sum(nil)))
	}
	return n, err
}

func (b *hashingBody) Close() error { return b.rc.Close() }

// maybeStored reports a failure after which an upload may have been
// stored: a 5xx, or a connection lost once the request was sent.
func maybeStored(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500
	}
	var te *transportError
	return errors.As(err, &te) && te.sent
}

// tooLarge recognises the instance refusing a file's size: 413, or a 400
// or 403 whose message speaks of the size limit (the wire form is not
// documented; see docs/servicenow-attachments.md).
func tooLarge(err error) bool {
	var ae *APIError
	if !errors.As(err, &ae) {
		return false
	}
	if ae.Status == http.StatusRequestEntityTooLarge {
		return true
	}
	if ae.Status != http.StatusBadRequest && ae.Status != http.StatusForbidden {
		return false
	}
	low := strings.ToLower(ae.Message + " " + ae.Detail)
	for _, s := range []string{"max_size", "maximum file size", "maximum attachment size", "too large", "exceeds the maximum", "size limit"} {
		if strings.Contains(low, s) {
			return true
		}
	}
	return false
}

func tooLargeError(err error) error {
	var ae *APIError
	if errors.As(err, &ae) {
		ae.Hint = HintAttachmentTooLarge
	}
	return fmt.Errorf("%w: %w", ErrAttachmentTooLarge, err)
}

// DeleteAttachment deletes an attachment. One already gone is not an error.
func (c *Client) DeleteAttachment(ctx context.Context, sysID string) error {
	if err := checkSysID(sysID); err != nil {
		return err
	}
	_, err := c.do(ctx, &call{method: http.MethodDelete, table: attachmentTable, sysID: sysID, path: attachmentPath + "/" + sysID})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("delete attachment %s: %w", sysID, err)
	}
	return nil
}
