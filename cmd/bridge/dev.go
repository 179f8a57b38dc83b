package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// devOptions are `bridge dev`'s flags.
type devOptions struct {
	demo       bool
	dataDir    string
	listen     string // the bridge's HTTP (webhooks, health, metrics)
	simListen  string
	natsListen string
	seed       int
	verbose    bool
	debug      bool          // debug logs (tests)
	grace      time.Duration // BRIDGE_WRITEBACK_HANDOVER_GRACE; 0: the default
}

func newDevCmd(a *app) *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev [--demo]",
		Short: "Everything in one process: embedded JetStream, the ServiceNow simulator and the bridge, with a walk-through",
		Long: `bridge dev starts an embedded NATS JetStream server, the ServiceNow instance
simulator (seeded incidents; its business rules post signed webhooks to the
bridge) and the bridge itself (webhook receiver, apply pipeline with the NATS
applier, writeback to ServiceNow, echo suppression), then prints what to try.
Nothing needs to be installed. Data lives in a temporary directory unless
--data-dir is given. --demo drives a few changes in both directions, prints
them flowing and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.demo {
				// Random ports: a demo never collides with a running dev.
				o.listen, o.simListen, o.natsListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
			}
			return runDev(cmd.Context(), a, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.demo, "demo", false, "drive a few changes in both directions, print them flowing, then exit")
	f.StringVar(&o.dataDir, "data-dir", "", "where JetStream keeps its data (default: a temporary directory, removed at exit)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "the bridge's HTTP address (webhooks, /healthz, /metrics); a busy port falls back to a free one")
	f.StringVar(&o.simListen, "sim-listen", "127.0.0.1:8081", "the ServiceNow simulator's address")
	f.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "the embedded NATS server's address")
	f.IntVar(&o.seed, "seed", 5, "incidents the simulator starts with")
	f.BoolVar(&o.verbose, "verbose", false, "log the bridge's info lines to stderr")
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
	cache    *dedupe.Cache
	reg      *prometheus.Registry
	links    *state.Links
	store    *state.Store
	dataDir  string
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
	printWalkthrough(a.stdout, st, o)
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

// startDev starts everything `bridge dev` runs. It runs until ctx is
// cancelled; wait then returns once every part stopped and the temporary
// data is gone.
func startDev(ctx context.Context, stderr io.Writer, o devOptions) (st *devStack, wait func() error, err error) {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	if o.debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()
	dataDir := o.dataDir
	if dataDir == "" {
		d, err := os.MkdirTemp("", "nowbridge-dev-")
		if err != nil {
			return nil, nil, fmt.Errorf("temporary data directory: %w", err)
		}
		cleanup = append(cleanup, func() { _ = os.RemoveAll(d) })
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
		return nil, nil, err
	}
	cleanup = append(cleanup, func() { ns.Shutdown(); ns.WaitForShutdown() })
	// The connection is closed before the embedded server stops: its
	// "disconnected" line at exit is noise unless --verbose.
	connLog := slog.New(slog.DiscardHandler)
	if o.verbose {
		connLog = logger
	}
	nc, err := broker.Connect(ctx, ns.ClientURL(), "bridge dev", connLog)
	if err != nil {
		return nil, nil, err
	}
	cleanup = append(cleanup, nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, err
	}
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		return nil, nil, err
	}
	bridgeLn, err := listenOrFree(o.listen)
	if err != nil {
		return nil, nil, fmt.Errorf("bridge listen %s: %w", o.listen, err)
	}
	cleanup = append(cleanup, func() { _ = bridgeLn.Close() })
	simLn, err := listenOrFree(o.simListen)
	if err != nil {
		return nil, nil, fmt.Errorf("simulator listen %s: %w", o.simListen, err)
	}
	cleanup = append(cleanup, func() { _ = simLn.Close() })
	st = &devStack{
		ns: ns, nc: nc, js: js, dataDir: dataDir,
		bridge:   "http://" + bridgeLn.Addr().String(),
		simURL:   "http://" + simLn.Addr().String(),
		secret:   webhook.NewSecret([]byte(randomHex(16))),
		clientID: "nowbridge-dev", clientSc: randomHex(12),
		reg: prometheus.NewRegistry(),
	}
	st.sim = snsim.New(snsim.Config{
		ClientID: st.clientID, ClientSecret: st.clientSc, Logger: logger,
		Webhooks: []snsim.WebhookTarget{{URL: st.bridge + inbound.Path, Secrets: []webhook.Secret{st.secret}}},
	})
	cleanup = append(cleanup, st.sim.Close)
	if err := st.sim.Seed(o.seed); err != nil {
		return nil, nil, err
	}
	runCtx, stopAll := context.WithCancel(ctx)
	cleanup = append(cleanup, stopAll)
	g, gctx := errgroup.WithContext(runCtx)
	simSrv := &http.Server{Handler: st.sim, ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		if err := simSrv.Serve(simLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("simulator: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		return simSrv.Shutdown(sctx)
	})
	if err := startBridge(gctx, g, st, bridgeLn, logger, o); err != nil {
		stopAll()
		_ = g.Wait()
		return nil, nil, err
	}
	wait = func() error {
		err := g.Wait()
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		return err
	}
	return st, wait, nil
}

// startBridge wires the bridge of `bridge dev` with serve's own builders
// (writebackComponent, apply.FromConfig) from a configuration pointing at
// the simulator: the webhook receiver with echo suppression, the apply
// pipeline with the NATS applier and the writeback, sharing one dedupe
// cache.
func startBridge(ctx context.Context, g *errgroup.Group, st *devStack, ln net.Listener, logger *slog.Logger, o devOptions) (err error) {
	defer func() {
		if err != nil {
			_ = ln.Close()
		}
	}()
	cfg := config.Default()
	cfg.SNInstanceURL, cfg.SNClientID, cfg.SNClientSecret = st.simURL, st.clientID, config.Secret(st.clientSc)
	cfg.WebhookSecrets = config.Secret(st.secret.Encoded())
	cfg.Tables, cfg.Applier = []string{"incident"}, "nats"
	if o.grace > 0 {
		cfg.HandOverGrace = o.grace
	}
	mset, err := mapping.Load(nil, cfg.Tables, logger)
	if err != nil {
		return err
	}
	st.cache = dedupe.New(dedupe.Config{Size: cfg.DedupeSize, TTL: cfg.DedupeTTL, Tables: mset, Registerer: st.reg})
	if st.store, st.links, err = state.Open(ctx, st.js); err != nil {
		return err
	}
	writeback, w, _, closeWB, err := writebackComponent(ctx, cfg, st.js, st.reg, st.cache, logger)
	if err != nil {
		return err
	}
	applier, err := apply.FromConfig(ctx, cfg, st.js, apply.Options{Logger: logger, Registerer: st.reg, LinkWriter: w, Applied: st.cache})
	if err != nil {
		closeWB()
		return err
	}
	recv, err := inbound.New(inbound.Config{
		Conn: st.nc, Secrets: []webhook.Secret{st.secret}, Tables: cfg.Tables,
		Echoes: st.cache, Logger: logger, Registry: st.reg,
	})
	if err != nil {
		closeWB()
		return err
	}
	g.Go(func() error { return recv.Serve(ctx, ln, 5*time.Second) })
	g.Go(func() error { return applier.Run(ctx) })
	g.Go(func() error { return writeback.run(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		closeWB()
		return nil
	})
	return nil
}

func printWalkthrough(out io.Writer, st *devStack, o devOptions) {
	natsURL := st.ns.ClientURL()
	ids := st.sim.IDs("incident")
	first := "<sys_id>"
	if len(ids) > 0 {
		first = ids[0]
	}
	fmt.Fprintf(out, `nowbridge dev: everything runs in this process.

  NATS JetStream   %s   (data: %s)
  ServiceNow sim   %s   client id %s, client secret %s
  bridge           %s   POST %s, /healthz, /readyz, /metrics
  webhook secret   %s   (the simulator's business rules sign with it)

Try it (the nats CLI is optional: go install github.com/nats-io/natscli/nats@v0.5.0):

  # 1. Watch what the bridge hands the SaaS app
  nats --server %s sub 'bridge.apply.>'

  # 2. Change an incident in ServiceNow (the simulator): its business rule
  #    posts a signed webhook, the bridge publishes bridge.apply.ticket.update
  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id=%s -d client_secret=%s %s/oauth_token.do | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s -X PATCH -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
       -d '{"state":"2","short_description":"Email down for everyone"}' %s/api/now/table/incident/%s

  # 3. The SaaS app creates a ticket: the bridge POSTs an incident with correlation_id=TCK-1001,
  #    and the business rule's webhook for that insert is recognised as the bridge's own echo
  nats --server %s pub app.ticket.upsert '{"external_id":"TCK-1001","version":1,"updated_at":"%s","fields":{"title":"Printer on fire","status":"new","urgency":"1","impact":"2","comment":"Smoke seen"}}'
  curl -s -H "Authorization: Bearer $TOKEN" '%s/api/now/table/incident?sysparm_query=correlation_id=TCK-1001&sysparm_fields=number,state,priority,short_description'

  # 4. The app updates it: one PATCH with only the fields that differ; nothing comes back on bridge.apply
  nats --server %s pub app.ticket.upsert '{"external_id":"TCK-1001","version":2,"updated_at":"%s","fields":{"title":"Printer on fire","status":"in_progress","comment":"Technician on the way"}}'

  # Metrics: echoes suppressed, writes, conflicts
  curl -s %s/metrics | grep -E 'bridge_echoes_suppressed_total|bridge_writeback_|conflicts_total'
`, natsURL, st.dataDir, st.simURL, st.clientID, st.clientSc, st.bridge, inbound.Path, st.secret.Encoded(),
		natsURL, st.clientID, st.clientSc, st.simURL, st.simURL, first,
		natsURL, time.Now().UTC().Format(time.RFC3339), st.simURL,
		natsURL, time.Now().UTC().Add(time.Minute).Format(time.RFC3339), st.bridge)
}

// runDemo drives changes in both directions and prints them flowing.
func runDemo(ctx context.Context, out io.Writer, st *devStack) error {
	applied := make(chan *nats.Msg, 64)
	sub, err := st.nc.ChanSubscribe(events.ApplySubjects, applied)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	step := func(n int, what string) { fmt.Fprintf(out, "\n== demo %d: %s\n", n, what) }
	waitApply := func(d time.Duration) (*apply.Message, error) {
		select {
		case m := <-applied:
			var am apply.Message
			if err := json.Unmarshal(m.Data, &am); err != nil {
				return nil, err
			}
			fmt.Fprintf(out, "   <- %s  external_id=%q sys_id=%s number=%s version=%d fields=%s\n", m.Subject, am.ExternalID, am.SysID, am.Number, am.Version, sortedFields(am.Fields))
			return &am, nil
		case <-time.After(d):
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	waitUntil := func(what string, cond func() bool) error {
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				return fmt.Errorf("demo: %s did not happen within 15s", what)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		return nil
	}
	ids := st.sim.IDs("incident")
	if len(ids) == 0 {
		return errors.New("demo: the simulator has no incidents (use --seed 1 or more)")
	}

	step(1, "a person changes an incident in ServiceNow -> the app hears about it")
	rec, err := st.sim.Update("incident", ids[0], map[string]string{"state": "2", "short_description": "Email down for everyone"}, "beth.anglin")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   ServiceNow: beth.anglin set %s to In Progress (sys_mod_count %s)\n", rec["number"], rec["sys_mod_count"])
	if m, err := waitApply(15 * time.Second); err != nil || m == nil {
		return errors.Join(errors.New("demo: no bridge.apply message for the ServiceNow change"), err)
	}

	step(2, "the app creates ticket TCK-1001 -> one POST to ServiceNow, its webhook is an echo")
	echoes0 := demoEchoes(st)
	if err := demoPublish(ctx, st, "TCK-1001", 1, map[string]string{"title": "Printer on fire", "status": "new", "urgency": "1", "impact": "2", "comment": "Smoke seen"}); err != nil {
		return err
	}
	var newID string
	if err := waitUntil("the POST of TCK-1001", func() bool {
		_, id, ok, _ := st.links.SysID(ctx, "ticket", "TCK-1001")
		newID = id
		return ok
	}); err != nil {
		return err
	}
	created, _ := st.sim.Get("incident", newID)
	fmt.Fprintf(out, "   ServiceNow: %s created, correlation_id=%s priority=%s (computed) comments: %d entry(ies)\n", created["number"], created["correlation_id"], created["priority"], len(st.sim.Journal(newID, "comments")))
	if err := waitUntil("the insert webhook's echo", func() bool { return demoEchoes(st) > echoes0 }); err != nil {
		return err
	}
	fmt.Fprintln(out, "   receiver: the insert's webhook was recognised as the bridge's own write (not sent back to the app)")

	step(3, "the app moves TCK-1001 to in_progress -> one PATCH with only what differs, nothing echoes back")
	echoes1 := demoEchoes(st)
	if err := demoPublish(ctx, st, "TCK-1001", 2, map[string]string{"title": "Printer on fire", "status": "in_progress", "comment": "Technician on the way"}); err != nil {
		return err
	}
	if err := waitUntil("the PATCH of TCK-1001", func() bool { r, _ := st.sim.Get("incident", newID); return r["state"] == "2" }); err != nil {
		return err
	}
	if err := waitUntil("the update webhook's echo", func() bool { return demoEchoes(st) > echoes1 }); err != nil {
		return err
	}
	patched, _ := st.sim.Get("incident", newID)
	fmt.Fprintf(out, "   ServiceNow: %s state=%s sys_mod_count=%s, comments: %d entries; its webhook was an echo\n", patched["number"], patched["state"], patched["sys_mod_count"], len(st.sim.Journal(newID, "comments")))
	if m, _ := waitApply(time.Second); m != nil {
		return errors.New("demo: the bridge's own write came back on bridge.apply (echo not suppressed)")
	}
	fmt.Fprintln(out, "   bridge.apply: quiet, as it should be")

	step(4, "a person raises TCK-1001's urgency in ServiceNow -> the app gets it, the app's echo writes nothing")
	if _, err := st.sim.Update("incident", newID, map[string]string{"urgency": "2", "impact": "1"}, "beth.anglin"); err != nil {
		return err
	}
	m, err := waitApply(15 * time.Second)
	if err != nil || m == nil {
		return errors.Join(errors.New("demo: no bridge.apply message for the urgency change"), err)
	}
	before := st.sim.RequestCount("PATCH", "", 0)
	// The app stores what it was handed and republishes it, as many apps do.
	if err := demoPublish(ctx, st, "TCK-1001", 3, m.Fields); err != nil {
		return err
	}
	time.Sleep(time.Second)
	if after := st.sim.RequestCount("PATCH", "", 0); after != before {
		return fmt.Errorf("demo: the app's echo caused %d PATCH(es)", after-before)
	}
	fmt.Fprintln(out, "   app republished what it was handed -> recognised as an echo, no write to ServiceNow")

	fmt.Fprintf(out, "\nDemo done: %d webhooks suppressed as echoes, %d ServiceNow writes by the bridge, 0 loops.\n",
		demoEchoes(st), st.sim.RequestCount("PATCH", "", 0)+st.sim.RequestCount("POST", "/api/now/table/incident", 0))
	return nil
}

func demoPublish(ctx context.Context, st *devStack, id string, version int64, fields map[string]string) error {
	body, _ := json.Marshal(events.AppChange{ExternalID: id, Version: version, UpdatedAt: time.Now().UTC(), Fields: fields})
	subject := events.AppSubject("ticket", events.AppUpsert)
	_, err := st.js.Publish(ctx, subject, body, jetstream.WithMsgID(events.AppMsgID("ticket", id, version, events.AppUpsert)))
	return err
}

// demoEchoes is bridge_echoes_suppressed_total{direction="servicenow"}.
func demoEchoes(st *devStack) int {
	mfs, _ := st.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "bridge_echoes_suppressed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "direction" && l.GetValue() == dedupe.DirServiceNow {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return 0
}

func sortedFields(f map[string]string) string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+f[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}
