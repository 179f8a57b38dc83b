// Package broker owns the bridge's connection to NATS JetStream: it starts the
// embedded server when no URL is configured, connects with endless reconnects,
// and creates or updates the streams and buckets the bridge needs.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

// EmbeddedConfig configures the embedded JetStream server.
type EmbeddedConfig struct {
	Listen  string // host:port, e.g. 127.0.0.1:4222; port 0 or -1 picks a free one
	DataDir string // the file store lives in DataDir/jetstream
	Logger  *slog.Logger
}

// StartEmbedded starts a single-node JetStream server and waits until it
// accepts connections. Shut it down with Shutdown + WaitForShutdown.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen port %q: not a number", portStr)
	}
	if port == 0 {
		port = -1
	} else {
		// nats-server reports a busy port only in its (silenced) log and
		// then never becomes ready; find out now and say so.
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS cannot listen on %s: %v (another bridge or nats-server? set BRIDGE_EMBEDDED_NATS_LISTEN, or BRIDGE_NATS_URL to use that server)", cfg.Listen, errors.Unwrap(err))
		}
		_ = l.Close()
	}
	opts := &server.Options{
		ServerName: "nowbridge-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true, // the bridge handles signals and shuts the server down itself
		NoLog:      true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not become ready on %s within 15s (is the port in use? set BRIDGE_EMBEDDED_NATS_LISTEN)", cfg.Listen)
	}
	if cfg.Logger != nil {
		cfg.Logger.Info("embedded NATS JetStream started", "url", s.ClientURL(), "store", cfg.DataDir)
	}
	return s, nil
}

// Reconnect pacing: the first retry comes after reconnectFirst, each next
// one after twice as long, up to reconnectMax. Each wait is drawn from its
// upper half, so a fleet of bridges does not reconnect in step, and no wait
// is longer than reconnectMax: once the server is back, service resumes
// within reconnectMax plus one handshake. A failed attempt on loopback or a
// LAN costs a refused dial, so retrying this often is cheap for the server.
const (
	reconnectFirst = 50 * time.Millisecond
	reconnectMax   = 500 * time.Millisecond
)

// reconnectDelay is the wait before reconnect attempt n (1, 2, ...), for a
// random draw u in [0, 1).
func reconnectDelay(attempt int, u float64) time.Duration {
	d := reconnectMax
	if attempt < 16 {
		d = min(reconnectFirst<<max(attempt-1, 0), reconnectMax)
	}
	return d/2 + time.Duration(u*float64(d/2))
}

// ConnectOption tunes Connect.
type ConnectOption func(*connectOptions)

type connectOptions struct {
	slowConsumer func()
}

// OnSlowConsumer has f called each time nats.go reports a subscription of
// the connection as a slow consumer: its buffer was full and the client
// dropped messages (JetStream redelivers them only after the ack wait).
// serve counts them in bridge_nats_slow_consumers_total; it should stay 0.
func OnSlowConsumer(f func()) ConnectOption {
	return func(o *connectOptions) { o.slowConsumer = f }
}

// Connect dials NATS and keeps reconnecting forever with jittered backoff
// bounded by reconnectMax, so a restarted server or a cluster failover never
// needs a bridge restart and is used again within a second of being back.
func Connect(ctx context.Context, url, name string, logger *slog.Logger, options ...ConnectOption) (*nats.Conn, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var co connectOptions
	for _, o := range options {
		o(&co)
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(reconnectFirst),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			return reconnectDelay(attempts, rand.Float64())
		}),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil { // our own Close or Drain
				logger.Debug("NATS connection closed")
				return
			}
			logger.Warn("NATS disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			if errors.Is(err, nats.ErrSlowConsumer) {
				if co.slowConsumer != nil {
					co.slowConsumer()
				}
				dropped := 0
				if sub != nil {
					dropped, _ = sub.Dropped()
				}
				logger.Error("NATS slow consumer: a subscription's buffer was full and messages were dropped; JetStream redelivers them after the ack wait",
					"subject", subject, "dropped", dropped, "err", err)
				return
			}
			logger.Error("NATS async error", "subject", subject, "err", err)
		}),
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	// With RetryOnFailedConnect the first dial may still be pending; wait a
	// little so start-up fails loudly on a wrong URL rather than hanging.
	deadline := time.Now().Add(10 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: not reachable within 10s", redactURL(url))
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nc, nil
}

func redactURL(u string) string {
	// Credentials in a URL must never reach a log line or error message.
	for i := 0; i+3 <= len(u); i++ {
		if u[i:i+3] == "://" {
			rest := u[i+3:]
			for j := 0; j < len(rest); j++ {
				if rest[j] == '@' {
					return u[:i+3] + "[redacted]@" + rest[j+1:]
				}
				if rest[j] == '/' {
					break
				}
			}
			break
		}
	}
	return u
}

// EnsureStreams creates each stream or updates it to the given config.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfgs []jetstream.StreamConfig) error {
	for _, cfg := range cfgs {
		if err := retrying(ctx, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateStream(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("create or update stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// EnsureBuckets creates each KV bucket or updates it.
func EnsureBuckets(ctx context.Context, js jetstream.JetStream, cfgs []jetstream.KeyValueConfig) error {
	for _, cfg := range cfgs {
		if err := retrying(ctx, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateKeyValue(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("create or update KV bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// EnsureObjectStores creates each object store bucket or updates it.
func EnsureObjectStores(ctx context.Context, js jetstream.JetStream, cfgs []jetstream.ObjectStoreConfig) error {
	for _, cfg := range cfgs {
		if err := retrying(ctx, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateObjectStore(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("create or update object store %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// ensureAttempt bounds one create-or-update request. A JetStream cluster
// that is still electing its leaders (every node just started, or one just
// died) may answer "temporarily unavailable", or drop a request without
// answering: such a request is retried until ctx ends instead of being
// waited for until then.
var ensureAttempt = 5 * time.Second

// retrying calls call until it succeeds, fails for good, or ctx ends (then
// the last error is returned).
func retrying(ctx context.Context, call func(context.Context) error) error {
	delay := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, ensureAttempt)
		err := call(actx)
		cancel()
		if err == nil || !unavailable(err) || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1)) // jittered: replicas starting together spread out
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// unavailable reports whether err says JetStream could not answer yet
// rather than that it refused the request.
func unavailable(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Code == 503 // e.g. 10008 JetStream system temporarily unavailable
	}
	return false
}

// EnsureAll creates the bridge's streams and buckets (SPEC §3), the
// attachments' object store included.
func EnsureAll(ctx context.Context, js jetstream.JetStream, opts events.StreamOptions) error {
	if err := EnsureStreams(ctx, js, events.Streams(opts)); err != nil {
		return err
	}
	if err := EnsureBuckets(ctx, js, events.Buckets(opts)); err != nil {
		return err
	}
	return EnsureObjectStores(ctx, js, events.ObjectStores(opts))
}

// ErrNotReady is returned by Ready when NATS or a stream is missing.
var ErrNotReady = errors.New("not ready")

// Ready reports whether the connection is up and every named stream exists.
func Ready(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, streams ...string) error {
	if !nc.IsConnected() {
		return fmt.Errorf("%w: NATS is %s", ErrNotReady, nc.Status())
	}
	for _, name := range streams {
		if _, err := js.Stream(ctx, name); err != nil {
			return fmt.Errorf("%w: stream %s: %v", ErrNotReady, name, err)
		}
	}
	return nil
}
