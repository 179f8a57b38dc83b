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
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/trace"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// Path is where ServiceNow posts its webhooks.
const Path = "/webhooks/servicenow"

// EchoChecker recognises events that are the bridge's own ServiceNow writes
// coming back (echo suppression). internal/dedupe's Cache satisfies it.
type EchoChecker interface {
	// IsEchoOf calls record for the event's record only if it needs it:
	// most records are stored as sent and never read by the receiver.
	IsEchoOf(ev *events.SNEvent, record func() events.Fields) bool
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
	// (default 16384): MaxPendingAcks/64 requests (at least MaxConnections)
	// store events at once, each with up to 64 acks outstanding (see
	// store.go); beyond it a request waits briefly for a free slot, then
	// gets 503.
	MaxPendingAcks int

	// MaxConnections caps the connections open at once (default 1024);
	// beyond it clients wait in the listen queue until one closes.
	MaxConnections int
	// ReadHeaderTimeout bounds reading a request's headers (default 5s),
	// ReadTimeout the whole request, body included (default 30s), and
	// IdleTimeout how long a kept-alive connection may wait for its next
	// request (default 60s). They cut slow or stalled clients loose.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	// DrainGrace is how long Serve keeps answering after ctx ends, with
	// /readyz 503 and "Connection: close" on every answer, before it stops
	// accepting (see Serve). It ends early once no connection is open and
	// none has opened for a moment.
	// 0: a quarter of the shutdown timeout, at most 2s; negative: no grace.
	DrainGrace time.Duration
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client in logs. Empty: the connection's own address, and every
	// forwarding header is ignored (a sender could write anything there).
	TrustedProxies []netip.Prefix

	// ReadyStreams must exist for /readyz to answer 200 (default SN_EVENTS).
	ReadyStreams []string
	// Echoes, when set, is asked about every event before it is published;
	// an echo is answered 202 and counted, not stored.
	Echoes EchoChecker
	// Trace records the echoes suppressed in the decision log (the one
	// decision the receiver makes itself; the apply pipeline records each
	// stored event); nil records nothing.
	Trace *trace.Recorder

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
	if c.MaxConnections <= 0 {
		c.MaxConnections = 1024
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 5 * time.Second
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
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
	acks       *acker
	verifier   *webhook.Verifier
	validator  *events.Validator
	log        *slog.Logger
	m          *metrics
	e          *echo.Echo
	retryAfter string

	// draining: shutdown has begun; /readyz answers 503 and every answer
	// carries "Connection: close". closing: its last step; webhooks are
	// answered 503 with Retry-After until clients stop connecting.
	draining atomic.Bool
	closing  atomic.Bool
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
	// For stream checks; events are stored through acks (store.go).
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("inbound: jetstream: %w", err)
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("inbound: metrics: %w", err)
	}
	r := &Receiver{
		cfg:      cfg,
		nc:       cfg.Conn,
		js:       js,
		acks:     newAcker(cfg.Conn, cfg.MaxPendingAcks, cfg.MaxConnections),
		verifier: &webhook.Verifier{Secrets: cfg.Secrets, Tolerance: cfg.Tolerance, Now: cfg.Now},
		// sys_attachment whatever BRIDGE_TABLES says: the attachment
		// business rule sends only those of synced tables' records.
		validator:  events.NewValidator(append(slices.Clone(cfg.Tables), events.TableAttachment)),
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
	// Echo's default RealIP believes X-Forwarded-For and X-Real-IP from
	// anyone (GO-2026-6872); the extractor decides whose headers count.
	e.IPExtractor = ipExtractor(r.cfg.TrustedProxies)
	// Count outside recover: a panic is counted as its 500.
	e.Use(r.closeWhileDraining, r.countRequests, r.recoverJSON)
	// Only self-tests reach Echo's webhook route: ServeHTTP answers
	// every other webhook itself.
	e.POST(Path, r.handleSelfTest)
	e.GET("/healthz", r.handleHealth)
	e.GET("/readyz", r.handleReady)
	metrics := echo.WrapHandler(promhttp.HandlerFor(r.cfg.Registry, promhttp.HandlerOpts{ErrorLog: slogPrinter{r.log}}))
	e.GET("/metrics", metrics)
	return e
}

// Handler is the receiver as an http.Handler (all endpoints).
func (r *Receiver) Handler() http.Handler { return r }

// Serve answers HTTP on ln until ctx is cancelled, then drains and shuts
// down within shutdownTimeout. It returns nil after a clean shutdown.
//
// net/http's Shutdown closes every connection it sees as idle, and a
// kept-alive connection is idle right up to the moment the server reads a
// request the client has already sent: that request is reset, and the sender
// cannot tell whether it was stored (golang/go#23829, #65802). So the
// shutdown goes in steps, each of which only ever closes a connection right
// after answering on it:
//
//  1. Drain, for DrainGrace or until no connection is open (nor has been
//     for a moment): /readyz answers 503 so load balancers move away,
//     webhooks are still stored and answered, and every answer carries
//     "Connection: close", which moves each client off its kept-alive
//     connection cleanly.
//  2. Close: webhooks are answered 503 with Retry-After, so senders back off,
//     until no client has connected for a moment and the kernel's accept
//     queue is empty (at most 1s). Closing a listener resets the connections
//     the kernel completed but the server had not yet accepted, so it closes
//     once clients have stopped arriving.
//  3. http.Server.Shutdown: the listener closes, requests still running
//     finish, connections that have not sent a byte for a while are closed.
func (r *Receiver) Serve(ctx context.Context, ln net.Listener, shutdownTimeout time.Duration) error {
	lim := newLimitListener(ln, r.cfg.MaxConnections, r.m)
	conns := newConnTracker()
	srv := &http.Server{
		Handler:           r,
		ReadHeaderTimeout: r.cfg.ReadHeaderTimeout,
		ReadTimeout:       r.cfg.ReadTimeout,
		// From the end of the headers: the body, the publish and the answer.
		WriteTimeout:   r.cfg.ReadTimeout + r.cfg.PublishTimeout + 10*time.Second,
		IdleTimeout:    r.cfg.IdleTimeout,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
		ConnState:      conns.track,
	}
	// Echo's Shutdown is http.Server.Shutdown on e.Server; owning the
	// server lets the caller bind the listener (and learn its port) first.
	r.e.Server = srv
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lim) }()
	r.log.Info("webhook receiver listening", "addr", ln.Addr().String(), "path", Path,
		"max_connections", r.cfg.MaxConnections, "read_header_timeout", r.cfg.ReadHeaderTimeout.String(),
		"read_timeout", r.cfg.ReadTimeout.String(), "idle_timeout", r.cfg.IdleTimeout.String())
	select {
	case err := <-errc:
		return fmt.Errorf("HTTP server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	deadline := time.Now().Add(shutdownTimeout)
	grace := r.cfg.DrainGrace
	if grace == 0 {
		grace = min(2*time.Second, shutdownTimeout/4)
	}
	if grace > 0 {
		r.drain(conns, lim, min(grace, shutdownTimeout/2), deadline)
	}
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(sctx) }()
	<-errc // Serve returns ErrServerClosed once Shutdown has closed the listener
	var err error
	for waiting := true; waiting; {
		conns.closeSilent(silentAge)
		select {
		case err = <-shut:
			waiting = false
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("HTTP shutdown: in-flight requests did not finish within %s: %w", shutdownTimeout, err)
	}
	r.log.Info("webhook receiver stopped")
	return nil
}

// Drain timing: how long no client must have connected before the listener
// may close, the longest the closing step waits for that, and how long a
// connection must have stayed silent before the shutdown closes it.
const (
	drainQuiet    = 100 * time.Millisecond
	drainCloseMax = time.Second
	silentAge     = 500 * time.Millisecond
)

// drain runs steps 1 and 2 of the shutdown (see Serve).
func (r *Receiver) drain(conns *connTracker, lim *limitListener, grace time.Duration, deadline time.Time) {
	start := time.Now()
	r.draining.Store(true)
	r.log.Info("webhook receiver draining: /readyz answers 503, connections are closed after their answer",
		"grace", grace.String(), "open_connections", conns.open())
	// Early only once no client has been connected for a moment: under
	// load every connection closes after its answer and another opens.
	waitUntil(start.Add(grace), func() bool { return conns.open() == 0 && lim.sinceAccept() >= drainQuiet })
	r.closing.Store(true)
	closeBy := time.Now().Add(drainCloseMax)
	if half := time.Now().Add(time.Until(deadline) / 2); half.Before(closeBy) {
		closeBy = half
	}
	waitUntil(closeBy, func() bool {
		if n, ok := acceptQueue(lim.Listener); ok && n > 0 {
			return false
		}
		return lim.sinceAccept() >= drainQuiet
	})
	r.log.Info("webhook receiver closing", "drained_for", time.Since(start).Round(time.Millisecond).String(), "open_connections", conns.open())
}

// waitUntil polls done until it is true or the deadline passes.
func waitUntil(deadline time.Time, done func() bool) {
	for !done() {
		d := time.Until(deadline)
		if d <= 0 {
			return
		}
		time.Sleep(min(d, 10*time.Millisecond))
	}
}

// closeWhileDraining asks every client to close its connection once the
// drain has begun: an answer carrying "Connection: close" is the one way to
// end a kept-alive connection without racing a request already on its way.
func (r *Receiver) closeWhileDraining(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if r.draining.Load() {
			c.Response().Header().Set(echo.HeaderConnection, "close")
		}
		return next(c)
	}
}

// ipExtractor says who a request came from, for logs. Without trusted
// proxies it is the connection's address and no header is read. With them,
// X-Forwarded-For is walked from the nearest hop back, believed only while
// the hop is one of those proxies (not, as Echo's defaults would have it, any
// loopback, link-local or private address).
func ipExtractor(trusted []netip.Prefix) echo.IPExtractor {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, p := range trusted {
		p = p.Masked()
		opts = append(opts, echo.TrustIPRange(&net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}

// CheckReplayWindow refuses a webhook tolerance that outlasts SN_EVENTS'
// duplicate window. A captured signed request verifies from tolerance before
// its timestamp to tolerance after it, so a replay can arrive up to twice
// the tolerance after the original was stored; past the duplicate window
// JetStream no longer knows the Nats-Msg-Id and would store it again.
func (r *Receiver) CheckReplayWindow(ctx context.Context) error {
	s, err := r.js.Stream(ctx, events.StreamSN)
	if err != nil {
		return fmt.Errorf("read stream %s to check BRIDGE_WEBHOOK_TOLERANCE against its duplicate window: %w", events.StreamSN, err)
	}
	return replayWindowError(r.cfg.Tolerance, s.CachedInfo().Config.Duplicates)
}

// replayWindowError explains why a webhook tolerance is too long for a
// duplicate window, or returns nil when it fits (see CheckReplayWindow).
func replayWindowError(tolerance, window time.Duration) error {
	if span := webhook.ReplaySpan(tolerance); span >= window {
		return fmt.Errorf("BRIDGE_WEBHOOK_TOLERANCE=%s is too long for the %s stream's duplicate window of %s: "+
			"a captured webhook verifies for up to %s after it first arrived (its timestamp may be %s ahead or behind), "+
			"so a replay after the window would be stored twice; set BRIDGE_WEBHOOK_TOLERANCE below %s",
			tolerance, events.StreamSN, window, span, tolerance, window/2)
	}
	return nil
}

// Ready reports whether NATS is connected and the ready streams exist.
func (r *Receiver) Ready(ctx context.Context) error {
	return broker.Ready(ctx, r.nc, r.js, r.cfg.ReadyStreams...)
}

type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Error("metrics handler", "err", fmt.Sprint(v...)) }
