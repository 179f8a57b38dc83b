package broker

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartEmbedded_RandomPortFileStore(t *testing.T) {
	dir := t.TempDir()
	s, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	if !s.JetStreamEnabled() {
		t.Fatal("embedded server has JetStream off")
	}
	if !strings.HasPrefix(s.ClientURL(), "nats://127.0.0.1:") || strings.HasSuffix(s.ClientURL(), ":0") {
		t.Fatalf("client URL %q, want a real loopback port", s.ClientURL())
	}
	nc, err := Connect(context.Background(), s.ClientURL(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := EnsureAll(context.Background(), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	if st.CachedInfo().Config.Storage != jetstream.FileStorage {
		t.Errorf("SN_EVENTS storage %v, want file", st.CachedInfo().Config.Storage)
	}
}

func TestStartEmbedded_BadListenNamesTheSetting(t *testing.T) {
	for _, listen := range []string{"4222", "127.0.0.1:http"} {
		_, err := StartEmbedded(EmbeddedConfig{Listen: listen, DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "embedded NATS listen") {
			t.Errorf("%q: %v, want an error about the embedded NATS listen address", listen, err)
		}
	}
}

func TestEnsureAll_CreatesThenUpdatesIdempotently(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	for range 2 {
		if err := EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, cfg := range events.Streams(events.StreamOptions{}) {
		st, err := js.Stream(ctx, cfg.Name)
		if err != nil {
			t.Fatalf("stream %s: %v", cfg.Name, err)
		}
		got := st.CachedInfo().Config
		if !equalStrings(got.Subjects, cfg.Subjects) || got.Duplicates != cfg.Duplicates || got.MaxAge != cfg.MaxAge {
			t.Errorf("stream %s: subjects %v dup %s age %s, want %v %s %s", cfg.Name, got.Subjects, got.Duplicates, got.MaxAge, cfg.Subjects, cfg.Duplicates, cfg.MaxAge)
		}
	}
	for _, b := range events.Buckets(events.StreamOptions{}) {
		if _, err := js.KeyValue(ctx, b.Bucket); err != nil {
			t.Errorf("bucket %s: %v", b.Bucket, err)
		}
	}
	// A changed option updates the existing stream in place.
	if err := EnsureAll(ctx, js, events.StreamOptions{DuplicateWindow: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(ctx, events.StreamSN)
	if d := st.CachedInfo().Config.Duplicates; d != 10*time.Minute {
		t.Errorf("duplicate window after update %s, want 10m", d)
	}
}

func TestEnsureAll_ReplicasBeyondTheServersFails(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	err := EnsureAll(context.Background(), js, events.StreamOptions{Replicas: 3})
	if err == nil || !strings.Contains(err.Error(), events.StreamSN) {
		t.Fatalf("3 replicas on one node: %v, want an error naming the stream", err)
	}
}

func TestReady_ConnectionAndStreams(t *testing.T) {
	opts := natstest.Options(t.TempDir())
	s := natstest.RunServerWithOptions(t, opts)
	ctx := context.Background()
	nc, err := Connect(ctx, s.ClientURL(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := Ready(ctx, nc, js, events.StreamSN); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), events.StreamSN) {
		t.Fatalf("before EnsureAll: %v, want ErrNotReady naming SN_EVENTS", err)
	}
	if err := EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Ready(ctx, nc, js, events.StreamSN, events.StreamApp); err != nil {
		t.Fatalf("after EnsureAll: %v", err)
	}
	s.Shutdown()
	s.WaitForShutdown()
	waitUntil(t, "the client to notice the outage", func() bool { return !nc.IsConnected() })
	if err := Ready(ctx, nc, js, events.StreamSN); !errors.Is(err, ErrNotReady) {
		t.Fatalf("NATS down: %v, want ErrNotReady", err)
	}
	// Connect reconnects on its own once the server is back.
	natstest.Restart(t, s, opts)
	waitUntil(t, "the reconnect", func() bool { return Ready(ctx, nc, js, events.StreamSN) == nil })
}

func TestConnect_UnreachableFailsOnCancel(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Connect(ctx, "nats://user:hunter2@"+addr, "t", nil); err == nil {
		t.Fatal("connected to nothing")
	} else if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error reveals the password: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("Connect ignored the context for %s", time.Since(start))
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":              "nats://127.0.0.1:4222",
		"nats://user:pass@host:4222":         "nats://[redacted]@host:4222",
		"tls://token@host:4222/x@y":          "tls://[redacted]@host:4222/x@y",
		"nats://host:4222/path@not-userinfo": "nats://host:4222/path@not-userinfo",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDeployServerConf_IsAValidJetStreamNode(t *testing.T) {
	opts, err := server.ProcessConfigFile("../../deploy/nats/nats-server.conf")
	if err != nil {
		t.Fatalf("deploy/nats/nats-server.conf: %v", err)
	}
	if !opts.JetStream || opts.StoreDir == "" || opts.Port != 4222 || opts.Host != "127.0.0.1" {
		t.Fatalf("conf: jetstream %v store %q listen %s:%d, want JetStream on 127.0.0.1:4222 with a store", opts.JetStream, opts.StoreDir, opts.Host, opts.Port)
	}
	if opts.MaxPayload < 2<<20 {
		t.Errorf("max_payload %d is below the streams' 2 MiB max_msg_size", opts.MaxPayload)
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStartEmbedded_BusyPortFailsAtOnce(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	start := time.Now()
	_, err = StartEmbedded(EmbeddedConfig{Listen: busy.Addr().String(), DataDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "BRIDGE_EMBEDDED_NATS_LISTEN") || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("busy port: %v, want an error naming the address and the setting", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("took %s to notice the busy port", time.Since(start))
	}
}

func TestReconnectDelay_JitteredAndNeverAboveTheCap(t *testing.T) {
	for _, c := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 25 * time.Millisecond, 50 * time.Millisecond},
		{2, 50 * time.Millisecond, 100 * time.Millisecond},
		{3, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 200 * time.Millisecond, 400 * time.Millisecond},
		{5, 250 * time.Millisecond, 500 * time.Millisecond},
		{40, 250 * time.Millisecond, 500 * time.Millisecond},
		{1 << 30, 250 * time.Millisecond, 500 * time.Millisecond},
	} {
		lo, hi := reconnectDelay(c.attempt, 0), reconnectDelay(c.attempt, 0.999999)
		if lo != c.min || hi > c.max || hi < c.max-time.Millisecond {
			t.Errorf("attempt %d: waits %s..%s, want %s..%s", c.attempt, lo, hi, c.min, c.max)
		}
	}
	// A fleet spreads out: the draws of one attempt cover the upper half.
	seen := map[time.Duration]bool{}
	for i := range 100 {
		seen[reconnectDelay(10, float64(i)/100)] = true
	}
	if len(seen) < 50 {
		t.Errorf("only %d distinct waits among 100 draws: the jitter does not spread a fleet", len(seen))
	}
}

// TestConnect_ResumesWithinASecondOfTheServerReturning: after an outage long
// enough for the backoff to reach its cap, the connection is back well
// within a second of the server accepting connections again (issue 16: up to
// 5.7s before, with waits growing to 8s).
func TestConnect_ResumesWithinASecondOfTheServerReturning(t *testing.T) {
	opts := natstest.Options(t.TempDir())
	s := natstest.RunServerWithOptions(t, opts)
	nc, err := Connect(context.Background(), s.ClientURL(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s.Shutdown()
	s.WaitForShutdown()
	waitUntil(t, "the disconnect", func() bool { return !nc.IsConnected() })
	time.Sleep(3 * time.Second) // several attempts: the waits reach their cap
	natstest.Restart(t, s, opts)
	back := time.Now() // Restart returns once the server accepts connections
	for !nc.IsConnected() {
		if time.Since(back) > 5*time.Second {
			t.Fatal("not reconnected 5s after the server came back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Since(back); d > time.Second {
		t.Errorf("reconnected %s after the server came back, want within 1s (waits are capped at %s)", d, reconnectMax)
	} else {
		t.Logf("reconnected %s after the server came back", d.Round(time.Millisecond))
	}
}

// Stream set-up rides out a JetStream that cannot answer yet (a cluster
// electing its leaders) and gives up at once on a refusal.
func TestRetrying_UnavailableUntilReadyRefusalAtOnce(t *testing.T) {
	defer func(d time.Duration) { ensureAttempt = d }(ensureAttempt)
	ensureAttempt = 50 * time.Millisecond
	calls := 0
	err := retrying(t.Context(), func(ctx context.Context) error {
		calls++
		switch calls {
		case 1:
			<-ctx.Done() // a request the cluster dropped
			return ctx.Err()
		case 2:
			return &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}
		case 3:
			return jetstream.ErrJetStreamNotEnabled // no responders yet
		}
		return nil
	})
	if err != nil || calls != 4 {
		t.Fatalf("retrying = %v after %d calls, want success on the 4th", err, calls)
	}

	calls = 0
	refusal := &jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use with a different configuration"}
	if err := retrying(t.Context(), func(context.Context) error { calls++; return refusal }); !errors.Is(err, refusal) || calls != 1 {
		t.Fatalf("a refusal: %v after %d calls, want it returned after one", err, calls)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = retrying(ctx, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("never available: %v after %s, want the deadline's error when ctx ends", err, time.Since(start))
	}
}
