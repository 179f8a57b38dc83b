package attach

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/reconcile"
	"github.com/nowbridge/nowbridge/internal/replay"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

func screenshot(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*31)
	}
	return b
}

func TestAttach_ServiceNowFileReachesTheAppThroughTheObjectStore(t *testing.T) {
	h := newHarness(t, hopts{})
	sysID := h.record("TCK-1")
	data := screenshot(1, 300_000)
	sid := h.sim.AddAttachment("incident", sysID, "screen.png", "image/png", data)

	eventually(t, 15*time.Second, "the app holds the file", func() (bool, string) {
		got := h.app.digests(sysID)
		return slices.Equal(got, []string{digestOf(data)}), strings.Join(got, ",")
	})
	msgs := h.applyMessages()
	if len(msgs) != 1 {
		t.Fatalf("%d attachment messages for the app, want 1: %+v", len(msgs), msgs)
	}
	m := msgs[0]
	wantObj := "sn/incident/" + sysID + "/" + sid
	if m.Action != wire.AttachmentAdd || m.ExternalID != "TCK-1" || m.SysID != sysID || m.Table != "incident" || m.AttachmentSysID != sid ||
		m.Object != wantObj || m.Digest != digestOf(data) || m.Size != int64(len(data)) || m.FileName != "screen.png" || m.ContentType != "image/png" {
		t.Errorf("add %+v, want the record, ServiceNow's id, object %s, the file's digest, size, name and type", m, wantObj)
	}
	if objs := h.objects(); !slices.Equal(objs, []string{wantObj}) {
		t.Errorf("bridge_attachments holds %v, want only %s", objs, wantObj)
	}

	// The app, naively, announces the file it was handed as one of its own:
	// ServiceNow has that content on the record, so nothing is uploaded.
	h.app.put(h.ctx, "TCK-1", sysID, "A-copy", "screen.png", "image/png", data)
	h.settle()
	rs := h.resultsOf("A-copy")
	if len(rs) != 1 || rs[0].Outcome != events.OutcomeUnchanged || rs[0].Attachment.AttachmentSysID != sid {
		t.Errorf("results of the app's copy %+v, want one unchanged naming %s", rs, sid)
	}
	if n := len(h.sim.Attachments("incident", sysID)); n != 1 {
		t.Errorf("ServiceNow holds %d attachments on the record, want 1: the app's copy of a file it was handed is not uploaded back", n)
	}
	if es := h.deadLetters(""); len(es) != 0 {
		t.Errorf("dead letters %+v, want none (the apply pipeline and the writeback leave attachment messages alone)", es)
	}
}

func TestAttach_AppFileUploadedOnceAndItsWebhookNotHandedBack(t *testing.T) {
	h := newHarness(t, hopts{})
	sysID := h.record("TCK-2")
	data := screenshot(2, 200_000)
	h.app.put(h.ctx, "TCK-2", sysID, "A1", "trace.log", "text/plain", data)

	eventually(t, 15*time.Second, "a created result", func() (bool, string) {
		rs := h.resultsOf("A1")
		return len(rs) == 1 && rs[0].Outcome == events.OutcomeCreated, strings.Join(outcomes(rs), ",")
	})
	r := h.resultsOf("A1")[0]
	atts := h.sim.Attachments("incident", sysID)
	if len(atts) != 1 || atts[0].SysID != r.Attachment.AttachmentSysID || atts[0].FileName != "trace.log" || atts[0].ContentType != "text/plain" {
		t.Fatalf("ServiceNow holds %+v, want the one file the result names (%+v)", atts, r.Attachment)
	}
	if b, _ := h.sim.AttachmentBytes(atts[0].SysID); !bytes.Equal(b, data) {
		t.Errorf("ServiceNow holds %d bytes, not the %d the app put", len(b), len(data))
	}
	if r.SysID != sysID || r.Action != wire.ActionAttachment || r.Attachment.Digest != digestOf(data) || r.URL == "" {
		t.Errorf("result %+v, want the record, action attachment, the digest and the record's link", r)
	}
	h.settle()
	if n := h.handled(dirToApp, OutcomeEcho); n != 1 {
		t.Errorf("%d webhooks recognised as the upload's echo, want 1", n)
	}
	if msgs := h.applyMessages(); len(msgs) != 0 {
		t.Errorf("the app was handed %+v, want nothing: the webhook of the bridge's own upload is its echo", msgs)
	}
	if rs := h.resultsOf("A1"); len(rs) != 1 {
		t.Errorf("results %+v, want exactly one (the writeback must not answer attachment messages)", rs)
	}
}

// Adding the same screenshot twice, removing it, replaying the window: each
// side ends with exactly what the other has.
func TestAttach_SameScreenshotTwiceRemovedAndReplayed(t *testing.T) {
	h := newHarness(t, hopts{})
	shot := screenshot(3, 120_000)
	d := digestOf(shot)
	same := func(step, sysID string, want []string) {
		t.Helper()
		h.settle()
		sn, app := distinct(h.snDigests(sysID)), h.app.digests(sysID)
		if !slices.Equal(sn, want) || !slices.Equal(app, want) {
			t.Fatalf("%s: record %s: ServiceNow holds %v, the app %v; want both %v", step, sysID, sn, app, want)
		}
	}

	// In ServiceNow.
	r1 := h.record("TCK-3")
	s1 := h.sim.AddAttachment("incident", r1, "shot.png", "image/png", shot)
	s2 := h.sim.AddAttachment("incident", r1, "shot (1).png", "image/png", shot)
	same("twice in ServiceNow", r1, []string{d})
	if adds := h.applyMessages(); len(adds) != 1 {
		t.Fatalf("the app was handed %d adds for the same screenshot twice, want 1", len(adds))
	}
	h.sim.RemoveAttachment(s1)
	same("one copy removed in ServiceNow", r1, []string{d}) // the other copy stays
	h.sim.RemoveAttachment(s2)
	same("both copies removed in ServiceNow", r1, nil)

	// In the app.
	r2 := h.record("TCK-4")
	h.app.put(h.ctx, "TCK-4", r2, "A1", "shot.png", "image/png", shot)
	h.app.put(h.ctx, "TCK-4", r2, "A2", "shot-again.png", "image/png", shot)
	same("twice in the app", r2, []string{d})
	if n := len(h.sim.Attachments("incident", r2)); n != 1 {
		t.Fatalf("ServiceNow holds %d attachments for the same screenshot added twice, want 1", n)
	}
	if a1, a2 := outcomes(h.resultsOf("A1")), outcomes(h.resultsOf("A2")); !slices.Equal(a1, []string{"created"}) || !slices.Equal(a2, []string{"unchanged"}) {
		t.Fatalf("results A1 %v A2 %v, want created and unchanged", a1, a2)
	}
	h.app.remove(h.ctx, "TCK-4", r2, "A1")
	same("one copy removed in the app", r2, []string{d})
	h.app.remove(h.ctx, "TCK-4", r2, "A2")
	same("both copies removed in the app", r2, nil)

	// Both at once on a third record, then everything replayed.
	r3 := h.record("TCK-5")
	h.sim.AddAttachment("incident", r3, "shot.png", "image/png", shot)
	h.app.put(h.ctx, "TCK-5", r3, "B1", "mine.png", "image/png", shot)
	other := screenshot(9, 50_000)
	h.app.put(h.ctx, "TCK-5", r3, "B2", "other.png", "image/png", other)
	same("on both sides", r3, distinct([]string{d, digestOf(other)}))

	applied, created := len(h.applyMessages()), count(h.results(), events.OutcomeCreated)
	for _, stream := range []string{events.StreamSN, events.StreamApp} {
		sum, err := replay.Run(h.ctx, h.js, replay.Selection{Stream: stream}, Replay{S: h.s}, replay.Options{})
		if err != nil {
			t.Fatalf("replay %s: %v (%+v)", stream, err, sum.Items)
		}
	}
	same("replayed", r1, nil)
	same("replayed", r2, nil)
	same("replayed", r3, distinct([]string{d, digestOf(other)}))
	if n := len(h.applyMessages()); n != applied {
		t.Errorf("the replay handed the app %d more messages, want none", n-applied)
	}
	if n := count(h.results(), events.OutcomeCreated); n != created {
		t.Errorf("the replay uploaded %d files again, want none", n-created)
	}
	if n := len(h.sim.Attachments("incident", r3)); n != 2 {
		t.Errorf("record 3 holds %d attachments in ServiceNow, want 2 (the screenshot once, the other file)", n)
	}
}

func TestAttach_RefusedFilesRejectedAndDeadLetteredWithoutRetry(t *testing.T) {
	h := newHarness(t, hopts{limits: Limits{MaxBytes: 1000, Deny: []string{"application/x-msdownload"}}})
	sysID := h.record("TCK-6")

	h.app.put(h.ctx, "TCK-6", sysID, "BIG", "dump.bin", "application/octet-stream", screenshot(4, 5000))
	h.app.put(h.ctx, "TCK-6", sysID, "EXE", "tool.exe", "application/x-msdownload", screenshot(5, 10))
	h.sim.SetAttachmentMaxSize(500) // the instance refuses what the bridge allows
	h.app.put(h.ctx, "TCK-6", sysID, "MID", "notes.txt", "text/plain", screenshot(6, 800))
	sid := h.sim.AddAttachment("incident", sysID, "video.mp4", "video/mp4", screenshot(7, 5000))
	h.settle()

	for _, c := range []struct{ id, reason, hint string }{
		{"BIG", "BRIDGE_ATTACHMENT_MAX_BYTES", HintTooLarge},
		{"EXE", "BRIDGE_ATTACHMENT_TYPES_DENY", HintType},
		{"MID", "max_size", HintInstance},
	} {
		rs := h.resultsOf(c.id)
		if len(rs) != 1 || rs[0].Outcome != events.OutcomeRejected || rs[0].Error == nil || !rs[0].Error.DeadLettered ||
			!strings.Contains(rs[0].Error.Message, c.reason) || rs[0].Error.Hint != c.hint {
			t.Errorf("%s: results %+v, want one rejected, dead-lettered, naming %s with hint %q", c.id, rs, c.reason, c.hint)
		}
	}
	if n := len(h.sim.Attachments("incident", sysID)); n != 1 {
		t.Errorf("ServiceNow holds %d attachments, want only the person's video", n)
	}
	if es := h.deadLetters(PipelineWriteback); len(es) != 3 {
		t.Errorf("%d dead letters of %s, want 3", len(es), PipelineWriteback)
	}
	es := h.deadLetters(PipelineApply)
	if len(es) != 1 || !strings.Contains(es[0].Reason, sid) || es[0].Hint != HintTooLarge {
		t.Errorf("dead letters of %s %+v, want the video %s, too large", PipelineApply, es, sid)
	}
	if msgs, objs := h.applyMessages(), h.objects(); len(msgs) != 0 || slices.ContainsFunc(objs, func(o string) bool { return strings.HasPrefix(o, "sn/") }) {
		t.Errorf("the app was handed %+v and the bucket holds %v, want nothing of the refused video", msgs, objs)
	}
	if n := retries(h); n != 0 {
		t.Errorf("%v retries, want none: a refused file is not retried", n)
	}
}

// A download cut midway leaves no object; the retry downloads the whole
// file.
func TestAttach_InterruptedDownloadLeavesNoObject(t *testing.T) {
	var downloads atomic.Int32
	second := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(second) }) }
	t.Cleanup(release)
	h := newHarness(t, hopts{front: func(sim http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/file") || r.Method != http.MethodGet {
				sim.ServeHTTP(w, r)
				return
			}
			switch downloads.Add(1) {
			case 1:
				sim.ServeHTTP(&cutWriter{ResponseWriter: w, left: 100_000}, r)
			default:
				<-second
				sim.ServeHTTP(w, r)
			}
		})
	}})
	sysID := h.record("TCK-7")
	data := screenshot(8, 400_000)
	h.sim.AddAttachment("incident", sysID, "big.png", "image/png", data)

	eventually(t, 15*time.Second, "the retry's download", func() (bool, string) { return downloads.Load() >= 2, "" })
	if objs := h.objects(); len(objs) != 0 {
		t.Errorf("after the cut download the bucket holds %v, want nothing", objs)
	}
	st, err := h.js.Stream(h.ctx, "OBJ_"+events.BucketAttachments)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(h.ctx); err != nil || info.State.Msgs != 0 {
		t.Errorf("the bucket's stream holds %v messages (%v), want none: the cut download's chunks are purged", info.State.Msgs, err)
	}
	if msgs := h.applyMessages(); len(msgs) != 0 {
		t.Errorf("the app was handed %+v before the file was whole", msgs)
	}
	release()
	eventually(t, 15*time.Second, "the app holds the whole file", func() (bool, string) {
		return slices.Equal(h.app.digests(sysID), []string{digestOf(data)}), ""
	})
	if objs := h.objects(); len(objs) != 1 {
		t.Errorf("the bucket holds %v, want the one file", objs)
	}

	// Bytes that do not match ServiceNow's hash are never visible either.
	r2 := h.record("TCK-8")
	sid := h.sim.AddAttachment("incident", r2, "bad.png", "image/png", screenshot(9, 3000))
	h.sim.CorruptAttachment(sid)
	eventually(t, 15*time.Second, "retries of the corrupt download", func() (bool, string) {
		n := retries(h)
		return n >= 2, ""
	})
	if objs := h.objects(); len(objs) != 1 {
		t.Errorf("the bucket holds %v, want only the first file: a download that does not match is never stored", objs)
	}
	if n := len(h.applyMessages()); n != 1 {
		t.Errorf("%d messages for the app, want only the first file's", n)
	}
}

// cutWriter passes left bytes of a response through, then drops the
// connection as a network failure would.
type cutWriter struct {
	http.ResponseWriter
	left int
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if len(p) > c.left {
		n, _ := c.ResponseWriter.Write(p[:c.left])
		c.left = 0
		if f, ok := c.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		_ = n
		panic(http.ErrAbortHandler)
	}
	c.left -= len(p)
	return c.ResponseWriter.Write(p)
}

// Reconcile finds an attachment added and one removed without a webhook on
// the records it re-reads.
func TestAttach_ReconcileFindsWhatWebhooksMissed(t *testing.T) {
	h := newHarness(t, hopts{})
	sysID := h.record("TCK-9")
	kept := screenshot(10, 20_000)
	h.sim.AddAttachment("incident", sysID, "kept.png", "image/png", kept)
	h.settle()

	if err := h.sim.SetWebhookOptions(snsim.WebhookOptions{DropRate: 1}); err != nil {
		t.Fatal(err)
	}
	lost := screenshot(11, 30_000)
	lostID := h.sim.AddAttachment("incident", sysID, "lost.png", "image/png", lost)
	h.settle()
	if got := h.app.digests(sysID); !slices.Equal(got, []string{digestOf(kept)}) {
		t.Fatalf("before reconcile the app holds %v, want only the file whose webhook arrived", got)
	}
	states := h.states
	rc, err := reconcile.New(h.js, states.KV(), &reconcile.SNPager{Client: h.sn}, states, reconcile.Config{
		Tables: []string{"incident"}, Fields: h.maps.Fields, SkipDeletes: true, Attachments: h.s,
	})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := rc.Pass(h.ctx, "incident", reconcile.PassOptions{Full: true})
	if err != nil || sum.Attachments != 1 {
		t.Fatalf("pass: %+v %v, want 1 attachment found", sum, err)
	}
	h.settle()
	if got, want := h.app.digests(sysID), distinct([]string{digestOf(kept), digestOf(lost)}); !slices.Equal(got, want) {
		t.Fatalf("after reconcile the app holds %v, want %v", got, want)
	}

	h.sim.RemoveAttachment(lostID) // its webhook is dropped too
	h.settle()
	sum, err = rc.Pass(h.ctx, "incident", reconcile.PassOptions{Full: true})
	if err != nil || sum.Attachments != 1 {
		t.Fatalf("second pass: %+v %v, want 1 attachment found (the removal)", sum, err)
	}
	h.settle()
	if got := h.app.digests(sysID); !slices.Equal(got, []string{digestOf(kept)}) {
		t.Errorf("after the second pass the app holds %v, want only the kept file", got)
	}
	if sum, _ := rc.Pass(h.ctx, "incident", reconcile.PassOptions{Full: true}); sum.Attachments != 0 {
		t.Errorf("a pass with nothing missing found %d attachments", sum.Attachments)
	}
}

// An app's file for a record not yet in ServiceNow waits for its link.
func TestAttach_AppFileWaitsForItsRecordToBeLinked(t *testing.T) {
	h := newHarness(t, hopts{})
	rec, err := h.sim.Insert("incident", map[string]string{"short_description": "late link"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	sysID := rec["sys_id"]
	h.app.put(h.ctx, "TCK-10", sysID, "L1", "early.txt", "text/plain", screenshot(12, 2000))
	time.Sleep(300 * time.Millisecond)
	if n := len(h.sim.Attachments("incident", sysID)); n != 0 {
		t.Fatalf("%d attachments uploaded before the record was linked", n)
	}
	if err := h.links.Link(h.ctx, "ticket", "TCK-10", "incident", sysID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the upload after the link", func() (bool, string) {
		return len(h.sim.Attachments("incident", sysID)) == 1, ""
	})
	h.settle()
	if rs := h.resultsOf("L1"); len(rs) != 1 || rs[0].Outcome != events.OutcomeCreated {
		t.Errorf("results %+v, want one created (waiting for the link is not news for the app)", rs)
	}
}

func outcomes(rs []events.Result) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Outcome)
	}
	return out
}

func count(rs []events.Result, outcome string) int {
	n := 0
	for _, r := range rs {
		if r.Outcome == outcome {
			n++
		}
	}
	return n
}

// retries sums bridge_attachment_retries_total.
func retries(h *harness) float64 {
	var n float64
	for _, dir := range []string{dirToApp, dirToSN} {
		for _, reason := range []string{"rate_limited", "server_error", "network", "auth", "breaker_open", "nats", "canceled", "other", "ordering", "paused"} {
			n += testutil.ToFloat64(h.s.m.retries.WithLabelValues(dir, reason))
		}
	}
	return n
}
