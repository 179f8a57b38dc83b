package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/secret"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// devTables are the tables `bridge dev` syncs unless --tables says
// otherwise: two at once, so the walk-through and the demo show several
// entities sharing one bridge.
var devTables = []string{"incident", "change_request"}

// devOptions are `bridge dev`'s flags.
type devOptions struct {
	demo       bool
	dataDir    string
	listen     string // the bridge's HTTP (webhooks, health, metrics)
	simListen  string
	natsListen string
	tables     []string // BRIDGE_TABLES of the dev bridge, all simulated
	seed       int
	verbose    bool
	debug      bool          // debug logs (tests)
	grace      time.Duration // BRIDGE_WRITEBACK_HANDOVER_GRACE; 0: the default
	app        bool          // start the helpdesk reference app (devapp.go)
	appListen  string
}

func newDevCmd(a *app) *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev [--demo] [--tables incident,change_request,...]",
		Short: "Everything in one process: embedded JetStream, the ServiceNow simulator and the bridge, with a walk-through",
		Long: `bridge dev starts an embedded NATS JetStream server, the ServiceNow instance
simulator (seeded records of every synced table; its business rules post
signed webhooks to the bridge) and the bridge itself (webhook receiver, apply
pipeline with the NATS applier, writeback to ServiceNow, echo suppression),
then prints what to try. It syncs incident and change_request (the app's
ticket and change entities) unless --tables names others. Nothing needs to be
installed. Data lives in a temporary directory unless --data-dir is given.
--demo drives changes in both directions for every synced table at once,
prints them flowing and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tables, err := simTables(o.tables)
			if err != nil {
				return usageError{err}
			}
			o.tables = tables
			if o.seed < 0 {
				return usageError{fmt.Errorf("--seed must not be negative, got %d", o.seed)}
			}
			if o.demo {
				// Random ports: a demo never collides with a running dev.
				o.listen, o.simListen, o.natsListen, o.appListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
			}
			return runDev(cmd.Context(), a, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.demo, "demo", false, "drive changes in both directions for every synced table, print them flowing, then exit")
	f.StringVar(&o.dataDir, "data-dir", "", "where JetStream keeps its data (default: a temporary directory, removed at exit)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "the bridge's HTTP address (webhooks, /healthz, /metrics); a busy port falls back to a free one")
	f.StringVar(&o.simListen, "sim-listen", "127.0.0.1:8081", "the ServiceNow simulator's address")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "the embedded NATS server's address")
	f.StringSliceVar(&o.tables, "tables", devTables, "the tables synced (BRIDGE_TABLES), each with its shipped mapping: "+strings.Join(snsim.TicketTables(), ", "))
	f.IntVar(&o.seed, "seed", 6, "records the simulator starts with, spread over the tables")
	f.BoolVar(&o.verbose, "verbose", false, "log the bridge's info lines to stderr")
	f.BoolVar(&o.app, "app", false, "also start the helpdesk reference app (examples/helpdesk), a page showing both sides in a browser")
	f.StringVar(&o.appListen, "app-listen", defaultAppListen, "the helpdesk's address with --app; a busy port falls back to a free one")
	return cmd
}

// devStack is the whole system of `bridge dev`, running.
type devStack struct {
	ns       interface{ ClientURL() string }
	nc       *nats.Conn
	js       jetstream.JetStream
	sim      *snsim.Server
	simURL   string
	bridge   string // the bridge's base URL
	secret   webhook.Secret
	clientID string
	clientSc string
	tables   []string
	reg      *prometheus.Registry
	b        *bridge // the bridge's parts, wired as serve wires them
	dataDir  string
	appURL   string // the helpdesk's page with --app
}

func listenOrFree(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	if host == "" {
		host = "127.0.0.1"
	}
	if ln, err2 := net.Listen("tcp", net.JoinHostPort(host, "0")); err2 == nil {
		return ln, nil
	}
	return nil, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func runDev(ctx context.Context, a *app, o devOptions) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, wait, err := startDev(ctx, a.stderr, o)
	if err != nil {
		return err
	}
	printWalkthrough(a.stdout, st)
	printApp(a.stdout, st)
	if o.demo {
		derr := runDemo(ctx, a.stdout, st)
		cancel()
		if err := wait(); err != nil && derr == nil {
			return err
		}
		return derr
	}
	fmt.Fprintln(a.stdout, "\nRunning. Ctrl-C stops everything.")
	return wait()
}

// devLogger logs warnings, or more with --verbose (tests: debug).
func devLogger(stderr io.Writer, o devOptions) *slog.Logger {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	if o.debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

// cleanups runs what a start-up built, last first.
type cleanups []func()

func (c *cleanups) add(f func()) { *c = append(*c, f) }

func (c cleanups) run() {
	for i := len(c) - 1; i >= 0; i-- {
		c[i]()
	}
}

// startDev starts everything `bridge dev` runs. It runs until ctx is
// cancelled; wait then returns once every part stopped and the temporary
// data is gone.
func startDev(ctx context.Context, stderr io.Writer, o devOptions) (st *devStack, wait func() error, err error) {
	if len(o.tables) == 0 {
		o.tables = devTables
	}
	logger := devLogger(stderr, o)
	var cleanup cleanups
	defer func() {
		if err != nil {
			cleanup.run()
		}
	}()
	st, err = startDevNATS(ctx, o, logger, &cleanup)
	if err != nil {
		return nil, nil, err
	}
	bridgeLn, err := listenOrFree(o.listen)
	if err != nil {
		return nil, nil, fmt.Errorf("bridge listen %s: %w", o.listen, err)
	}
	cleanup.add(func() { _ = bridgeLn.Close() })
	simLn, err := listenOrFree(o.simListen)
	if err != nil {
		return nil, nil, fmt.Errorf("simulator listen %s: %w", o.simListen, err)
	}
	cleanup.add(func() { _ = simLn.Close() })
	st.bridge, st.simURL = "http://"+bridgeLn.Addr().String(), "http://"+simLn.Addr().String()
	if err := startDevSim(st, o, logger, &cleanup); err != nil {
		return nil, nil, err
	}

	runCtx, stopAll := context.WithCancel(ctx)
	cleanup.add(stopAll)
	g, gctx := errgroup.WithContext(runCtx)
	serveSim(gctx, g, st.sim, simLn)
	if err := startBridge(gctx, g, st, bridgeLn, logger, o); err != nil {
		stopAll()
		_ = g.Wait()
		return nil, nil, err
	}
	cleanup.add(st.b.Close) // after every part stopped: wait runs the cleanups once g is done
	if err := startDevApp(gctx, g, st, o, logger, &cleanup); err != nil {
		stopAll()
		_ = g.Wait()
		return nil, nil, err
	}
	wait = func() error {
		err := g.Wait()
		cleanup.run()
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		return err
	}
	return st, wait, nil
}

// startDevNATS starts the embedded JetStream server (in a temporary
// directory unless --data-dir) with the bridge's streams and buckets.
func startDevNATS(ctx context.Context, o devOptions, logger *slog.Logger, cleanup *cleanups) (*devStack, error) {
	dataDir := o.dataDir
	if dataDir == "" {
		d, err := os.MkdirTemp("", "nowbridge-dev-")
		if err != nil {
			return nil, fmt.Errorf("temporary data directory: %w", err)
		}
		cleanup.add(func() { _ = os.RemoveAll(d) })
		dataDir = d
	}
	natsListen := o.natsListen
	if ln, err := net.Listen("tcp", natsListen); err == nil {
		_ = ln.Close()
	} else {
		natsListen = "127.0.0.1:0" // busy (a running dev or nats-server): take a free port
	}
	ns, err := broker.StartEmbedded(broker.EmbeddedConfig{Listen: natsListen, DataDir: dataDir, Logger: logger})
	if err != nil {
		return nil, err
	}
	cleanup.add(func() { stopEmbedded(ns, logger) })
	// The connection is closed before the embedded server stops: its
	// "disconnected" line at exit is noise unless --verbose.
	connLog := slog.New(slog.DiscardHandler)
	if o.verbose {
		connLog = logger
	}
	nc, err := broker.Connect(ctx, ns.ClientURL(), "bridge dev", connLog)
	if err != nil {
		return nil, err
	}
	cleanup.add(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		return nil, err
	}
	return &devStack{ns: ns, nc: nc, js: js, dataDir: dataDir, tables: o.tables, reg: prometheus.NewRegistry()}, nil
}

// startDevSim builds the simulator: seeded records of every synced table,
// its business rules sending those tables (nowbridge.tables) to the
// bridge, signed with a fresh secret; an HR table gets the HR role the
// setup guide asks for.
func startDevSim(st *devStack, o devOptions, logger *slog.Logger, cleanup *cleanups) error {
	st.secret = webhook.NewSecret([]byte(randomHex(16)))
	st.clientID, st.clientSc = "nowbridge-dev", randomHex(12)
	fields := map[string][]string{}
	for _, t := range st.tables {
		fields[t] = snsim.DefaultWebhookFields[t]
	}
	cfg := snsim.Config{
		ClientID: st.clientID, ClientSecret: st.clientSc, Logger: logger,
		Webhooks:       []snsim.WebhookTarget{{URL: st.bridge + inbound.Path, Secrets: []webhook.Secret{st.secret}}},
		WebhookOptions: snsim.WebhookOptions{Fields: fields},
	}
	if slices.Contains(st.tables, "sn_hr_core_case") {
		cfg.Grants.HRRole = snsim.RoleHRCaseWriter
	}
	st.sim = snsim.New(cfg)
	cleanup.add(st.sim.Close)
	return seedTables(st.sim, st.tables, o.seed, slog.New(slog.DiscardHandler))
}

// serveSim serves the simulator on ln until ctx ends.
func serveSim(ctx context.Context, g *errgroup.Group, sim *snsim.Server, ln net.Listener) {
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("simulator: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 3*time.Second)
		defer c()
		// A connection the bridge's HTTP client dialled ahead and never
		// used counts as active to Shutdown for 5s: close it, not an error.
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
		return nil
	})
}

// devConfig is the configuration of the dev bridge: serve's defaults
// pointed at the simulator, the NATS applier, the synced tables.
func devConfig(st *devStack, o devOptions) config.Config {
	cfg := config.Default()
	cfg.SNInstanceURL, cfg.SNClientID, cfg.SNClientSecret = st.simURL, st.clientID, secret.String(st.clientSc)
	cfg.WebhookSecrets = secret.String(st.secret.Encoded())
	cfg.Tables, cfg.Applier = st.tables, "nats"
	if o.grace > 0 {
		cfg.HandOverGrace = o.grace
	}
	return cfg
}

// startBridge wires the bridge of `bridge dev` as serve wires it (wire,
// from one configuration pointing at the simulator) and runs the webhook
// receiver with echo suppression, the apply pipeline with the NATS applier
// and the writeback, sharing one echo cache. st.b is set once it returns
// nil; its Close is the caller's, after every part stopped.
func startBridge(ctx context.Context, g *errgroup.Group, st *devStack, ln net.Listener, logger *slog.Logger, o devOptions) (err error) {
	defer func() {
		if err != nil {
			_ = ln.Close()
		}
	}()
	cfg := devConfig(st, o)
	b, err := wire(ctx, cfg, st.js, wireOptions{Logger: logger, Registerer: st.reg, ServiceNow: snRequired,
		Apply: true, LinkBack: true, Writeback: true, Attachments: true})
	if err != nil {
		return err
	}
	if err := b.checkServiceNow(ctx); err != nil {
		b.Close()
		return err
	}
	recv, err := inbound.New(inbound.Config{
		Conn: st.nc, Secrets: []webhook.Secret{st.secret}, Tables: cfg.Tables,
		Echoes: b.echoes, Trace: b.trace, Logger: logger, Registry: st.reg,
	})
	if err != nil {
		b.Close()
		return err
	}
	st.b = b
	g.Go(func() error { return recv.Serve(ctx, ln, 5*time.Second) })
	g.Go(func() error { return b.apply.Run(ctx) })
	g.Go(func() error { return b.writeback.Run(ctx) })
	if b.attach != nil {
		g.Go(func() error { return b.attach.Run(ctx) })
	}
	return nil
}
