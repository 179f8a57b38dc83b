package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

func newServeCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the bridge: webhook receiver, apply and writeback consumers, reconcile loop (embedded JetStream unless BRIDGE_NATS_URL is set)",
		Long: `serve runs the bridge until SIGINT or SIGTERM: the ServiceNow webhook receiver
(POST /webhooks/servicenow, /healthz, /readyz, /metrics) storing events in SN_EVENTS, the
apply consumer (SN_EVENTS -> the SaaS app, BRIDGE_APPLIER), and — once BRIDGE_SN_INSTANCE_URL,
BRIDGE_SN_CLIENT_ID and BRIDGE_SN_CLIENT_SECRET are set — the writeback consumer
(APP_EVENTS -> ServiceNow) and the reconcile loop (every BRIDGE_RECONCILE_INTERVAL),
and the console on BRIDGE_ADMIN_LISTEN (127.0.0.1:8090: overview, dead letters, record
trace; BRIDGE_ADMIN_TOKEN). With BRIDGE_NATS_URL empty it starts an embedded JetStream server (store under
BRIDGE_DATA_DIR, listening on BRIDGE_EMBEDDED_NATS_LISTEN). Every setting is a flag,
an environment variable and a key of the --config YAML file (flags beat env, env beats file).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cmd.Flags(), a.getenv)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), a, cfg)
		},
	}
	config.BindFlags(cmd.Flags())
	return cmd
}

// component is one long-running part of `bridge serve`. Run blocks until
// ctx is cancelled (returning nil) or the part fails; every component runs
// in one errgroup, so a failure stops the others.
type component struct {
	name string
	run  func(ctx context.Context) error
}

// serve wires the bridge's parts from cfg and runs them until ctx ends.
func serve(ctx context.Context, a *app, cfg config.Config) (err error) {
	log := cfg.Logger(a.stderr)
	secrets, err := webhookSecrets(cfg)
	if err != nil {
		return err
	}

	// Bind first, so a busy port stops start-up before anything else runs.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("BRIDGE_LISTEN %s: %w", cfg.Listen, err)
	}
	defer ln.Close() // no-op once the receiver has served and closed it

	// Should stay 0: the consumers empty their subscriptions at once (consume.Engine's backlog).
	slowConsumers := prometheus.NewCounter(prometheus.CounterOpts{Name: "bridge_nats_slow_consumers_total",
		Help: "Times nats.go dropped messages of a subscription whose buffer was full (JetStream redelivers them after the ack wait)."})
	nc, js, closeNATS, err := openNATS(ctx, cfg, log, broker.OnSlowConsumer(slowConsumers.Inc))
	if err != nil {
		return err
	}
	defer closeNATS()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), slowConsumers)

	// Every part from this one configuration (wire.go): a broken mapping
	// file stops start-up naming its line. The writer is also the apply
	// pipeline's LinkWriter (link-field writes claimed as echoes); its
	// client is shared with reconcile so both draw on one rate limiter.
	b, err := wire(ctx, cfg, js, wireOptions{Logger: log, Registerer: reg, ServiceNow: snIfSet,
		Apply: true, LinkBack: true, Writeback: true, Reconcile: true, Attachments: true})
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.checkServiceNow(ctx); err != nil {
		return err
	}
	con, err := newConsole(cfg, js, b, reg, log) // BRIDGE_ADMIN_LISTEN (console.go)
	if err != nil {
		return err
	}
	defer con.Close()

	rcv, err := newReceiver(ctx, cfg, nc, secrets, b, log, reg)
	if err != nil {
		return err
	}

	// Every replica receives webhooks; one at a time, the lease holder,
	// runs what acts on records (ownership.go).
	var synced []component
	if b.writeback != nil { // with the ServiceNow settings
		synced = append(synced,
			component{"writeback", b.writeback.Run},
			component{"reconcile", b.reconciler.Run}, // returns at once when BRIDGE_RECONCILE_INTERVAL=0
		)
	}
	if b.results != nil { // BRIDGE_RESULTS_URL
		synced = append(synced, component{"results delivery", b.results.Run})
	}
	synced = append(synced, component{"apply", b.apply.Run})
	if b.attach != nil { // with the ServiceNow settings
		synced = append(synced, component{"attachments", b.attach.Run})
	}
	owner := newSyncOwnership(js, b.states.KV(), cfg, log, reg)
	report := newStatusReporter(js, b.sn, cfg, owner, log)
	report.Gatherer = reg // this replica's counters in its report (bridge status, the console)
	components := []component{
		{"webhook receiver", func(ctx context.Context) error { return rcv.Serve(ctx, ln, cfg.ShutdownTimeout) }},
		{"sync owner", func(ctx context.Context) error {
			return owner.Run(ctx, func(ctx context.Context) error { return runSynced(ctx, synced, log) })
		}},
		{"status report", report.Run},
		{"console", con.Run},
	}
	log.Info("bridge serving", "listen", ln.Addr().String(), "nats", natsMode(cfg), "tables", cfg.Tables, "components", len(components)+len(synced))
	return runComponents(ctx, components, log)
}

// newReceiver builds the webhook receiver from cfg over the process's echo
// cache and decision log, and checks the live SN_EVENTS stream's replay
// window.
func newReceiver(ctx context.Context, cfg config.Config, nc *nats.Conn, secrets []webhook.Secret, b *bridge, log *slog.Logger, reg *prometheus.Registry) (*inbound.Receiver, error) {
	var streams []string
	for _, s := range events.Streams(events.StreamOptions{}) {
		streams = append(streams, s.Name)
	}
	rcv, err := inbound.New(inbound.Config{
		Conn:           nc,
		Secrets:        secrets,
		Tolerance:      cfg.WebhookTolerance,
		Tables:         cfg.Tables,
		MaxBodyBytes:   cfg.MaxBodyBytes,
		PublishTimeout: cfg.PublishTimeout,
		ReadyStreams:   streams,
		Echoes:         b.echoes,
		Trace:          b.trace,
		Logger:         log,
		Registry:       reg,

		MaxConnections:    cfg.MaxConnections,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		DrainGrace:        cmp.Or(cfg.DrainGrace, -1), // BRIDGE_DRAIN_GRACE=0: no drain
		TrustedProxies:    cfg.TrustedProxies,
	})
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = rcv.CheckReplayWindow(cctx) // the live stream's window: it may differ from the default
	cancel()
	if err != nil {
		return nil, err
	}
	return rcv, nil
}

// webhookSecrets are BRIDGE_WEBHOOK_SECRETS, required: every webhook is signed.
func webhookSecrets(cfg config.Config) ([]webhook.Secret, error) {
	secrets, err := webhook.ParseSecrets(cfg.WebhookSecrets.Reveal())
	if err != nil {
		return nil, fmt.Errorf("BRIDGE_WEBHOOK_SECRETS: %w", err)
	}
	if len(secrets) == 0 {
		return nil, errors.New("BRIDGE_WEBHOOK_SECRETS: required: every webhook must be signed; create a secret with `echo whsec_$(openssl rand -base64 32)` and give the same one to the business rule")
	}
	return secrets, nil
}

// openNATS starts the embedded JetStream server unless BRIDGE_NATS_URL is
// set, connects to it, and creates or updates the streams and buckets.
// closeNATS drains the connection, then stops the embedded server.
func openNATS(ctx context.Context, cfg config.Config, log *slog.Logger, options ...broker.ConnectOption) (nc *nats.Conn, js jetstream.JetStream, closeNATS func(), err error) {
	var stops []func()
	// A local: an error return sets the named results (closeNATS, nc) to
	// nil before the deferred clean-up runs.
	stopAll := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stopAll()
		}
	}()
	natsURL := cfg.NATSURL.Reveal()
	if natsURL == "" {
		srv, err := broker.StartEmbedded(broker.EmbeddedConfig{Listen: cfg.EmbeddedNATSListen, DataDir: cfg.DataDir, Logger: log})
		if err != nil {
			return nil, nil, nil, err
		}
		stops = append(stops, func() { stopEmbedded(srv, log) }) // after the drain
		natsURL = srv.ClientURL()
	}
	conn, err := broker.Connect(ctx, natsURL, "nowbridge serve", log, options...)
	if err != nil {
		return nil, nil, nil, err
	}
	stops = append(stops, func() { drain(conn, cfg.ShutdownTimeout, log) })
	if js, err = jetstream.New(conn); err != nil {
		return nil, nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = broker.EnsureAll(ectx, js, cfg.StreamOptions()) // the replicas and BRIDGE_RESULTS' limits
	cancel()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w (BRIDGE_STREAM_REPLICAS=%d needs at least that many JetStream servers)", err, cfg.StreamReplicas)
	}
	return conn, js, stopAll, nil
}

// runComponents runs every component until ctx ends or one fails.
func runComponents(ctx context.Context, components []component, log *slog.Logger) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range components {
		g.Go(func() error {
			if err := c.run(gctx); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			return nil
		})
	}
	err := g.Wait()
	if err != nil {
		log.Error("bridge stopping after a failure", "err", err)
	}
	return err
}

func natsMode(cfg config.Config) string {
	if cfg.NATSURL == "" {
		return "embedded"
	}
	return "external"
}

// drain lets pending publishes and acks finish, then closes the connection.
func drain(nc *nats.Conn, timeout time.Duration, log *slog.Logger) {
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	deadline := time.Now().Add(timeout)
	for !nc.IsClosed() {
		if time.Now().After(deadline) {
			log.Warn("NATS drain did not finish in time; closing", "timeout", timeout)
			nc.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func stopEmbedded(s *server.Server, log *slog.Logger) {
	s.Shutdown()
	s.WaitForShutdown()
	log.Info("embedded NATS JetStream stopped")
}
