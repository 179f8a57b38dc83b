package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// `bridge bench replicas`: one and three `bridge serve` replicas on the same
// three-node JetStream cluster (R3 streams), side by side in one run, and
// the fail-over gap when the replica owning the sync dies.
//
// The cluster, the simulator, a small front spreading the business rules'
// webhooks round-robin over the replicas, and the measuring subscribers run
// in this process on loopback; each replica is this very binary running
// `bridge serve` as a child process, so that a death can be a real kill -9
// (a cancelled context would be a clean stop that hands the lease over).

// benchReplicaEnv marks a child started by the bench. The bridge binary
// ignores it; a test binary, which cannot run `serve` by its arguments,
// runs run() instead of its tests when it is set (bench_replicas_test.go).
const benchReplicaEnv = "NOWBRIDGE_BENCH_REPLICA"

// replicasOptions are the flags only `bridge bench replicas` reads.
type replicasOptions struct {
	rates  []int
	ttls   []time.Duration
	kills  int
	settle time.Duration
}

func (o *replicasOptions) addFlags(f *pflag.FlagSet) {
	f.IntSliceVar(&o.rates, "rates", []int{150, 300, 1000}, "replicas: offered rates, changes per second, each measured in both directions; the first is also the load of the fail-over")
	f.DurationSliceVar(&o.ttls, "failover-ttls", []time.Duration{10 * time.Second, 3 * time.Second}, "replicas: BRIDGE_SYNC_LEASE_TTL values the owner is killed under")
	f.IntVar(&o.kills, "failover-kills", 1, "replicas: owner kills per lease TTL")
	f.DurationVar(&o.settle, "failover-settle", 45*time.Second, "replicas: how long after a kill to wait for every change made before it to be applied (the dead owner's unacknowledged ones come back after apply's 30 s ack wait)")
}

func (o *replicasOptions) validate() error {
	var errs []error
	if len(o.rates) == 0 {
		errs = append(errs, errors.New("--rates: give at least one rate"))
	}
	for _, r := range o.rates {
		if r <= 0 {
			errs = append(errs, fmt.Errorf("--rates must be positive, got %d", r))
		}
	}
	for _, ttl := range o.ttls {
		if ttl < 2*time.Second {
			errs = append(errs, fmt.Errorf("--failover-ttls: %s is below BRIDGE_SYNC_LEASE_TTL's minimum of 2s", ttl))
		}
	}
	if o.kills < 0 {
		errs = append(errs, fmt.Errorf("--failover-kills must not be negative, got %d", o.kills))
	}
	if o.settle <= 0 {
		errs = append(errs, fmt.Errorf("--failover-settle must be positive, got %s", o.settle))
	}
	return errors.Join(errs...)
}

// replicasReport is `bridge bench replicas`' section of the report.
type replicasReport struct {
	NATSNodes      int              `json:"nats_nodes"`
	StreamReplicas int              `json:"stream_replicas"`
	Records        int              `json:"records"`
	Turns          int              `json:"turns"`        // per configuration
	TurnSeconds    float64          `json:"turn_seconds"` // of each figure in a turn
	One            replicaSetReport `json:"one"`
	Three          replicaSetReport `json:"three"`
	Ratios         []replicasRatio  `json:"ratios"`        // 3 replicas over 1, figure by figure
	OwnerChanges   int              `json:"owner_changes"` // the sync owner moving during the side-by-side turns (0: one owner throughout)
	Failover       []failoverReport `json:"failover,omitempty"`
	LoadAverageEnd string           `json:"load_average_end,omitempty"`
}

// replicaSetReport is one configuration's figures, every turn together:
// one entry per rate in each direction.
type replicaSetReport struct {
	Replicas  int              `json:"replicas"`
	Apply     []*latencyReport `json:"apply"`
	Writeback []*latencyReport `json:"writeback"`
	// Webhooks went through the front: the people's changes and the echoes
	// of the bridge's writes. Failed were answered other than 202 after the
	// front's retries; PerReplica were answered by each, the owner first.
	Webhooks   int64   `json:"webhooks"`
	Failed     int64   `json:"webhooks_failed"`
	PerReplica []int64 `json:"webhooks_per_replica"`
}

// replicasRatio compares a figure of three replicas with one's: above 1
// more throughput or a longer latency. Latencies are end to end (total).
type replicasRatio struct {
	Direction  string  `json:"direction"` // apply, writeback
	Rate       int     `json:"rate"`
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
}

// failoverReport is the sync owner killed (SIGKILL) under load, with three
// replicas and one lease TTL.
type failoverReport struct {
	LeaseTTL string         `json:"lease_ttl"`
	Rate     int            `json:"rate"` // ServiceNow changes per second throughout
	Kills    []failoverKill `json:"kills"`
}

// failoverKill times one kill. Every time is from the kill.
type failoverKill struct {
	AcquiredMS   float64 `json:"acquired_ms"`    // until another replica logged "sync ownership acquired"
	FirstApplyMS float64 `json:"first_apply_ms"` // until the first bridge.apply message after that
	// LastApplyBeforeMS is how long before the kill the last bridge.apply
	// message arrived: the work was flowing.
	LastApplyBeforeMS float64 `json:"last_apply_before_ms"`
	AppliedInGap      int     `json:"applied_in_gap"`  // bridge.apply messages between the kill and the acquisition (sent before the death)
	PendingAtKill     int     `json:"pending_at_kill"` // changes made before the kill, not applied then
	// AllAppliedMS: until every change made before the kill was applied
	// (0 with none pending); Missing: how many were not, --failover-settle
	// after it.
	AllAppliedMS float64 `json:"all_applied_ms"`
	Missing      int     `json:"missing"`
	Webhooks     int64   `json:"webhooks"`        // through the front during the load
	Failed       int64   `json:"webhooks_failed"` // answered other than 202 after the front's retries
}

// replicasTurnMax bounds one turn of one figure; there are at least two
// turns per configuration, so that 1, 3, 3, 1 order balances drift.
const replicasTurnMax = 5 * time.Second

func (b *bencher) replicas(ctx context.Context) (*replicasReport, error) {
	ro := b.o.replicas
	turns := max(2, int((b.o.duration+replicasTurnMax-1)/replicasTurnMax))
	turn := b.o.duration / time.Duration(turns)
	h, err := startReplicaHarness(ctx, b.a.stderr, b.o.records)
	if err != nil {
		return nil, err
	}
	defer h.close()
	rep := &replicasReport{NATSNodes: len(h.nodes), StreamReplicas: len(h.nodes), Records: b.o.records, Turns: turns, TurnSeconds: round2(turn.Seconds())}

	// The first replica alone: it creates the streams and owns the sync
	// for the whole side-by-side part; the others come and go.
	if err := h.setReplicas(ctx, 1, 0); err != nil {
		return nil, err
	}
	if err := h.warmUp(ctx, b); err != nil {
		return nil, err
	}

	sets := map[int]*replicaFigures{1: {}, 3: {}}
	for _, f := range sets {
		f.apply, f.writeback = make([]journeys, len(ro.rates)), make([]journeys, len(ro.rates))
	}
	for i := range turns {
		order := []int{1, 3}
		if i%2 == 1 {
			order = []int{3, 1}
		}
		for _, n := range order {
			if err := h.setReplicas(ctx, n, 0); err != nil {
				return nil, err
			}
			what := fmt.Sprintf("turn %d/%d, %d replica(s)", i+1, turns, n)
			if err := h.turn(ctx, b, what, turn, sets[n]); err != nil {
				return nil, fmt.Errorf("%d replica(s): %w", n, err)
			}
		}
	}
	rep.OwnerChanges = h.acquisitions() - 1
	for n, set := range map[int]*replicaSetReport{1: &rep.One, 3: &rep.Three} {
		f := sets[n]
		set.Replicas, set.Webhooks, set.Failed, set.PerReplica = n, f.webhooks, f.failed, f.perReplica[:min(n, len(f.perReplica))]
		for ri, rate := range ro.rates {
			set.Apply = append(set.Apply, f.apply[ri].report(rate))
			set.Writeback = append(set.Writeback, f.writeback[ri].report(rate))
		}
	}
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return round2(a / b)
	}
	for ri, rate := range ro.rates {
		for _, d := range []struct {
			name       string
			one, three *latencyReport
		}{{"apply", rep.One.Apply[ri], rep.Three.Apply[ri]}, {"writeback", rep.One.Writeback[ri], rep.Three.Writeback[ri]}} {
			rep.Ratios = append(rep.Ratios, replicasRatio{Direction: d.name, Rate: rate,
				Throughput: ratio(d.three.PerSecond, d.one.PerSecond),
				P50:        ratio(d.three.Total.P50, d.one.Total.P50), P99: ratio(d.three.Total.P99, d.one.Total.P99)})
		}
	}

	for _, ttl := range ro.ttls {
		if ro.kills == 0 {
			break
		}
		fr, err := h.failover(ctx, b, ttl, ro.rates[0], ro.kills, ro.settle)
		if err != nil {
			return nil, fmt.Errorf("fail-over with a %s lease: %w", ttl, err)
		}
		rep.Failover = append(rep.Failover, *fr)
	}
	rep.LoadAverageEnd = loadAverage()
	return rep, nil
}

// replicaFigures gather one configuration's turns.
type replicaFigures struct {
	apply, writeback []journeys // by rate
	webhooks, failed int64
	perReplica       []int64
}

// turn measures apply, then writeback, at each rate for d, adding to f.
func (h *replicaHarness) turn(ctx context.Context, b *bencher, what string, d time.Duration, f *replicaFigures) error {
	w0, f0, per0 := h.front.counts()
	for ri, rate := range b.o.replicas.rates {
		j, err := b.with(rate, d).applyTurn(ctx, fmt.Sprintf("%s: ServiceNow change -> apply at %d/s", what, rate), h.sim, h.nc, h.obs)
		if err != nil {
			return fmt.Errorf("apply at %d/s: %w", rate, err)
		}
		f.apply[ri].add(j)
	}
	for ri, rate := range b.o.replicas.rates {
		prefix := fmt.Sprintf("%s-r%d-", randomHex(3), rate) // new records each turn
		j, err := b.with(rate, d).writebackTurn(ctx, fmt.Sprintf("%s: app change -> write at %d/s", what, rate), h.sim, h.nc, h.js, prefix)
		if err != nil {
			return fmt.Errorf("writeback at %d/s: %w", rate, err)
		}
		f.writeback[ri].add(j)
	}
	w1, f1, per1 := h.front.counts()
	f.webhooks += w1 - w0
	f.failed += f1 - f0
	for k, v := range per1 { // the front's counts only grow
		if k < len(per0) {
			v -= per0[k]
		}
		if k == len(f.perReplica) {
			f.perReplica = append(f.perReplica, 0)
		}
		f.perReplica[k] += v
	}
	return nil
}

// with is b at another rate and duration (pace and the turns read them).
func (b *bencher) with(rate int, d time.Duration) *bencher {
	c := *b
	c.o.rate, c.o.duration = rate, d
	return &c
}

func (r *replicasReport) print(w io.Writer) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "\n%d JetStream nodes (R%d streams), webhooks round-robin over the replicas through a front, %d records;\n",
		r.NATSNodes, r.StreamReplicas, r.Records)
	fmt.Fprintf(w, "1 and 3 replicas in alternating turns (%d each, %.1fs per figure per turn); the sync owner moved %d times;\n", r.Turns, r.TurnSeconds, r.OwnerChanges)
	fmt.Fprintf(w, "latency is end to end (the simulator's part included), the ratio 3 replicas over 1\n")
	fmt.Fprintf(w, "\n%-34s %27s   %27s   %18s\n", "", "1 replica", "3 replicas", "3/1")
	fmt.Fprintf(w, "%-34s %8s %8s %9s   %8s %8s %9s   %5s %5s %6s\n", "", "/s", "p50 ms", "p99 ms", "/s", "p50 ms", "p99 ms", "/s", "p50", "p99")
	row := func(label string, one, three *latencyReport, q replicasRatio) {
		fmt.Fprintf(w, "%-34s %8.0f %8.2f %9.2f   %8.0f %8.2f %9.2f   %5.2f %5.2f %6.2f\n", label,
			one.PerSecond, one.Total.P50, one.Total.P99, three.PerSecond, three.Total.P50, three.Total.P99, q.Throughput, q.P50, q.P99)
	}
	for _, d := range []struct {
		name, title string
		one, three  []*latencyReport
	}{{"apply", "ServiceNow change -> bridge.apply", r.One.Apply, r.Three.Apply}, {"writeback", "app change -> ServiceNow write", r.One.Writeback, r.Three.Writeback}} {
		fmt.Fprintln(w, d.title)
		for i := range d.one {
			var q replicasRatio
			for _, x := range r.Ratios {
				if x.Direction == d.name && x.Rate == d.one[i].Rate {
					q = x
				}
			}
			row(fmt.Sprintf("  at %d/s", d.one[i].Rate), d.one[i], d.three[i], q)
		}
	}
	fmt.Fprintf(w, "webhooks: 1 replica %d (%d failed), 3 replicas %d (%d failed) spread %v\n",
		r.One.Webhooks, r.One.Failed, r.Three.Webhooks, r.Three.Failed, r.Three.PerReplica)
	for _, f := range r.Failover {
		fmt.Fprintf(w, "\nfail-over, lease TTL %s, 3 replicas, %d ServiceNow changes/s, the sync owner killed -9:\n", f.LeaseTTL, f.Rate)
		for _, k := range f.Kills {
			all := fmt.Sprintf("all applied %.2f s after", k.AllAppliedMS/1000)
			if k.Missing > 0 {
				all = fmt.Sprintf("%d not applied within --failover-settle", k.Missing)
			}
			fmt.Fprintf(w, "  ownership acquired %.2f s after the kill, first bridge.apply %.2f s after (last one before: %.0f ms before)\n",
				k.AcquiredMS/1000, k.FirstApplyMS/1000, k.LastApplyBeforeMS)
			fmt.Fprintf(w, "  %d changes pending at the kill, %s; %d apply messages in the gap; webhooks %d, %d failed\n",
				k.PendingAtKill, all, k.AppliedInGap, k.Webhooks, k.Failed)
		}
	}
	if r.LoadAverageEnd != "" {
		fmt.Fprintf(w, "load average at the end: %s\n", r.LoadAverageEnd)
	}
}

// ---- the harness: cluster, simulator, front, replicas ----

type replicaHarness struct {
	stderr  io.Writer
	dir     string
	exe     string
	nodes   []*server.Server
	natsURL string
	nc      *nats.Conn
	js      jetstream.JetStream
	sim     *snsim.Server
	simURL  string
	secret  webhook.Secret
	obs     *arrivals
	front   *front
	env     map[string]string // every replica's settings but the TTL

	replicas []*replica // running, the sync owner first
	started  []*replica // every replica setReplicas started
	cleanup  cleanups
}

func startReplicaHarness(ctx context.Context, stderr io.Writer, records int) (_ *replicaHarness, err error) {
	h := &replicaHarness{stderr: stderr}
	defer func() {
		if err != nil {
			h.close()
		}
	}()
	if h.exe, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("the bridge binary, run as the replicas: %w", err)
	}
	if h.dir, err = os.MkdirTemp("", "nowbridge-bench-replicas-"); err != nil {
		return nil, fmt.Errorf("temporary data directory: %w", err)
	}
	h.cleanup.add(func() { _ = os.RemoveAll(h.dir) })
	if h.nodes, err = startBenchCluster(3, h.dir); err != nil {
		return nil, err
	}
	h.cleanup.add(func() {
		for _, s := range h.nodes {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	var urls []string
	for _, s := range h.nodes {
		urls = append(urls, s.ClientURL())
	}
	h.natsURL = strings.Join(urls, ",")
	if h.nc, err = broker.Connect(ctx, h.natsURL, "bench replicas", slog.New(slog.DiscardHandler)); err != nil {
		return nil, err
	}
	h.cleanup.add(h.nc.Close)
	if h.js, err = jetstream.New(h.nc); err != nil {
		return nil, err
	}

	// The simulator, its business rules off until the first replica runs.
	h.secret = webhook.NewSecret([]byte(randomHex(16)))
	h.sim = snsim.New(snsim.Config{ClientID: "nowbridge-bench", ClientSecret: randomHex(12), Logger: slog.New(slog.DiscardHandler),
		WebhookOptions: snsim.WebhookOptions{Fields: map[string][]string{"incident": snsim.DefaultWebhookFields["incident"]}}})
	h.cleanup.add(h.sim.Close)
	if err := seedTables(h.sim, []string{"incident"}, records, slog.New(slog.DiscardHandler)); err != nil {
		return nil, err
	}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ssrv := &http.Server{Handler: h.sim, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = ssrv.Serve(sln) }()
	h.cleanup.add(func() { _ = ssrv.Close() })
	h.simURL = "http://" + sln.Addr().String()

	obs, closeObs, err := startArrivals()
	if err != nil {
		return nil, err
	}
	h.obs = obs
	h.cleanup.add(closeObs)
	if h.front, err = startFront(); err != nil {
		return nil, err
	}
	h.cleanup.add(h.front.close)

	h.env = map[string]string{
		"BRIDGE_LISTEN":             "127.0.0.1:0",
		"BRIDGE_NATS_URL":           h.natsURL,
		"BRIDGE_STREAM_REPLICAS":    strconv.Itoa(len(h.nodes)),
		"BRIDGE_WEBHOOK_SECRETS":    h.secret.Encoded(),
		"BRIDGE_SN_INSTANCE_URL":    h.simURL,
		"BRIDGE_SN_CLIENT_ID":       h.sim.ClientID(),
		"BRIDGE_SN_CLIENT_SECRET":   h.sim.ClientSecret(),
		"BRIDGE_TABLES":             "incident",
		"BRIDGE_RECONCILE_INTERVAL": "0", // its scans would compete with the measured paths
		"BRIDGE_LOG_FORMAT":         "json",
		benchReplicaEnv:             "1",
	}
	return h, nil
}

func (h *replicaHarness) close() {
	h.stopAll()
	h.cleanup.run()
}

// startBenchCluster starts an n-node JetStream cluster on loopback with its
// stores under dir, and waits until the meta leader sees every node (an R3
// stream cannot be placed before).
func startBenchCluster(n int, dir string) (_ []*server.Server, err error) {
	var servers []*server.Server
	defer func() {
		if err != nil {
			for _, s := range servers {
				s.Shutdown()
			}
		}
	}()
	ports := make([]int, n)
	var routes []string
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("a free port for the cluster: %w", err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i]))
	}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("bench-%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: filepath.Join(dir, fmt.Sprintf("node-%d", i)),
			NoLog: true, NoSigs: true,
		}
		opts.Cluster.Name, opts.Cluster.Host, opts.Cluster.Port = "bench", "127.0.0.1", ports[i]
		opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		s, err := server.NewServer(opts)
		if err != nil {
			return nil, fmt.Errorf("JetStream node %d: %w", i, err)
		}
		go s.Start()
		servers = append(servers, s)
	}
	for i, s := range servers {
		if !s.ReadyForConnections(15 * time.Second) {
			return nil, fmt.Errorf("JetStream node %d not ready within 15s", i)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, s := range servers {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
				return servers, nil
			}
		}
	}
	return nil, fmt.Errorf("the JetStream cluster's meta leader does not see all %d nodes after 30s", n)
}

// warmUp runs with the first replica alone: the business rules on, every
// record changed once and a few app changes written, none measured (as
// the seeded records' webhooks in `bridge bench apply`).
func (h *replicaHarness) warmUp(ctx context.Context, b *bencher) error {
	if err := h.sim.SetWebhooks(
		snsim.WebhookTarget{URL: h.obs.url, Secrets: []webhook.Secret{h.secret}},
		snsim.WebhookTarget{URL: h.front.url + inbound.Path, Secrets: []webhook.Secret{h.secret}},
	); err != nil {
		return err
	}
	bb := b.with(b.o.records, time.Second)
	if _, err := bb.applyTurn(ctx, "warm-up: every record changed once", h.sim, h.nc, h.obs); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	bb = b.with(min(b.o.records, 100), time.Second)
	if _, err := bb.writebackTurn(ctx, "warm-up: app changes", h.sim, h.nc, h.js, "warm-"); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return nil
}

// setReplicas makes n replicas run with lease TTL ttl (0: the default),
// the first one started being the owner: it starts or stops standbys, and
// points the front at the running ones.
func (h *replicaHarness) setReplicas(ctx context.Context, n int, ttl time.Duration) error {
	if len(h.replicas) > n {
		h.front.setTargets(h.urls()[:n]) // first, so no webhook goes to a stopping replica
		stopReplicas(h.replicas[n:])
		h.replicas = h.replicas[:n]
		return nil
	}
	if len(h.replicas) == 0 {
		r, err := h.startReplica(ctx, ttl)
		if err != nil {
			return err
		}
		if _, err := r.logs.await(ctx, r.exited, 60*time.Second, isAcquired); err != nil {
			stopReplicas([]*replica{r})
			return fmt.Errorf("the first replica did not take the sync lease: %w\n%s", err, r.logs.tail(10))
		}
		h.replicas, h.started = append(h.replicas, r), append(h.started, r)
	}
	type started struct {
		r   *replica
		err error
	}
	more := make(chan started, n)
	for range n - len(h.replicas) {
		go func() {
			r, err := h.startReplica(ctx, ttl)
			more <- started{r, err}
		}()
	}
	var errs []error
	for range n - len(h.replicas) {
		s := <-more
		if s.err != nil {
			errs = append(errs, s.err)
			continue
		}
		h.replicas, h.started = append(h.replicas, s.r), append(h.started, s.r)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	h.front.setTargets(h.urls())
	return nil
}

func (h *replicaHarness) urls() []string {
	var urls []string
	for _, r := range h.replicas {
		urls = append(urls, r.url)
	}
	return urls
}

func (h *replicaHarness) stopAll() {
	if h.front != nil {
		h.front.setTargets(nil)
	}
	stopReplicas(h.replicas)
	h.replicas = nil
}

// acquisitions counts "sync ownership acquired" over every replica of the
// side-by-side part.
func (h *replicaHarness) acquisitions() int {
	n := 0
	for _, r := range h.started {
		n += len(r.logs.all(isAcquired))
	}
	return n
}

func isAcquired(l replicaLogLine) bool { return strings.HasPrefix(l.Msg, "sync ownership acquired") }

// ---- replicas: `bridge serve` child processes ----

type replica struct {
	cmd    *exec.Cmd
	url    string
	logs   *replicaLog
	exited chan struct{}
}

// startReplica runs this binary as `bridge serve` with the harness's
// settings and waits until it serves.
func (h *replicaHarness) startReplica(ctx context.Context, ttl time.Duration) (*replica, error) {
	cmd := exec.Command(h.exe, "serve")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	for _, k := range []string{"GOMAXPROCS", "GOGC", "GOMEMLIMIT"} { // the runtime as this process's
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	for k, v := range h.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, "BRIDGE_DATA_DIR="+filepath.Join(h.dir, "replica-"+randomHex(4)))
	if ttl > 0 {
		cmd.Env = append(cmd.Env, "BRIDGE_SYNC_LEASE_TTL="+ttl.String())
	}
	r := &replica{cmd: cmd, logs: &replicaLog{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = r.logs, r.logs
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s serve: %w", h.exe, err)
	}
	go func() { _ = cmd.Wait(); close(r.exited) }()
	serving, err := r.logs.await(ctx, r.exited, 60*time.Second, func(l replicaLogLine) bool { return l.Msg == "bridge serving" })
	if err != nil {
		stopReplicas([]*replica{r})
		return nil, fmt.Errorf("a replica did not start: %w\n%s", err, r.logs.tail(10))
	}
	r.url = "http://" + serving.Listen
	return r, nil
}

// stopReplicas stops them as an orchestrator does (SIGTERM), all at once,
// killing any still running after 30 s.
func stopReplicas(rs []*replica) {
	for _, r := range rs {
		_ = r.cmd.Process.Signal(os.Interrupt)
	}
	for _, r := range rs {
		select {
		case <-r.exited:
		case <-time.After(30 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	}
}

// replicaLog keeps a replica's JSON log lines.
type replicaLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []replicaLogLine
	raw     []string
	changed chan struct{} // closed at each new line
}

type replicaLogLine struct {
	Time   time.Time `json:"time"`
	Level  string    `json:"level"`
	Msg    string    `json:"msg"`
	Listen string    `json:"listen"`
}

func (l *replicaLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		l.raw = append(l.raw, line)
		var ll replicaLogLine
		if json.Unmarshal([]byte(line), &ll) == nil {
			l.lines = append(l.lines, ll)
		}
	}
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return len(p), nil
}

// await returns the first line matching, waiting up to d for it.
func (l *replicaLog) await(ctx context.Context, exited <-chan struct{}, d time.Duration, match func(replicaLogLine) bool) (replicaLogLine, error) {
	deadline := time.After(d)
	for {
		l.mu.Lock()
		for _, ll := range l.lines {
			if match(ll) {
				l.mu.Unlock()
				return ll, nil
			}
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-exited:
			exited = nil // read what it wrote last, then give up
			if _, err := l.find(match); err != nil {
				return replicaLogLine{}, errors.New("it exited")
			}
		case <-deadline:
			return replicaLogLine{}, fmt.Errorf("not within %s", d)
		case <-ctx.Done():
			return replicaLogLine{}, ctx.Err()
		}
	}
}

func (l *replicaLog) find(match func(replicaLogLine) bool) (replicaLogLine, error) {
	if all := l.all(match); len(all) > 0 {
		return all[0], nil
	}
	return replicaLogLine{}, errors.New("no such line")
}

func (l *replicaLog) all(match func(replicaLogLine) bool) []replicaLogLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []replicaLogLine
	for _, ll := range l.lines {
		if match(ll) {
			out = append(out, ll)
		}
	}
	return out
}

func (l *replicaLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.raw[max(0, len(l.raw)-n):], "\n")
}

// ---- the front: the load balancer before the replicas ----

// front spreads webhooks round-robin over the replicas, as a load balancer
// would; on a transport error (a replica died) or a 503 it tries the next
// one, for up to 8 s (inside the business rule's 10 s timeout). Sending a
// webhook again is safe: the stream drops a repeated webhook id.
type front struct {
	url    string
	srv    *http.Server
	client *http.Client

	mu      sync.Mutex
	targets []string // the owner first
	next    int
	per     []int64 // webhooks answered, by place among the targets
	total   int64
	failed  int64
}

func startFront() (*front, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &front{url: "http://" + ln.Addr().String(),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 6 * time.Second}}
	f.srv = &http.Server{Handler: f, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

func (f *front) close() {
	_ = f.srv.Close()
	f.client.CloseIdleConnections()
}

func (f *front) setTargets(urls []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targets = slices.Clone(urls)
	for len(f.per) < len(urls) {
		f.per = append(f.per, 0)
	}
}

// counts are the webhooks so far, those not accepted, and the answered
// ones by the replica's place among the targets (the owner first).
func (f *front) counts() (total, failed int64, perReplica []int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total, f.failed, slices.Clone(f.per)
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	deadline := time.Now().Add(8 * time.Second)
	status, answer := http.StatusServiceUnavailable, []byte("no replica answered")
	for try := 1; time.Now().Before(deadline); try++ {
		f.mu.Lock()
		if len(f.targets) == 0 {
			f.mu.Unlock()
			break
		}
		n := len(f.targets)
		place := f.next % n
		target := f.targets[place]
		f.next++
		f.mu.Unlock()
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, target+r.URL.Path, bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := f.client.Do(req)
		if err == nil {
			status = resp.StatusCode
			answer, _ = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if status != http.StatusServiceUnavailable {
				f.mu.Lock()
				f.per[place]++
				f.mu.Unlock()
				break
			}
		} else if r.Context().Err() != nil {
			return // the sender gave up
		}
		if try%n == 0 {
			time.Sleep(100 * time.Millisecond) // every replica refused: wait a little
		}
	}
	f.mu.Lock()
	f.total++
	if status != http.StatusAccepted {
		f.failed++
	}
	f.mu.Unlock()
	w.WriteHeader(status)
	_, _ = w.Write(answer)
}

// ---- fail-over ----

// failover runs three replicas with lease TTL ttl under ServiceNow changes
// at rate, and kills the sync owner with SIGKILL kills times (restarting
// it in between).
func (h *replicaHarness) failover(ctx context.Context, b *bencher, ttl time.Duration, rate, kills int, settle time.Duration) (*failoverReport, error) {
	h.stopAll()
	if err := h.setReplicas(ctx, 3, ttl); err != nil {
		return nil, err
	}
	defer h.stopAll()
	rep := &failoverReport{LeaseTTL: ttl.String(), Rate: rate}
	for k := range kills {
		owner := 0 // the first started; later, whoever took over last
		var latest time.Time
		for i, r := range h.replicas {
			for _, l := range r.logs.all(isAcquired) {
				if l.Time.After(latest) {
					owner, latest = i, l.Time
				}
			}
		}
		kr, err := h.killUnderLoad(ctx, b, owner, ttl, rate, settle)
		if err != nil {
			return nil, err
		}
		rep.Kills = append(rep.Kills, *kr)
		if k < kills-1 { // the killed one comes back as a standby
			r, err := h.startReplica(ctx, ttl)
			if err != nil {
				return nil, err
			}
			h.replicas[owner] = r
			h.front.setTargets(h.urls())
		}
	}
	return rep, nil
}

// killUnderLoad changes records at rate, kills replica i (the owner) a few
// seconds in, keeps changing records until the lease could have moved,
// then times the hand-over from the logs and the bridge.apply messages.
// The dead replica stays among the front's targets, refusing connections,
// as it would behind a load balancer that has not noticed yet.
func (h *replicaHarness) killUnderLoad(ctx context.Context, b *bencher, i int, ttl time.Duration, rate int, settle time.Duration) (*failoverKill, error) {
	owner := h.replicas[i]
	var mu sync.Mutex
	changed := map[string]time.Time{}  // "<sys_id>:<sys_mod_count>" -> made at
	received := map[string]time.Time{} // -> its bridge.apply message arrived at
	var arrivals []time.Time
	sub, err := h.nc.Subscribe(events.ApplySubjects, func(m *nats.Msg) {
		now := time.Now()
		var am events.ApplyMessage
		if json.Unmarshal(m.Data, &am) != nil || am.SysID == "" {
			return
		}
		mu.Lock()
		received[am.SysID+":"+strconv.FormatInt(am.Version, 10)] = now
		arrivals = append(arrivals, now)
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)

	ids := h.sim.IDs("incident")
	const before = 3 * time.Second
	var killedAt atomic.Pointer[time.Time]
	kill := time.AfterFunc(before, func() {
		_ = owner.cmd.Process.Kill()
		now := time.Now()
		killedAt.Store(&now)
	})
	w0, f0, _ := h.front.counts()
	bb := b.with(rate, before+ttl+3*time.Second)
	_, err = bb.pace(ctx, fmt.Sprintf("fail-over, lease TTL %s: the owner killed after %s", ttl, before), bb.o.duration, func(n int) error {
		id := ids[n%len(ids)]
		t0 := time.Now()
		value := fmt.Sprintf("fail-over change %d at %d", n, t0.UnixNano()) // never set before, so a change
		rec, err := h.sim.Update("incident", id, map[string]string{"short_description": value}, "beth.anglin")
		if err != nil {
			return err
		}
		mu.Lock()
		changed[id+":"+rec["sys_mod_count"]] = t0
		mu.Unlock()
		return nil
	})
	if !kill.Stop() { // it ran (or runs): wait for the death
		<-owner.exited
	}
	if err != nil {
		return nil, err
	}
	w1, f1, _ := h.front.counts()
	at := killedAt.Load()
	if at == nil {
		return nil, errors.New("the load stopped before the kill")
	}
	kr := &failoverKill{Webhooks: w1 - w0, Failed: f1 - f0}

	// Who took over, and when.
	var acquired time.Time
	tick, done := b.bar(0, "fail-over: waiting for another replica to take over")
	defer done()
	afterKill := func(l replicaLogLine) bool { return isAcquired(l) && l.Time.After(*at) }
	for deadline := at.Add(3*ttl + 30*time.Second); acquired.IsZero(); {
		for j, r := range h.replicas {
			if j == i {
				continue
			}
			if l, err := r.logs.find(afterKill); err == nil && (acquired.IsZero() || l.Time.Before(acquired)) {
				acquired = l.Time
			}
		}
		if !acquired.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no replica took the sync lease within %s of the owner's death", time.Since(*at).Round(time.Second))
		}
		tick()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	kr.AcquiredMS = ms(acquired.Sub(*at))

	// The new owner's first apply message, and every change made before
	// the kill applied (or --failover-settle passed).
	for settled := at.Add(settle); ; {
		mu.Lock()
		var first, lastBefore, lastPending time.Time
		gap, pending, missing := 0, 0, 0
		for _, t := range arrivals {
			switch {
			case t.Before(*at):
				lastBefore = maxTime(lastBefore, t)
			case t.Before(acquired):
				gap++
			case first.IsZero() || t.Before(first):
				first = t
			}
		}
		for key, t0 := range changed {
			if !t0.Before(*at) {
				continue
			}
			t, ok := received[key]
			if !ok {
				missing++
				pending++
				continue
			}
			if !t.Before(*at) {
				pending++
				lastPending = maxTime(lastPending, t)
			}
		}
		mu.Unlock()
		kr.AppliedInGap, kr.PendingAtKill, kr.Missing = gap, pending, missing
		if !lastBefore.IsZero() {
			kr.LastApplyBeforeMS = ms(at.Sub(lastBefore))
		}
		if !first.IsZero() {
			kr.FirstApplyMS = ms(first.Sub(*at))
		}
		if !first.IsZero() && missing == 0 {
			if !lastPending.IsZero() {
				kr.AllAppliedMS = ms(lastPending.Sub(*at))
			}
			return kr, nil
		}
		if time.Now().After(settled) {
			if first.IsZero() {
				return nil, fmt.Errorf("no bridge.apply message within %s of the owner's death (ownership moved after %s)", settle, acquired.Sub(*at).Round(time.Millisecond))
			}
			return kr, nil
		}
		tick()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
