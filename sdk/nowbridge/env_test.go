package nowbridge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

func TestMain(m *testing.M) {
	// nats.go v1.55.0's ObjectStore.Put (PutAttachment) may leave its
	// private JetStream context's reconnect watcher blocked for good (see
	// internal/attach's TestMain).
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"))
}

// env is one test's real nats-server with the bridge's streams, and an SDK
// client on it.
type env struct {
	t      testing.TB
	srv    *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	client *nowbridge.Client
	log    *slog.Logger
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := newBareEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, e.js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	ensureResultsStream(t, e.js)
	return e
}

// newBareEnv is a server without the bridge's streams: the bridge never ran.
func newBareEnv(t testing.TB) *env {
	t.Helper()
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	log := testLogger(t)
	c, err := nowbridge.New(js, nowbridge.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: s, nc: nc, js: js, client: c, log: log}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// ensureResultsStream creates BRIDGE_RESULTS as the bridge defines it, or
// with the contract's subjects where this tree's bridge does not yet.
func ensureResultsStream(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.Stream(ctx, events.StreamResults); err == nil {
		return
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatal(err)
	}
	cfg := jetstream.StreamConfig{Name: events.StreamResults, Subjects: []string{events.ResultsSubjects}, Duplicates: time.Hour, Storage: jetstream.FileStorage}
	for _, s := range events.Streams(events.StreamOptions{}) {
		if s.Name == events.StreamResults {
			cfg = s
		}
	}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// run starts f in the background until the returned stop (or the test's
// end); f must return nil after its context ends.
func (e *env) run(f func(ctx context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					e.t.Errorf("stopped with an error: %v", err)
				}
			case <-time.After(15 * time.Second):
				e.t.Errorf("did not stop within 15s of its context ending")
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

func sysID(i int) string { return fmt.Sprintf("%032x", i+1) }

// applyMessage is what the bridge's apply pipeline hands the app for one
// ServiceNow version of an incident.
func applyMessage(sys string, version int64, action string, fields nowbridge.Fields) *apply.Message {
	return &apply.Message{
		Entity: "ticket", Action: action,
		AppChange: events.AppChange{
			ExternalID: "", SysID: sys, Number: "INC" + sys[25:], Table: "incident",
			Version: version, UpdatedAt: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC), Fields: fields,
		},
		MsgID: events.ApplyMsgID("incident", sys, version, action),
	}
}

// publishApply hands messages to BRIDGE_APPLY through the bridge's own NATS
// applier.
func (e *env) publishApply(msgs ...*apply.Message) {
	e.t.Helper()
	a := &apply.NATSApplier{JS: e.js}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range msgs {
		if _, err := a.Apply(ctx, m); err != nil {
			e.t.Fatalf("NATS applier: %v", err)
		}
	}
}

// consumerInfo reads a durable consumer's state.
func (e *env) consumerInfo(stream, durable string) *jetstream.ConsumerInfo {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, stream, durable)
	if err != nil {
		e.t.Fatalf("consumer %s on %s: %v", durable, stream, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info
}

// waitAcked waits until the consumer acknowledged (or terminated)
// everything up to the stream's last message.
func (e *env) waitAcked(stream, durable string, timeout time.Duration) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	si, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	last := si.State.LastSeq
	info := &jetstream.ConsumerInfo{}
	waitFor(e.t, timeout, func() bool {
		c, err := e.js.Consumer(ctx, stream, durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return false // not created yet
		}
		if err == nil {
			info, err = c.Info(ctx)
		}
		if err != nil {
			e.t.Fatalf("consumer %s on %s: %v", durable, stream, err)
		}
		return info.AckFloor.Stream >= last && info.NumAckPending == 0
	}, func() string {
		return fmt.Sprintf("consumer %s: ack floor %d, %d pending acks; want everything up to %d acknowledged", durable, info.AckFloor.Stream, info.NumAckPending, last)
	})
}

// waitFor polls cond until it holds or fails the test with why().
func waitFor(t testing.TB, timeout time.Duration, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, why())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
