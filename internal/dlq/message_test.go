package dlq

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// TestNewMessage_RoundTripsThroughTheStream builds a dead letter from a real
// consumed message that carries server-interpreted headers and a multi-line
// failure, stores it, and reads it back as an operator would.
func TestNewMessage_RoundTripsThroughTheStream(t *testing.T) {
	js := setup(t)
	ctx := context.Background()
	orig := nats.NewMsg(events.SNSubject("incident", "update"))
	orig.Data = []byte(`{"table":"incident"}`)
	orig.Header.Set(events.HeaderMsgID, "incident:abc:4:update")
	orig.Header.Set("Nats-Expected-Stream", events.StreamSN) // must not reach the DLQ publish
	orig.Header.Set(events.HeaderSource, events.SourceWebhook)
	if _, err := js.PublishMsg(ctx, orig); err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, events.StreamSN, jetstream.OrderedConsumerConfig{})
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
	dl := NewMessage("apply", msg, meta, Failure{
		Reason:   "app answered 422:\nfield title\r\tis required",
		Status:   422,
		Hint:     "fix the app",
		Response: strings.Repeat("x", 5000),
	})
	ack, err := js.PublishMsg(ctx, dl)
	if err != nil {
		t.Fatalf("the dead letter must be storable in BRIDGE_DLQ: %v", err)
	}
	e, err := Get(ctx, js, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != "app answered 422: field title is required" || e.Status != 422 || e.Hint != "fix the app" {
		t.Errorf("entry = reason %q status %d hint %q", e.Reason, e.Status, e.Hint)
	}
	if e.Origin != "sn.incident.update" || e.Stream != events.StreamSN || e.OrigSeq != meta.Sequence.Stream {
		t.Errorf("origin = %s %s #%d, want sn.incident.update SN_EVENTS #%d", e.Origin, e.Stream, e.OrigSeq, meta.Sequence.Stream)
	}
	if got := e.Headers.Get(events.HeaderDLQOrigMsgID); got != "incident:abc:4:update" {
		t.Errorf("original msg id kept as %q", got)
	}
	if e.Headers.Get(events.HeaderSource) != events.SourceWebhook {
		t.Error("user headers of the original must be kept")
	}
	if r := e.Headers.Get(events.HeaderDLQResponse); len(r) > 2048+len("…") {
		t.Errorf("response header is %d bytes; it must be bounded", len(r))
	}
	// Storing the same dead letter twice (a crash before Term) keeps one.
	if ack2, err := js.PublishMsg(ctx, NewMessage("apply", msg, meta, Failure{Reason: "again"})); err != nil || !ack2.Duplicate {
		t.Errorf("second dead letter of one message: dup=%v err=%v, want a duplicate", ack2 != nil && ack2.Duplicate, err)
	}
}
