package dlq

import (
	"context"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func setup(t *testing.T) jetstream.JetStream {
	t.Helper()
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	if err := broker.EnsureAll(context.Background(), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return js
}

// deadLetter stores an app change in APP_EVENTS and a dead letter of it the
// way the writeback consumer does (original headers kept, DLQ headers and
// Nats-Msg-Id set).
func deadLetter(t *testing.T, js jetstream.JetStream, pipeline, id string, keepOrigID bool) uint64 {
	t.Helper()
	ctx := context.Background()
	body := []byte(`{"external_id":"` + id + `","version":3,"fields":{"title":"x"}}`)
	orig := nats.NewMsg(events.AppSubject("ticket", "upsert"))
	orig.Data = body
	origID := events.AppMsgID("ticket", id, 3, "upsert")
	orig.Header.Set(events.HeaderMsgID, origID)
	ack, err := js.PublishMsg(ctx, orig)
	if err != nil {
		t.Fatal(err)
	}
	dl := nats.NewMsg(events.DLQSubject(pipeline))
	dl.Data = body
	dl.Header.Set(events.HeaderMsgID, origID)
	if !keepOrigID {
		dl.Header.Set(events.HeaderMsgID, pipeline+":APP_EVENTS:"+strconv.FormatUint(ack.Sequence, 10))
	}
	dl.Header.Set(events.HeaderDLQOrigMsgID, origID)
	dl.Header.Set(events.HeaderDLQReason, "PATCH incident: 403 Operation Failed")
	dl.Header.Set(events.HeaderDLQStatus, "403")
	dl.Header.Set(events.HeaderDLQSubject, orig.Subject)
	dl.Header.Set(events.HeaderDLQStream, events.StreamApp)
	dl.Header.Set(events.HeaderDLQSeq, strconv.FormatUint(ack.Sequence, 10))
	dack, err := js.PublishMsg(ctx, dl)
	if err != nil {
		t.Fatal(err)
	}
	return dack.Sequence
}

func msgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestRetry_StoredAgainInsideTheDuplicateWindowAndRemoved(t *testing.T) {
	js := setup(t)
	ctx := context.Background()
	// One dead letter that kept the original Nats-Msg-Id, one that got the
	// consumer's own: neither retry may be dropped as a duplicate.
	a := deadLetter(t, js, "writeback", "TCK-1", true)
	b := deadLetter(t, js, "writeback", "TCK-2", false)
	c := deadLetter(t, js, "apply", "TCK-3", false)

	entries, err := List(ctx, js, "writeback")
	if err != nil || len(entries) != 2 || entries[0].Record != "ticket/TCK-1 v3" || entries[0].Status != 403 {
		t.Fatalf("List = %+v, %v", entries, err)
	}
	res, err := Retry(ctx, js, a)
	if err != nil || res.Duplicate || res.Stream != events.StreamApp {
		t.Fatalf("Retry(%d) = %+v, %v; want a new message in APP_EVENTS", a, res, err)
	}
	if got := msgs(t, js, events.StreamApp); got != 4 {
		t.Fatalf("APP_EVENTS holds %d messages, want 4 (3 originals + the retry)", got)
	}
	// The retry names its dead letter and keeps the id the message first had.
	st, err := js.Stream(ctx, events.StreamApp)
	if err != nil {
		t.Fatal(err)
	}
	again, err := st.GetMsg(ctx, res.StreamSeq)
	if err != nil {
		t.Fatal(err)
	}
	if of, first := again.Header.Get(HeaderRetryOf), again.Header.Get(HeaderRetryMsgID); of != "BRIDGE_DLQ:"+strconv.FormatUint(a, 10) || first != events.AppMsgID("ticket", "TCK-1", 3, "upsert") || again.Header.Get(events.HeaderMsgID) != res.MsgID {
		t.Errorf("retried message headers %v; want %s BRIDGE_DLQ:%d, %s the first id, its own Nats-Msg-Id %s", again.Header, HeaderRetryOf, a, HeaderRetryMsgID, res.MsgID)
	}
	if _, err := Get(ctx, js, a); err == nil {
		t.Fatal("retried dead letter still in BRIDGE_DLQ")
	}
	if _, err := Retry(ctx, js, a); err == nil {
		t.Fatal("retrying a removed dead letter succeeded")
	}
	got, err := RetryAll(ctx, js, "writeback")
	if err != nil || len(got) != 1 || got[0].Seq != b {
		t.Fatalf("RetryAll(writeback) = %+v, %v", got, err)
	}
	counts, err := Count(ctx, js)
	if err != nil || counts["writeback"] != 0 || counts["apply"] != 1 {
		t.Fatalf("Count = %v, %v; want only the apply dead letter left", counts, err)
	}
	// Republishing the same dead letter twice (crash before removal) is
	// stored once.
	e, err := Get(ctx, js, c)
	if err != nil {
		t.Fatal(err)
	}
	before := msgs(t, js, events.StreamApp)
	for range 2 {
		if _, err := retry(ctx, js, e); err != nil {
			t.Fatal(err)
		}
	}
	if after := msgs(t, js, events.StreamApp); after != before+1 {
		t.Fatalf("two retries of one dead letter stored %d messages, want 1", after-before)
	}
	n, err := Purge(ctx, js, "")
	if err != nil || n != 0 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
}

func TestPurge_OnlyThePipelineAsked(t *testing.T) {
	js := setup(t)
	ctx := context.Background()
	deadLetter(t, js, "writeback", "TCK-1", false)
	deadLetter(t, js, "writeback", "TCK-2", false)
	deadLetter(t, js, "apply", "TCK-3", false)
	n, err := Purge(ctx, js, "writeback")
	if err != nil || n != 2 {
		t.Fatalf("Purge(writeback) = %d, %v; want 2", n, err)
	}
	left, err := List(ctx, js, "")
	if err != nil || len(left) != 1 || left[0].Pipeline != "apply" {
		t.Fatalf("left = %+v, %v", left, err)
	}
}
