package apply

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// NATSApplier publishes to BRIDGE_APPLY on bridge.apply.<entity>.<action>
// with Nats-Msg-Id = the message id, so a version published twice (a
// redelivery after a crash between publish and ack) is stored once.
type NATSApplier struct {
	JS jetstream.JetStream
}

// Name implements Applier.
func (a *NATSApplier) Name() string { return "nats" }

// Apply implements Applier: the app has the message once BRIDGE_APPLY acks it.
func (a *NATSApplier) Apply(ctx context.Context, m *Message) (Result, error) {
	body, err := m.Body()
	if err != nil {
		return Result{}, permanentf("encode %s: %v", m.MsgID, err)
	}
	msg := &nats.Msg{Subject: m.Subject(), Data: body, Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, m.MsgID)
	ack, err := a.JS.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamApply))
	if err != nil {
		return Result{}, fmt.Errorf("publish %s to %s: %w", m.MsgID, events.StreamApply, err) // consume.Classify decides
	}
	return Result{Duplicate: ack.Duplicate, Seq: ack.Sequence}, nil
}
