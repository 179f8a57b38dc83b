// Package inbound is the HTTP receiver of ServiceNow business-rule webhooks:
// it verifies Standard Webhooks signatures, validates the events and stores
// each one in the SN_EVENTS stream, answering 202 only once JetStream has
// acknowledged every event of the body (SPEC §2).
//
// A body is all or nothing: every event is validated before anything is
// published. If a publish fails part-way, the receiver answers 503 even
// though some events may already be stored; that is safe because each event
// carries its Nats-Msg-Id, so when the sender retries the whole body the
// stored ones come back as duplicates inside the stream's duplicate window
// and only the missing ones are added.
package inbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// Path is where ServiceNow posts its webhooks.
const Path = "/webhooks/servicenow"

// EchoChecker recognises events that are the bridge's own ServiceNow writes
// coming back (echo suppression). internal/dedupe's Cache satisfies it.
type EchoChecker interface {
	IsEcho(ev *events.SNEvent) bool
}

// Config configures a Receiver. Conn and Secrets are required; zero values
// of the rest take the documented defaults.
type Config struct {
	Conn      *nats.Conn       // the bridge's NATS connection (shared; not closed by the receiver)
	Secrets   []webhook.Secret // every secret verifies (rotation)
	Tolerance time.Duration    // allowed webhook-timestamp skew (default 5m)
	Tables    []string         // tables accepted (default incident)

	MaxBodyBytes   int64         // default 1 MiB
	PublishTimeout time.Duration // how long to wait for every ack (default 5s)
	RetryAfter     time.Duration // Retry-After of a 503 (default 5s)
	// MaxPendingAcks bounds publishes awaiting an ack across all requests
	// (default 16384); beyond it a request waits briefly, then gets 503.
	MaxPendingAcks int

	// ReadyStreams must exist for /readyz to answer 200 (default SN_EVENTS).
	ReadyStreams []string
	// Echoes, when set, is asked about every event before it is published;
	// an echo is answered 202 and counted, not stored.
	Echoes EchoChecker

	Logger *slog.Logger
	// Registry receives the receiver's metrics and is served on /metrics
	// (with everything else registered there). Nil: a private registry.
	Registry *prometheus.Registry
	// Now is the clock for timestamp checks (tests).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Tolerance <= 0 {
		c.Tolerance = 5 * time.Minute
	}
	if len(c.Tables) == 0 {
		c.Tables = []string{"incident"}
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = 5 * time.Second
	}
	if c.MaxPendingAcks <= 0 {
		c.MaxPendingAcks = 16384
	}
	if len(c.ReadyStreams) == 0 {
		c.ReadyStreams = []string{events.StreamSN}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	return c
}

// Receiver is the webhook receiver and its operational endpoints.
type Receiver struct {
	cfg        Config
	nc         *nats.Conn
	js         jetstream.JetStream
	verifier   *webhook.Verifier
	validator  *events.Validator
	log        *slog.Logger
	m          *metrics
	e          *echo.Echo
	retryAfter string
}

// New builds a receiver. It starts nothing; call Serve or use Handler.
func New(cfg Config) (*Receiver, error) {
	if cfg.Conn == nil {
		return nil, errors.New("inbound: a NATS connection is required")
	}
	if len(cfg.Secrets) == 0 {
		return nil, errors.New("inbound: at least one webhook secret is required (BRIDGE_WEBHOOK_SECRETS)")
	}
	cfg = cfg.withDefaults()
	// A context of its own: the async-ack timeout drops futures whose ack
	// never comes (server gone), so nothing accumulates while NATS is down.
	js, err := jetstream.New(cfg.Conn,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxPendingAcks),
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout))
	if err != nil {
		return nil, fmt.Errorf("inbound: jetstream: %w", err)
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("inbound: metrics: %w", err)
	}
	r := &Receiver{
		cfg:        cfg,
		nc:         cfg.Conn,
		js:         js,
		verifier:   &webhook.Verifier{Secrets: cfg.Secrets, Tolerance: cfg.Tolerance, Now: cfg.Now},
		validator:  events.NewValidator(cfg.Tables),
		log:        cfg.Logger,
		m:          m,
		retryAfter: fmt.Sprint(int((cfg.RetryAfter + time.Second - 1) / time.Second)),
	}
	r.e = r.routes()
	return r, nil
}

func (r *Receiver) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = r.handleError
	e.Use(r.countRequests, r.recoverJSON) // count outside recover: a panic is counted as its 500
	e.POST(Path, r.handleWebhook)
	e.GET("/healthz", r.handleHealth)
	e.GET("/readyz", r.handleReady)
	metrics := echo.WrapHandler(promhttp.HandlerFor(r.cfg.Registry, promhttp.HandlerOpts{ErrorLog: slogPrinter{r.log}}))
	e.GET("/metrics", metrics)
	return e
}

// Handler is the receiver as an http.Handler (all endpoints).
func (r *Receiver) Handler() http.Handler { return r.e }

// Serve answers HTTP on ln until ctx is cancelled, then stops accepting and
// lets in-flight requests finish for up to shutdownTimeout. It returns nil
// after a clean shutdown.
func (r *Receiver) Serve(ctx context.Context, ln net.Listener, shutdownTimeout time.Duration) error {
	srv := &http.Server{
		Handler:           r.e,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
	}
	// Echo's Shutdown is http.Server.Shutdown on e.Server; owning the
	// server lets the caller bind the listener (and learn its port) first.
	r.e.Server = srv
	conns := &newConns{m: map[net.Conn]bool{}}
	srv.ConnState = conns.track
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	r.log.Info("webhook receiver listening", "addr", ln.Addr().String(), "path", Path)
	select {
	case err := <-errc:
		return fmt.Errorf("HTTP server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(sctx) }()
	<-errc // Serve returns ErrServerClosed once Shutdown has closed the listener
	// Connections that have not sent a request are not in-flight work, but
	// net/http waits 5s before treating them as idle: close them now.
	conns.closeAll()
	err := <-shut
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("HTTP shutdown: in-flight requests did not finish within %s: %w", shutdownTimeout, err)
	}
	r.log.Info("webhook receiver stopped")
	return nil
}

// newConns tracks connections that have not started a request yet.
type newConns struct {
	mu sync.Mutex
	m  map[net.Conn]bool
}

func (n *newConns) track(c net.Conn, state http.ConnState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if state == http.StateNew {
		n.m[c] = true
	} else {
		delete(n.m, c)
	}
}

func (n *newConns) closeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.m {
		_ = c.Close()
	}
}

// Ready reports whether NATS is connected and the ready streams exist.
func (r *Receiver) Ready(ctx context.Context) error {
	return broker.Ready(ctx, r.nc, r.js, r.cfg.ReadyStreams...)
}

type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Error("metrics handler", "err", fmt.Sprint(v...)) }
