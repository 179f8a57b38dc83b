package snclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

// faultFunc decides, per request, to answer it with status instead of the
// simulator (before: the simulator never sees it) or to let the simulator
// handle it and replace its answer (after: the work is done, the answer
// lost). 0 passes the request through.
type faultFunc func(r *http.Request) (status int, after bool)

// newAttachmentSim starts the simulator behind an optional fault injector
// and returns it, a client for it and the id of an incident.
func newAttachmentSim(tb testing.TB, fault faultFunc) (*snsim.Server, *Client, string) {
	tb.Helper()
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "sim-secret-value", Seed: 42})
	tb.Cleanup(sim.Close)
	var h http.Handler = sim
	if fault != nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			status, after := fault(r)
			switch {
			case status == 0:
				sim.ServeHTTP(w, r)
				return
			case after:
				sim.ServeHTTP(httptest.NewRecorder(), r)
			default:
				_, _ = io.Copy(io.Discard, r.Body)
			}
			if status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, `{"error":{"message":"injected","detail":"fault injected by the test"},"status":"failure"}`)
		})
	}
	hs := httptest.NewServer(h)
	tb.Cleanup(hs.Close)
	c, err := New(Config{
		InstanceURL: hs.URL, ClientID: "bridge", ClientSecret: "sim-secret-value",
		RetryInitial: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond, RetryMaxElapsed: 10 * time.Second,
		RequestTimeout: 10 * time.Second, BreakerOpenFor: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	rec, err := sim.Insert("incident", map[string]string{"short_description": "attachments"}, "beth.anglin")
	if err != nil {
		tb.Fatal(err)
	}
	return sim, c, rec["sys_id"]
}

// genFile is a reproducible pseudo-random file of size bytes that is never
// held in memory: every Open starts it again.
type genFile struct {
	seed  uint64
	size  int64
	opens atomic.Int32
}

func (g *genFile) Open() (io.ReadCloser, error) {
	g.opens.Add(1)
	var s [32]byte
	s[0] = byte(g.seed)
	return io.NopCloser(io.LimitReader(rand.NewChaCha8(s), g.size)), nil
}

func (g *genFile) sha256() string {
	rc, _ := g.Open()
	g.opens.Add(-1)
	h := sha256.New()
	_, _ = io.Copy(h, rc)
	return hex.EncodeToString(h.Sum(nil))
}

func shaOf(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

func TestAttachment_RoundTripOfSeveralMBWithSHA256Checked(t *testing.T) {
	sim, c, inc := newAttachmentSim(t, nil)
	ctx := t.Context()
	f := &genFile{seed: 7, size: 6<<20 + 123}
	want := f.sha256()
	a, err := c.UploadAttachment(ctx, Upload{Table: "incident", SysID: inc, FileName: "trace.log", ContentType: "text/plain", Size: f.size, Open: f.Open})
	if err != nil {
		t.Fatal(err)
	}
	if a.TableName != "incident" || a.TableSysID != inc || a.FileName != "trace.log" || a.ContentType != "text/plain" ||
		a.SizeBytes != f.size || a.Hash != want || a.CreatedOn == "" || !strings.HasSuffix(a.DownloadLink, "/api/now/attachment/"+a.SysID+"/file") {
		t.Errorf("uploaded attachment = %+v, want the file's name, type, size %d and SHA-256 %s", a, f.size, want)
	}
	if f.opens.Load() != 1 {
		t.Errorf("the file was opened %d times for one clean upload", f.opens.Load())
	}
	if b, _ := sim.AttachmentBytes(a.SysID); int64(len(b)) != f.size {
		t.Errorf("the simulator holds %d bytes, want %d", len(b), f.size)
	}
	second := sim.AddAttachment("incident", inc, "b.png", "image/png", []byte("png"))

	list, err := c.ListAttachments(ctx, "incident", inc)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].SysID != a.SysID || list[1].SysID != second {
		t.Errorf("ListAttachments = %+v, want the upload then b.png", list)
	}
	meta, err := c.Attachment(ctx, a.SysID)
	if err != nil || meta.SysID != a.SysID || meta.Hash != want || meta.SizeBytes != f.size {
		t.Errorf("Attachment = %+v, %v", meta, err)
	}

	body, dm, err := c.DownloadAttachment(ctx, a.SysID)
	if err != nil {
		t.Fatal(err)
	}
	got, n, err := shaOf(body)
	_ = body.Close()
	if err != nil || got != want || n != f.size {
		t.Errorf("download: %d bytes, SHA-256 %s, err %v; want %d bytes, %s", n, got, err, f.size, want)
	}
	if dm.SysID != a.SysID || dm.Hash != want || dm.FileName != "trace.log" || dm.ContentType != "text/plain" || dm.SizeBytes != f.size {
		t.Errorf("download metadata (X-Attachment-Metadata) = %+v", dm)
	}
	if sim.RequestCount(http.MethodGet, "/api/now/attachment/{sys_id}", 0) != 1 {
		t.Error("the download read the metadata separately although X-Attachment-Metadata carried it")
	}

	if err := c.DeleteAttachment(ctx, a.SysID); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteAttachment(ctx, a.SysID); err != nil {
		t.Errorf("deleting an attachment already gone: %v, want nil", err)
	}
	if _, err := c.Attachment(ctx, a.SysID); !errors.Is(err, ErrNotFound) {
		t.Errorf("metadata of a deleted attachment: %v, want ErrNotFound", err)
	}
	if list, _ := c.ListAttachments(ctx, "incident", inc); len(list) != 1 {
		t.Errorf("after the delete %d attachments listed, want 1", len(list))
	}
}

func TestAttachment_ListFollowsPages(t *testing.T) {
	sim, c, inc := newAttachmentSim(t, nil)
	c.cfg.PageSize = 2
	var want []string
	for i := range 5 {
		want = append(want, sim.AddAttachment("incident", inc, "f"+string(rune('a'+i)), "text/plain", []byte{byte(i)}))
	}
	list, err := c.ListAttachments(t.Context(), "incident", inc)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range list {
		got = append(got, a.SysID)
	}
	if len(got) != 5 {
		t.Fatalf("listed %d of 5 attachments over pages of 2: %v", len(got), got)
	}
	for _, id := range want {
		found := false
		for _, g := range got {
			found = found || g == id
		}
		if !found {
			t.Errorf("attachment %s missing from the paged list", id)
		}
	}
}

// A 429 and a 503 in the middle of the work are retried: the upload
// re-opens the file each attempt and stores it once; the download retries.
func TestAttachment_429And503MidwayRetried(t *testing.T) {
	var posts, files atomic.Int32
	sim, c, inc := newAttachmentSim(t, func(r *http.Request) (int, bool) {
		switch {
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/attachment/file"):
			switch posts.Add(1) {
			case 1:
				return http.StatusTooManyRequests, false
			case 2:
				return http.StatusServiceUnavailable, false
			}
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/file"):
			if files.Add(1) == 1 {
				return http.StatusServiceUnavailable, false
			}
		}
		return 0, false
	})
	f := &genFile{seed: 3, size: 3 << 20}
	a, err := c.UploadAttachment(t.Context(), Upload{Table: "incident", SysID: inc, FileName: "x.bin", ContentType: "application/octet-stream", Size: f.size, Open: f.Open})
	if err != nil {
		t.Fatalf("upload through a 429 and a 503: %v", err)
	}
	if f.opens.Load() != 3 || posts.Load() != 3 {
		t.Errorf("file opened %d times for %d POSTs, want 3 and 3 (429, 503, success)", f.opens.Load(), posts.Load())
	}
	if n := len(sim.Attachments("incident", inc)); n != 1 {
		t.Errorf("%d attachments stored, want 1", n)
	}
	body, _, err := c.DownloadAttachment(t.Context(), a.SysID)
	if err != nil {
		t.Fatalf("download through a 503: %v", err)
	}
	defer body.Close()
	if got, _, err := shaOf(body); err != nil || got != f.sha256() {
		t.Errorf("downloaded SHA-256 %s (err %v), want %s", got, err, f.sha256())
	}
	if files.Load() != 2 {
		t.Errorf("%d download requests, want 2", files.Load())
	}
}

// A 5xx after the instance stored the file must not store it twice: the
// client finds it on the record and returns it.
func TestAttachment_FailureAfterStoringDoesNotUploadTwice(t *testing.T) {
	var posts atomic.Int32
	sim, c, inc := newAttachmentSim(t, func(r *http.Request) (int, bool) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/attachment/file") && posts.Add(1) == 1 {
			return http.StatusBadGateway, true
		}
		return 0, false
	})
	f := &genFile{seed: 4, size: 1 << 20}
	a, err := c.UploadAttachment(t.Context(), Upload{Table: "incident", SysID: inc, FileName: "once.bin", ContentType: "application/octet-stream", Size: f.size, Open: f.Open})
	if err != nil {
		t.Fatal(err)
	}
	stored := sim.Attachments("incident", inc)
	if len(stored) != 1 || stored[0].SysID != a.SysID || posts.Load() != 1 {
		t.Errorf("after a 502 that stored the file: %d stored (%+v), returned %s, %d POSTs; want the one stored, 1 POST", len(stored), stored, a.SysID, posts.Load())
	}
}

func TestAttachment_TooLargeIsPermanentAndSaysWhy(t *testing.T) {
	sim, c, inc := newAttachmentSim(t, nil)
	sim.SetAttachmentMaxSize(1 << 20)
	f := &genFile{seed: 5, size: 2 << 20}
	_, err := c.UploadAttachment(t.Context(), Upload{Table: "incident", SysID: inc, FileName: "huge.iso", ContentType: "application/octet-stream", Size: f.size, Open: f.Open})
	if !errors.Is(err, ErrAttachmentTooLarge) || !IsPermanent(err) || Hint(err) != HintAttachmentTooLarge {
		t.Fatalf("upload over com.glide.attachment.max_size: %v (permanent %v, hint %q); want ErrAttachmentTooLarge, permanent, HintAttachmentTooLarge",
			err, IsPermanent(err), Hint(err))
	}
	if f.opens.Load() != 1 {
		t.Errorf("a refused size was sent %d times, want once", f.opens.Load())
	}
	if n := len(sim.Attachments("incident", inc)); n != 0 {
		t.Errorf("%d attachments stored", n)
	}
	if c.BreakerState() != "closed" {
		t.Errorf("breaker %s after a refused size, want closed", c.BreakerState())
	}
}

func TestAttachment_401And403SayWhatToDo(t *testing.T) {
	sim, c, inc := newAttachmentSim(t, nil)
	ctx := t.Context()
	id := sim.AddAttachment("incident", inc, "a.txt", "text/plain", []byte("a"))
	sim.SetACL(snsim.ACL{DenyWrites: true})
	f := &genFile{seed: 1, size: 10}
	_, err := c.UploadAttachment(ctx, Upload{Table: "incident", SysID: inc, FileName: "b.txt", ContentType: "text/plain", Size: f.size, Open: f.Open})
	if !errors.Is(err, ErrForbidden) || !IsPermanent(err) || Hint(err) != HintAttachmentRights || !strings.Contains(err.Error(), "ACL Exception") {
		t.Errorf("upload without write access: %v; want 403 ACL Exception, permanent, HintAttachmentRights", err)
	}
	if err := c.DeleteAttachment(ctx, id); !errors.Is(err, ErrForbidden) || !IsPermanent(err) {
		t.Errorf("delete without write access: %v; want 403, permanent", err)
	}
	sim.SetACL(snsim.ACL{})
	sim.SetOAuthMode(snsim.OAuthTokenNotAuthenticated)
	sim.RevokeTokens()
	_, err = c.ListAttachments(ctx, "incident", inc)
	if !errors.Is(err, ErrUnauthorized) || !IsPermanent(err) || Hint(err) != HintAppUser {
		t.Errorf("list with a token bound to no user: %v; want 401 with HintAppUser, permanent", err)
	}
	_, _, err = c.DownloadAttachment(ctx, id)
	if !errors.Is(err, ErrUnauthorized) || Hint(err) != HintAppUser {
		t.Errorf("download with a token bound to no user: %v; want 401 with HintAppUser", err)
	}
}

func TestAttachment_DownloadOfTamperedBytesFailsAtTheEnd(t *testing.T) {
	sim, c, inc := newAttachmentSim(t, nil)
	id := sim.AddAttachment("incident", inc, "a.bin", "application/octet-stream", bytes.Repeat([]byte{1, 2, 3}, 10000))
	sim.CorruptAttachment(id)
	body, _, err := c.DownloadAttachment(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if _, err := io.Copy(io.Discard, body); !errors.Is(err, ErrAttachmentMismatch) || IsPermanent(err) {
		t.Errorf("reading bytes that differ from the hash: %v; want ErrAttachmentMismatch, not permanent", err)
	}
}

func TestAttachment_SourceFailureIsNotRetriedNorCountedByTheBreaker(t *testing.T) {
	_, c, inc := newAttachmentSim(t, nil)
	boom := errors.New("object store unavailable")
	var opens atomic.Int32
	_, err := c.UploadAttachment(t.Context(), Upload{Table: "incident", SysID: inc, FileName: "x", ContentType: "text/plain", Size: 5,
		Open: func() (io.ReadCloser, error) { opens.Add(1); return nil, boom }})
	if !errors.Is(err, boom) || opens.Load() != 1 {
		t.Errorf("upload whose Open fails: %v after %d opens; want the Open error, once", err, opens.Load())
	}
	short := func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("abc")), nil }
	_, err = c.UploadAttachment(t.Context(), Upload{Table: "incident", SysID: inc, FileName: "x", ContentType: "text/plain", Size: 5, Open: short})
	if err == nil || !strings.Contains(err.Error(), "not the 5 announced") {
		t.Errorf("upload whose file is shorter than its Size: %v; want an error saying so", err)
	}
	if c.BreakerState() != "closed" {
		t.Errorf("breaker %s after source failures, want closed", c.BreakerState())
	}
}

func TestAttachment_InvalidArgumentsRefusedBeforeSending(t *testing.T) {
	_, c, inc := newAttachmentSim(t, nil)
	ctx := t.Context()
	for name, err := range map[string]error{
		"list bad table":  func() error { _, err := c.ListAttachments(ctx, "Inc; drop", inc); return err }(),
		"list bad sys_id": func() error { _, err := c.ListAttachments(ctx, "incident", "x"); return err }(),
		"meta bad sys_id": func() error { _, err := c.Attachment(ctx, "../x"); return err }(),
		"delete bad id":   c.DeleteAttachment(ctx, "x"),
		"upload no name": func() error {
			_, err := c.UploadAttachment(ctx, Upload{Table: "incident", SysID: inc, Size: 0, Open: func() (io.ReadCloser, error) { return http.NoBody, nil }})
			return err
		}(),
	} {
		if !errors.Is(err, ErrInvalidQuery) || !IsPermanent(err) {
			t.Errorf("%s: %v, want ErrInvalidQuery (permanent)", name, err)
		}
	}
}

// heapBound is how much the client may allocate moving a file: far below
// the file's size (the simulator's own copy of an upload is subtracted).
const heapBound = 6 << 20

// The client moves 50 MB each way with a constant-memory stream: what it
// allocates (TotalAlloc) stays far below the file's size.
func TestAttachment_50MBEachWayInConstantMemory(t *testing.T) {
	sim, c, inc := newAttachmentSim(t, nil)
	f := &genFile{seed: 9, size: 50 << 20}
	want := f.sha256()
	ctx := t.Context()

	alloc := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.TotalAlloc
	}
	before := alloc()
	start := time.Now()
	a, err := c.UploadAttachment(ctx, Upload{Table: "incident", SysID: inc, FileName: "big.bin", ContentType: "application/octet-stream", Size: f.size, Open: f.Open})
	if err != nil {
		t.Fatal(err)
	}
	upTook := time.Since(start)
	// The simulator keeps the upload in one buffer of the file's size.
	upAlloc := int64(alloc()-before) - f.size
	if a.Hash != want {
		t.Fatalf("stored hash %s, want %s", a.Hash, want)
	}

	before = alloc()
	start = time.Now()
	body, _, err := c.DownloadAttachment(ctx, a.SysID)
	if err != nil {
		t.Fatal(err)
	}
	got, n, err := shaOf(body)
	_ = body.Close()
	downTook := time.Since(start)
	downAlloc := int64(alloc() - before)
	if err != nil || got != want || n != f.size {
		t.Fatalf("download: %d bytes, %s, %v", n, got, err)
	}
	mb := float64(f.size) / (1 << 20)
	t.Logf("50 MB upload: %.0f MB/s, client allocated %.2f MB; download: %.0f MB/s, allocated %.2f MB",
		mb/upTook.Seconds(), float64(upAlloc)/(1<<20), mb/downTook.Seconds(), float64(downAlloc)/(1<<20))
	if upAlloc > heapBound || downAlloc > heapBound {
		t.Errorf("moving 50 MB allocated %d bytes (upload, simulator's copy excluded) and %d (download); want each under %d: the file is being buffered",
			upAlloc, downAlloc, heapBound)
	}
	if b, _ := sim.AttachmentBytes(a.SysID); int64(len(b)) != f.size {
		t.Errorf("simulator holds %d bytes", len(b))
	}
}

func BenchmarkAttachmentDownload8MB(b *testing.B) {
	sim, c, inc := newAttachmentSim(b, nil)
	data := make([]byte, 8<<20)
	id := sim.AddAttachment("incident", inc, "b.bin", "application/octet-stream", data)
	ctx := context.Background()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		body, _, err := c.DownloadAttachment(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			b.Fatal(err)
		}
		_ = body.Close()
	}
}

func BenchmarkAttachmentUpload8MB(b *testing.B) {
	sim, c, inc := newAttachmentSim(b, nil)
	f := &genFile{seed: 2, size: 8 << 20}
	ctx := context.Background()
	b.SetBytes(f.size)
	b.ReportAllocs()
	for b.Loop() {
		a, err := c.UploadAttachment(ctx, Upload{Table: "incident", SysID: inc, FileName: "u.bin", ContentType: "application/octet-stream", Size: f.size, Open: f.Open})
		if err != nil {
			b.Fatal(err)
		}
		sim.RemoveAttachment(a.SysID) // keep the simulator's memory flat
	}
}
