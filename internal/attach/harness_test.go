package attach

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

func TestMain(m *testing.M) {
	if helperMain() {
		return
	}
	// nats.go v1.55.0: the object store's Put makes a JetStream context of
	// its own whose reconnect watcher goroutine blocks on a nil channel for
	// good when Put's cleanup runs before the goroutine first reads the
	// channel (jetstream/publish.go resetPendingAcksOnReconnect vs
	// jetstream.go cleanupReplySub). Not ours to fix here; see
	// docs/operations.md, Attachments.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"))
}

// harness is the whole path on real parts: the simulator (its attachment
// business rule posting to the real receiver), nats-server, the receiver,
// the apply pipeline and the writeback (which must leave attachment
// messages alone), the attachment pipelines, and an app on the SDK that
// keeps the files it is handed.
type harness struct {
	t      testing.TB
	ctx    context.Context
	js     jetstream.JetStream
	sim    *snsim.Server
	sn     *snclient.Client
	links  *state.Links
	states *state.Store
	maps   *mapping.Set
	s      *Syncer
	reg    *prometheus.Registry
	app    *testApp
	obj    jetstream.ObjectStore
	simURL string
	stop   func()
}

type hopts struct {
	limits Limits
	// front wraps the simulator's handler (a fault in front of it).
	front func(http.Handler) http.Handler
	// noApp leaves the test app out (benchmarks read the bucket themselves).
	noApp bool
}

func newHarness(t testing.TB, o hopts) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv := natstest.RunServer(t)
	nc, js := natstest.Connect(t, srv)
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bridge log:\n%s", logs.String())
		}
	})
	maps, err := mapping.Load(nil, []string{"incident"}, log)
	if err != nil {
		t.Fatal(err)
	}
	states, links, err := state.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	echoes := dedupe.New(dedupe.Config{Tables: maps})
	secret := webhook.NewSecret([]byte("0123456789abcdef0123456789abcdef"))
	rcv, err := inbound.New(inbound.Config{Conn: nc, Secrets: []webhook.Secret{secret}, Tables: []string{"incident"}, Echoes: echoes, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	rcvSrv := httptest.NewServer(rcv.Handler())
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 7,
		Webhooks: []snsim.WebhookTarget{{URL: rcvSrv.URL + inbound.Path, Secrets: []webhook.Secret{secret}}}})
	var front http.Handler = sim
	if o.front != nil {
		front = o.front(sim)
	}
	simSrv := httptest.NewServer(front)
	sn, err := snclient.New(snclient.Config{
		InstanceURL: simSrv.URL, ClientID: "bridge", ClientSecret: "s3cret",
		RetryInitial: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, RetryMaxElapsed: 2 * time.Second,
		BreakerFailures: 1000, DisableBackgroundRefresh: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: ctx, js: js, sim: sim, sn: sn, links: links, states: states, maps: maps, reg: prometheus.NewRegistry(), simURL: simSrv.URL}
	if o.limits.MaxBytes == 0 {
		o.limits.MaxBytes = snsim.DefaultAttachmentMaxSize
	}
	tuning := consume.Tuning{Workers: 4, RetryBase: 20 * time.Millisecond, RetryMax: 300 * time.Millisecond, AckWait: 10 * time.Second, StopGrace: 5 * time.Second}
	linksKV, err := js.KeyValue(ctx, events.BucketLinks)
	if err != nil {
		t.Fatal(err)
	}
	h.s, err = New(ctx, Config{JS: js, ServiceNow: sn, Entities: maps, Links: links, LinksKV: linksKV, Limits: o.limits,
		InstanceURL: simSrv.URL, Tuning: tuning, Logger: log, Registerer: h.reg})
	if err != nil {
		t.Fatal(err)
	}
	if h.obj, err = js.ObjectStore(ctx, events.BucketAttachments); err != nil {
		t.Fatal(err)
	}
	runner, err := apply.New(apply.Config{JS: js, Applier: &apply.NATSApplier{JS: js}, Mapping: maps, States: states, Links: links,
		Tuning: consume.Tuning{Workers: 2, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	w, err := outbound.NewWriter(outbound.Deps{API: sn, Mapping: maps, States: states, Links: links, StateKV: states.KV(), Dedupe: echoes},
		outbound.Config{Workers: 2, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, AckWait: 10 * time.Second, InstanceURL: simSrv.URL, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	writeback := outbound.NewConsumer(js, w)

	rctx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	run := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(rctx); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	run("attachments", h.s.Run)
	run("apply", runner.Run)
	run("writeback", writeback.Run)
	if !o.noApp {
		h.app = newTestApp(t, js)
		run("app", h.app.run)
	}
	h.stop = func() {
		stopRun()
		wg.Wait()
	}
	t.Cleanup(func() {
		h.stop()
		cancel()
		_ = sn.Close()
		sim.Close()
		simSrv.Close()
		rcvSrv.Close()
	})
	return h
}

// record creates an incident in the simulator (its insert webhook goes
// through the receiver and the apply pipeline like any) and links it to
// the app's id, as the app's first sync would.
func (h *harness) record(externalID string) string {
	h.t.Helper()
	rec, err := h.sim.Insert("incident", map[string]string{"short_description": "attachments " + externalID}, "beth.anglin")
	if err != nil {
		h.t.Fatal(err)
	}
	sysID := rec["sys_id"]
	if err := h.links.Link(h.ctx, "ticket", externalID, "incident", sysID); err != nil {
		h.t.Fatal(err)
	}
	return sysID
}

// snDigests are the contents (SHA-256 digests) on a ServiceNow record,
// one per attachment.
func (h *harness) snDigests(sysID string) []string {
	var out []string
	for _, a := range h.sim.Attachments("incident", sysID) {
		d, _ := wire.DigestFromHex(a.SHA256)
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// applyMessages are the attachment messages handed to the app.
func (h *harness) applyMessages() []events.AttachmentMessage {
	var out []events.AttachmentMessage
	for _, m := range h.streamMsgs(events.StreamApply, "bridge.apply.*.attachment") {
		var am events.AttachmentMessage
		if err := json.Unmarshal(m.Data(), &am); err != nil {
			h.t.Fatalf("attachment message %s: %v", m.Data(), err)
		}
		out = append(out, am)
	}
	return out
}

// results are the results of the app's attachment messages.
func (h *harness) results() []events.Result {
	var out []events.Result
	for _, m := range h.streamMsgs(events.StreamResults, events.ResultsSubjects) {
		var r events.Result
		if err := json.Unmarshal(m.Data(), &r); err != nil {
			h.t.Fatalf("result %s: %v", m.Data(), err)
		}
		out = append(out, r)
	}
	return out
}

// resultsOf are the results naming the app's attachment id.
func (h *harness) resultsOf(attachmentID string) []events.Result {
	var out []events.Result
	for _, r := range h.results() {
		if r.Attachment != nil && r.Attachment.AttachmentID == attachmentID {
			out = append(out, r)
		}
	}
	return out
}

// streamMsgs reads every message of a stream on a subject filter.
func (h *harness) streamMsgs(stream, filter string) []jetstream.Msg {
	h.t.Helper()
	st, err := h.js.Stream(h.ctx, stream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(h.ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		h.t.Fatal(err)
	}
	var want uint64
	for _, n := range info.State.Subjects {
		want += n
	}
	if want == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(h.ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []jetstream.Msg
	for uint64(len(out)) < want {
		batch, err := cons.Fetch(int(want)-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			h.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			h.t.Fatalf("read %d of %d messages of %s on %s", len(out), want, stream, filter)
		}
	}
	return out
}

// deadLetters are the dead letters of a pipeline.
func (h *harness) deadLetters(pipeline string) []dlq.Entry {
	h.t.Helper()
	es, err := dlq.List(h.ctx, h.js, pipeline)
	if err != nil {
		h.t.Fatal(err)
	}
	return es
}

// handled is bridge_attachments_total{direction, outcome}.
func (h *harness) handled(direction string, outcome Outcome) int {
	return int(testutil.ToFloat64(h.s.m.handled.WithLabelValues(direction, string(outcome))))
}

// objects are the names in bridge_attachments.
func (h *harness) objects() []string {
	h.t.Helper()
	infos, err := h.obj.List(h.ctx)
	if err != nil && err != jetstream.ErrNoObjectsFound {
		h.t.Fatal(err)
	}
	var out []string
	for _, i := range infos {
		out = append(out, i.Name)
	}
	return out
}

// settle waits until the simulator delivered its webhooks and every
// consumer of the path handled every message stored for it: its ack floor
// is at the last message on its filter (a message waiting for a retry is
// neither pending nor ack pending, and a consumer's pending count may lag
// the stream).
func (h *harness) settle() {
	h.t.Helper()
	eventually(h.t, 20*time.Second, "consumers idle", func() (bool, string) {
		if err := h.sim.WaitWebhooks(h.ctx); err != nil {
			return false, err.Error()
		}
		var busy []string
		for _, c := range []struct{ stream, name string }{
			{events.StreamSN, "attachment-apply"}, {events.StreamApp, "attachment-writeback"},
			{events.StreamSN, "apply"}, {events.StreamApp, "writeback"}, {events.StreamApply, "app-attachments"},
		} {
			if h.app == nil && c.name == "app-attachments" {
				continue
			}
			cons, err := h.js.Consumer(h.ctx, c.stream, c.name)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", c.name, err)
			}
			ci, err := cons.Info(h.ctx)
			if err != nil {
				return false, err.Error()
			}
			filter := ci.Config.FilterSubject
			if filter == "" && len(ci.Config.FilterSubjects) > 0 {
				filter = ci.Config.FilterSubjects[0]
			}
			last := uint64(0)
			if st, err := h.js.Stream(h.ctx, c.stream); err == nil {
				if m, err := st.GetLastMsgForSubject(h.ctx, filter); err == nil {
					last = m.Sequence
				}
			}
			if ci.NumAckPending > 0 || ci.AckFloor.Stream < last {
				busy = append(busy, fmt.Sprintf("%s acked up to %d of %d (ack pending %d)", c.name, ci.AckFloor.Stream, last, ci.NumAckPending))
			}
		}
		return len(busy) == 0, strings.Join(busy, "; ")
	})
}

func eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %s", what, d, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return wire.Digest(sum[:])
}

// testApp is an app on the SDK: it keeps the files the bridge hands it
// per record and adds and removes its own.
type testApp struct {
	t      testing.TB
	client *nowbridge.Client
	mu     sync.Mutex
	files  map[string]map[string]string // record sys_id -> file id -> digest
	seen   []string                     // message ids handled
}

func newTestApp(t testing.TB, js jetstream.JetStream) *testApp {
	c, err := nowbridge.New(js, nowbridge.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &testApp{t: t, client: c, files: map[string]map[string]string{}}
}

func (a *testApp) run(ctx context.Context) error {
	return a.client.ConsumeAttachments(ctx, a.handle, nowbridge.ConsumeOptions{Workers: 2, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond})
}

// handle reads the file of an add from the bucket (checking its digest)
// and keeps it; a remove drops every copy of the content on the record.
func (a *testApp) handle(ctx context.Context, m *nowbridge.AttachmentMessage) error {
	var body []byte
	if m.Action == nowbridge.AttachmentAdd {
		r, err := a.client.OpenAttachment(ctx, m)
		if err != nil {
			return err
		}
		defer r.Close()
		if body, err = io.ReadAll(r); err != nil {
			return err
		}
		if digestOf(body) != m.Digest || int64(len(body)) != m.Size {
			return nowbridge.Permanent(fmt.Errorf("object %s: %d bytes %s, message says %d bytes %s", m.Object, len(body), digestOf(body), m.Size, m.Digest))
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, m.MsgID)
	rec := a.files[m.SysID]
	if rec == nil {
		rec = map[string]string{}
		a.files[m.SysID] = rec
	}
	switch m.Action {
	case nowbridge.AttachmentAdd:
		rec["sn-"+m.AttachmentSysID] = m.Digest
	case nowbridge.AttachmentRemove:
		maps.DeleteFunc(rec, func(_, d string) bool { return d == m.Digest })
	}
	return nil
}

// put attaches data to the app's record and announces it.
func (a *testApp) put(ctx context.Context, externalID, sysID, id, name, contentType string, data []byte) {
	a.t.Helper()
	if _, err := a.client.PutAttachment(ctx, "ticket", nowbridge.NewAttachment{ExternalID: externalID, AttachmentID: id, FileName: name, ContentType: contentType}, bytes.NewReader(data)); err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.files[sysID] == nil {
		a.files[sysID] = map[string]string{}
	}
	a.files[sysID][id] = digestOf(data)
}

// remove removes one of the app's files.
func (a *testApp) remove(ctx context.Context, externalID, sysID, id string) {
	a.t.Helper()
	if _, err := a.client.RemoveAttachment(ctx, "ticket", nowbridge.AttachmentRef{ExternalID: externalID, AttachmentID: id}); err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.files[sysID], id)
}

// digests are the distinct contents the app holds on a record.
func (a *testApp) digests(sysID string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	set := map[string]bool{}
	for _, d := range a.files[sysID] {
		set[d] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// distinct is the sorted set of ds.
func distinct(ds []string) []string {
	return slices.Compact(slices.Sorted(slices.Values(ds)))
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
