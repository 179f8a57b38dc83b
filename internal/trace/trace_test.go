package trace

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEntryJSON_DecodesToTheEntryItEncodes(t *testing.T) {
	at := time.Date(2026, 11, 28, 10, 0, 0, 123456789, time.UTC)
	for _, e := range []Entry{
		{Time: at, Stage: StageApply, Decision: Applied, Version: 0},
		{Time: at, Stage: StageWriteback, Source: SourceApp, Table: "incident", SysID: strings.Repeat("a", 32), Number: "INC0010006",
			Entity: "ticket", ExternalID: "TCK \"1\"\n\\ é \u2028", Action: "upsert", Version: 7, AppVersion: 3, Decision: Conflict,
			Reason: "state: ServiceNow \"2\" <b>&</b>\t\x01", Hint: "fix it", Stored: at.Add(-time.Second),
			Refs: []Ref{{Stream: events.StreamResults, Seq: 9}, {Stream: events.StreamApp, Seq: 12}}},
		{Time: at, Stage: StageDLQ, Decision: Rejected, Version: NoVersion, ExternalID: "bad \xff\xfe utf8"},
	} {
		got, err := decodeEntry(e.appendJSON(nil))
		if err != nil {
			t.Fatalf("%+v: the encoding does not decode: %v\n%s", e, err, e.appendJSON(nil))
		}
		want := e
		var viaStd Entry
		std, _ := json.Marshal(e)
		if err := json.Unmarshal(std, &viaStd); err != nil {
			t.Fatal(err)
		}
		want.ExternalID, want.Reason = viaStd.ExternalID, viaStd.Reason // json.Marshal's invalid UTF-8 handling
		if !reflect.DeepEqual(got, want) {
			t.Errorf("decoded entry differs:\n got %+v\nwant %+v", got, want)
		}
	}
}

// FuzzEntryJSON holds the hand-written encoder to encoding/json: every
// string decodes back as json.Marshal would have written it.
func FuzzEntryJSON(f *testing.F) {
	f.Add("TCK-1", "reason \"quoted\"\n", "\xff")
	f.Add("", "\u2028<>&", "é")
	f.Fuzz(func(t *testing.T, ext, reason, hint string) {
		e := Entry{Time: time.Unix(1700000000, 5).UTC(), Stage: StageApply, ExternalID: ext, Reason: reason, Hint: hint, Decision: Applied, Version: 3}
		b := e.appendJSON(nil)
		if !json.Valid(b) {
			t.Fatalf("not JSON: %q", b)
		}
		got, err := decodeEntry(b)
		if err != nil {
			t.Fatal(err)
		}
		std, _ := json.Marshal(e)
		var want Entry
		if err := json.Unmarshal(std, &want); err != nil {
			t.Fatal(err)
		}
		if got.ExternalID != want.ExternalID || got.Reason != want.Reason || got.Hint != want.Hint {
			t.Fatalf("strings differ from encoding/json's: got %q %q %q, want %q %q %q", got.ExternalID, got.Reason, got.Hint, want.ExternalID, want.Reason, want.Hint)
		}
	})
}

func TestToken_PlainIdsAsTheyAreOthersEncodedAndDistinct(t *testing.T) {
	for id, want := range map[string]string{
		"TCK-1042":   "TCK-1042",
		"INC0010006": "INC0010006",
		"a.b":        "=YS5i",
		"x y":        "=eCB5",
		"=YS5i":      "=PVlTNWk",
		"":           "=",
	} {
		if got := Token(id); got != want {
			t.Errorf("Token(%q) = %q, want %q", id, got, want)
		}
	}
	if Token("a.b") == Token("a_b") {
		t.Error("two ids share a token")
	}
}

// env is a JetStream server with the bridge's streams and buckets.
type env struct {
	s      *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	states *state.Store
	links  *state.Links
}

func newEnv(t testing.TB) *env {
	t.Helper()
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	ctx := context.Background()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	states, links, err := state.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return &env{s: s, nc: nc, js: js, states: states, links: links}
}

func (e *env) recorder(t testing.TB) *Recorder {
	t.Helper()
	r, err := NewRecorder(RecorderConfig{Conn: e.nc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// publish stores an event in SN_EVENTS and returns its sequence.
func (e *env) publish(t testing.TB, subject string, header nats.Header, body string) uint64 {
	t.Helper()
	ack, err := e.js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Header: header, Data: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// waitEntries waits until the record's subject holds n entries.
func (e *env) waitEntries(t testing.TB, subject string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := e.js.Stream(context.Background(), events.StreamTrace)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
		if err != nil {
			t.Fatal(err)
		}
		if got := int(info.State.Subjects[subject]); got >= n {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("%s holds %d entries after 10s, want %d", subject, got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const sysA = "9d385017c611228701d22104cc95c371"

func TestStore_TimelineOfARecordByNumberSysIDAndExternalID(t *testing.T) {
	e := newEnv(t)
	rec := e.recorder(t)
	ctx := context.Background()
	h := nats.Header{}
	h.Set(events.HeaderMsgID, "incident:"+sysA+":1:update")
	h.Set(events.HeaderSource, events.SourceWebhook)
	snSeq := e.publish(t, "sn.incident.update", h, `{"table":"incident","sys_id":"`+sysA+`","sys_mod_count":"1","record":{"number":"INC0010006"}}`)
	applySeq := e.publish(t, "bridge.apply.ticket.update", nil, `{"external_id":"TCK-1","version":1}`)
	if err := e.links.Link(ctx, "ticket", "TCK-1", "incident", sysA); err != nil {
		t.Fatal(err)
	}
	if err := e.states.Put(ctx, "incident", sysA, state.Record{Version: 1, Fields: map[string]string{"number": "INC0010006", "state": "2"}}, 0); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-time.Minute)
	stored := t0.Add(-50 * time.Millisecond)
	rec.Record(Entry{Time: t0.Add(-time.Second), Stage: StageIngest, Source: SourceWebhook, Table: "incident", SysID: sysA, Number: "INC0010006",
		Version: 0, Decision: EchoSuppressed, Reason: "the writeback wrote this version itself"})
	rec.Record(Entry{Time: t0, Stage: StageApply, Source: SourceWebhook, Table: "incident", SysID: sysA, Number: "INC0010006",
		Entity: "ticket", ExternalID: "TCK-1", Version: 1, Decision: Applied, Stored: stored,
		Refs: []Ref{{Stream: events.StreamApply, Seq: applySeq}, {Stream: events.StreamSN, Seq: snSeq}}})
	// Before the link: recorded under the app id.
	rec.Record(Entry{Time: t0.Add(-2 * time.Second), Stage: StageDLQ, Source: SourceApp, Entity: "ticket", ExternalID: "TCK-1",
		Version: NoVersion, AppVersion: 1, Decision: Rejected, Reason: "403 Operation Failed", Hint: "grant write",
		Refs: []Ref{{Stream: events.StreamDLQ, Seq: 4242}}})
	e.waitEntries(t, RecordSubject("incident", sysA), 2)
	e.waitEntries(t, AppSubject("ticket", "TCK-1"), 1)
	e.waitEntries(t, NumberSubject("INC0010006"), 1)

	store := NewStore(e.js, e.states, e.links)
	var first *Timeline
	for _, key := range []string{"INC0010006", sysA, "TCK-1", " TCK-1 "} {
		tl, err := store.Timeline(ctx, key)
		if err != nil {
			t.Fatalf("Timeline(%q): %v", key, err)
		}
		if tl.Table != "incident" || tl.SysID != sysA || tl.Number != "INC0010006" || tl.Entity != "ticket" || tl.ExternalID != "TCK-1" {
			t.Errorf("Timeline(%q) names %s/%s %s %s %s; want incident/%s INC0010006 ticket TCK-1", key, tl.Table, tl.SysID, tl.Number, tl.Entity, tl.ExternalID, sysA)
		}
		if first == nil {
			first = tl
		} else if !reflect.DeepEqual(stepsOf(tl), stepsOf(first)) {
			t.Errorf("Timeline(%q) differs from the number's:\n%v\n%v", key, stepsOf(tl), stepsOf(first))
		}
	}
	want := []string{"dlq/rejected", "ingest/echo_suppressed", "ingest/stored", "apply/applied"}
	if got := stepsOf(first); !reflect.DeepEqual(got, want) {
		t.Fatalf("steps = %v, want %v (time order, the stored step from the apply entry)", got, want)
	}
	st := first.Steps[2]
	if !st.Time.Equal(stored) || st.Source != SourceWebhook || st.Stream != events.StreamSN || st.Seq != snSeq || !strings.Contains(string(st.Message), "INC0010006") {
		t.Errorf("stored step = %+v; want SN_EVENTS #%d at %v from the webhook, with the event's body", st, snSeq, stored)
	}
	ap := first.Steps[3]
	if ap.Stream != events.StreamApply || ap.Seq != applySeq || !strings.Contains(string(ap.Message), `"TCK-1"`) {
		t.Errorf("apply step = %+v; want BRIDGE_APPLY #%d and the app's message", ap, applySeq)
	}
	if dl := first.Steps[0]; !dl.MessageGone || dl.Message != nil || dl.Hint != "grant write" {
		t.Errorf("dead letter step = %+v; want its message reported gone (BRIDGE_DLQ #4242 was never stored) and the hint", dl)
	}
	rs, ok := first.State.(RecordState)
	if !ok || rs.State == nil || rs.State.Version != 1 || rs.Link == nil || rs.Link.ExternalID != "TCK-1" {
		t.Errorf("state = %#v; want bridge_state v1 and the link to TCK-1", first.State)
	}
	if table, sysID, err := store.Resolve(ctx, "INC0010006"); err != nil || table != "incident" || sysID != sysA {
		t.Errorf("Resolve(INC0010006) = %s %s %v", table, sysID, err)
	}

	var text bytes.Buffer
	if err := first.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"record        incident/" + sysA + "  INC0010006",
		"bridge_state  v1 number=INC0010006 state=2",
		"bridge_links  ticket TCK-1 <-> incident/" + sysA,
		"TIME  ", "STAGE", "DECISION", "REASON",
		"dlq     app      app v1   rejected         403 Operation Failed hint: grant write [BRIDGE_DLQ #4242 (no longer in the stream)]",
		"ingest  webhook  v0       echo_suppressed  the writeback wrote this version itself",
		"ingest  webhook  v1       stored           [SN_EVENTS #",
		"apply   webhook  v1       applied          [BRIDGE_APPLY #",
		"4 steps;",
	} {
		if !strings.Contains(text.String(), line) {
			t.Errorf("the text lacks %q:\n%s", line, text.String())
		}
	}
}

func stepsOf(tl *Timeline) []string {
	out := make([]string, 0, len(tl.Steps))
	for _, s := range tl.Steps {
		out = append(out, s.Stage+"/"+s.Decision)
	}
	return out
}

func TestStore_AnAppIDNeverLinkedHasTheAppsSideOnly(t *testing.T) {
	e := newEnv(t)
	rec := e.recorder(t)
	rec.Record(Entry{Stage: StageDLQ, Source: SourceApp, Entity: "ticket", ExternalID: "TCK 9/x", Version: NoVersion, AppVersion: 2, Decision: Rejected})
	e.waitEntries(t, AppSubject("ticket", "TCK 9/x"), 1)
	store := NewStore(e.js, e.states, e.links)
	tl, err := store.Timeline(context.Background(), "TCK 9/x")
	if err != nil {
		t.Fatal(err)
	}
	if tl.SysID != "" || tl.Entity != "ticket" || tl.ExternalID != "TCK 9/x" || len(tl.Steps) != 1 || tl.Steps[0].Decision != Rejected {
		t.Fatalf("timeline = %+v; want the app id's one step, no record", tl)
	}
	var text bytes.Buffer
	if err := tl.WriteText(&text); err != nil || !strings.Contains(text.String(), "record        none: ticket TCK 9/x is not linked") {
		t.Errorf("text: %v\n%s", err, text.String())
	}
	for _, key := range []string{"INC0099999", strings.Repeat("b", 32), "TCK-unknown"} {
		if _, err := store.Timeline(context.Background(), key); !errors.Is(err, ErrNotFound) {
			t.Errorf("Timeline(%q) = %v, want ErrNotFound", key, err)
		}
	}
}

// A sys_id the log never saw is still found through bridge_state.
func TestStore_SysIDFoundThroughBridgeState(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.states.Put(ctx, "change_request", sysA, state.Record{Version: 4}, 0); err != nil {
		t.Fatal(err)
	}
	tl, err := NewStore(e.js, e.states, e.links).Timeline(ctx, sysA)
	if err != nil {
		t.Fatal(err)
	}
	if tl.Table != "change_request" || len(tl.Steps) != 0 {
		t.Fatalf("timeline = %+v; want change_request with no steps", tl)
	}
	var text bytes.Buffer
	if err := tl.WriteText(&text); err != nil || !strings.Contains(text.String(), "no decisions recorded") || !strings.Contains(text.String(), "bridge_links  none") {
		t.Errorf("text: %v\n%s", err, text.String())
	}
}

// Recording never waits: with NATS gone, entries are dropped and counted,
// and Record returns at once.
func TestRecorder_NeverBlocksAndCountsWhatItCannotStore(t *testing.T) {
	e := newEnv(t)
	r, err := NewRecorder(RecorderConfig{Conn: e.nc, Buffer: 64, MaxPending: 16, FlushTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.s.Shutdown()
	e.s.WaitForShutdown()
	start := time.Now()
	const n = 100_000
	for range n {
		r.Record(Entry{Stage: StageApply, Table: "incident", SysID: sysA, Decision: Applied})
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("%d Record calls with NATS gone took %v: recording must not wait", n, d)
	}
	closeStart := time.Now()
	r.Close()
	if d := time.Since(closeStart); d > 5*time.Second {
		t.Errorf("Close took %v with NATS gone, want about the flush timeout (500ms)", d)
	}
	if got := testutil.ToFloat64(r.failures); got < n-64-16-1 {
		t.Errorf("bridge_trace_write_failures_total = %v after %d entries with NATS gone, want nearly all of them counted", got, n)
	}
	r.Record(Entry{Stage: StageApply, Table: "incident", SysID: sysA, Decision: Applied}) // after Close: dropped, no panic
}

// fetchOne stores a message in stream and reads it back through a consumer,
// as an engine holds it.
func (e *env) fetchOne(t *testing.T, stream, subject string, header nats.Header, body string) (jetstream.Msg, *jetstream.MsgMetadata) {
	t.Helper()
	seq := e.publish(t, subject, header, body)
	ctx := context.Background()
	cons, err := e.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	meta, err := msg.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return msg, meta
}

// The engine's decisions name the record from the message itself, and a
// retry is recorded at the first delivery and each doubling only.
func TestRecorder_ConsumerDecisionsNameTheRecord(t *testing.T) {
	e := newEnv(t)
	rec := e.recorder(t)
	h := nats.Header{}
	h.Set(events.HeaderMsgID, "incident:"+sysA+":4:update")
	h.Set("Bridge-Retry-Of", "BRIDGE_DLQ:7")
	snMsg, snMeta := e.fetchOne(t, events.StreamSN, "sn.incident.update", h, `{"record":{"number":"INC0010006"}}`)
	for _, delivered := range []uint64{1, 2, 3, 4, 5, 6, 7, 8} {
		m := *snMeta
		m.NumDelivered = delivered
		rec.Consumer(snMsg, &m, ConsumerDecision{Pipeline: "apply", Decision: Retrying, Reason: "server_error: 503", Status: 503})
	}
	rec.Consumer(snMsg, snMeta, ConsumerDecision{Pipeline: "apply", Decision: Rejected, Reason: "the app answered 422", Hint: "fix the mapping", Status: 422, DLQSeq: 3})
	appMsg, appMeta := e.fetchOne(t, events.StreamApp, "app.ticket.upsert", nil, `{"external_id":"TCK-7","version":5,"fields":{}}`)
	rec.Consumer(appMsg, appMeta, ConsumerDecision{Pipeline: "writeback", Decision: DeadLettered, Reason: "gave up after 10 deliveries"})

	e.waitEntries(t, RecordSubject("incident", sysA), 5)
	e.waitEntries(t, AppSubject("ticket", "TCK-7"), 1)
	store := NewStore(e.js, e.states, e.links)
	tl, err := store.Timeline(context.Background(), "INC0010006")
	if err != nil {
		t.Fatal(err)
	}
	var retries []string
	for _, s := range tl.Steps {
		switch s.Decision {
		case Retrying:
			retries = append(retries, strings.SplitN(s.Reason, ":", 2)[0])
			if s.Stage != StageApply || s.Source != SourceDLQRetry || s.Version != 4 || s.Action != "update" {
				t.Errorf("retry step %+v; want apply, dlq_retry (a retried dead letter), v4 update", s)
			}
		case Rejected:
			if s.Stage != StageDLQ || s.Stream != events.StreamDLQ || s.Seq != 3 || !strings.Contains(s.Reason, "apply: the app answered 422") || s.Hint != "fix the mapping" {
				t.Errorf("dead letter step %+v; want dlq, BRIDGE_DLQ #3, the reason and the hint", s)
			}
		}
	}
	if want := []string{"delivery 1", "delivery 2", "delivery 4", "delivery 8"}; !reflect.DeepEqual(retries, want) {
		t.Errorf("retries recorded at %v, want %v", retries, want)
	}
	tl, err = store.Timeline(context.Background(), "TCK-7")
	if err != nil {
		t.Fatal(err)
	}
	if len(tl.Steps) != 2 || tl.Steps[1].Decision != DeadLettered || tl.Steps[1].AppVersion != 5 || tl.Steps[1].Source != SourceApp {
		t.Errorf("TCK-7's steps = %+v; want its change stored, then dead-lettered (app v5)", tl.Steps)
	}
}
