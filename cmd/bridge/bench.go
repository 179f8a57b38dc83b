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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// benchModes are what `bridge bench` measures; end-to-end runs them all
// but replicas (a cluster and child processes, minutes: bench_replicas.go).
var benchModes = []string{"ingest", "apply", "writeback", "lag", "end-to-end", "replicas"}

// benchOptions are `bridge bench`'s flags.
type benchOptions struct {
	duration time.Duration
	clients  int
	rate     int
	records  int
	json     bool
	quiet    bool
	replicas replicasOptions
}

func newBenchCmd(a *app) *cobra.Command {
	var o benchOptions
	cmd := &cobra.Command{
		Use:   "bench ingest|apply|writeback|lag|end-to-end|replicas",
		Short: "Measure throughput and latency on this machine (embedded JetStream and the simulator on loopback)",
		Long: `bridge bench measures the bridge on this machine, like nats bench: everything
runs in this process on loopback (an embedded JetStream server in a temporary
directory, the ServiceNow simulator, the bridge wired as bridge dev wires it).

  ingest      signed webhooks -> 202 with --clients concurrent senders, next to
              a minimal forwarder (read the body, one JetStream publish with the
              webhook id as Nats-Msg-Id, 202; no verification, no validation) on
              the same server at the same concurrency, in alternating turns of
              a second for --duration each: the ratio bridge/forwarder
  apply       ServiceNow change -> bridge.apply message, p50/p99 at --rate
              changes/s; the simulator's own part (change -> webhook arriving)
              is measured per change in the same run and subtracted
  writeback   app change on app.<entity>.upsert -> ServiceNow write confirmed
              (its bridge.result), p50/p99 at --rate changes/s; the simulator's
              Table API time is measured in the same run and subtracted
  lag         webhooks at the receiver's maximum (--clients senders) for
              --duration: how far the apply consumer falls behind, and how long
              it takes to catch up
  end-to-end  all of the above, one after the other
  replicas    1 and 3 replicas of bridge serve (this binary, as child
              processes) on one 3-node JetStream cluster with R3 streams, the
              simulator's webhooks spread round-robin over them by a front:
              apply and writeback as above at each of --rates, in alternating
              turns (1, 3, 3, 1, ...) for --duration each, the ratios 3/1;
              then the sync owner killed -9 under load with each of
              --failover-ttls as BRIDGE_SYNC_LEASE_TTL: the time until another
              replica takes over and the first bridge.apply after the death

Results go to stdout as a table, or as JSON with --json; a progress bar goes to
stderr unless --quiet. The machine's load average is part of the report: on a
shared machine, compare figures from one run only.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mode := args[0]
			if !slices.Contains(benchModes, mode) {
				return usageError{fmt.Errorf("unknown mode %q: use one of %s", mode, strings.Join(benchModes, ", "))}
			}
			switch {
			case o.duration <= 0:
				return usageError{fmt.Errorf("--duration must be positive, got %s", o.duration)}
			case o.clients <= 0:
				return usageError{fmt.Errorf("--clients must be positive, got %d", o.clients)}
			case o.rate <= 0:
				return usageError{fmt.Errorf("--rate must be positive, got %d", o.rate)}
			case o.records <= 0:
				return usageError{fmt.Errorf("--records must be positive, got %d", o.records)}
			}
			if err := o.replicas.validate(); mode == "replicas" && err != nil {
				return usageError{err}
			}
			rep, err := runBench(cmd.Context(), a, mode, o)
			if err != nil {
				return err
			}
			if o.json {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			rep.print(a.stdout)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 10*time.Second, "length of each measured phase")
	f.IntVar(&o.clients, "clients", 32, "concurrent HTTP senders (ingest, lag)")
	f.IntVar(&o.rate, "rate", 1000, "changes per second, sustained (apply, writeback)")
	f.IntVar(&o.records, "records", 500, "records the changes are spread over (apply, writeback)")
	f.BoolVar(&o.json, "json", false, "print the report as JSON")
	f.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	o.replicas.addFlags(f)
	return cmd
}

// benchReport is what `bridge bench` prints; unused sections are omitted.
type benchReport struct {
	Mode        string          `json:"mode"`
	GoVersion   string          `json:"go_version"`
	GOMAXPROCS  int             `json:"gomaxprocs"`
	LoadAverage string          `json:"load_average,omitempty"` // /proc/loadavg at the start (1, 5, 15 min)
	Ingest      *ingestReport   `json:"ingest,omitempty"`
	Apply       *latencyReport  `json:"apply,omitempty"`
	Writeback   *latencyReport  `json:"writeback,omitempty"`
	Lag         *applyLagReport `json:"apply_lag,omitempty"`
	Replicas    *replicasReport `json:"replicas,omitempty"`
}

// ingestReport compares the receiver with a minimal forwarder.
type ingestReport struct {
	Clients   int         `json:"clients"`
	BodyBytes int         `json:"body_bytes"`
	Forwarder phaseReport `json:"forwarder"`
	Bridge    phaseReport `json:"bridge"`
	// Ratio is the bridge's rate over the forwarder's.
	Ratio float64 `json:"ratio"`
}

type phaseReport struct {
	Requests  int64   `json:"requests"`
	Failures  int64   `json:"failures"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
}

// latencyReport is one direction at a sustained rate. Bridge is what the
// bridge adds; Simulator the simulator's own part, subtracted; Total both.
type latencyReport struct {
	Rate      int          `json:"rate"` // asked for, per second
	Sent      int          `json:"sent"`
	Received  int          `json:"received"`
	Seconds   float64      `json:"seconds"`
	PerSecond float64      `json:"per_second"` // received over the time from the first change to the last arrival
	Bridge    percentileMS `json:"bridge_ms"`
	Simulator percentileMS `json:"simulator_ms"`
	Total     percentileMS `json:"total_ms"`
}

type percentileMS struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

// applyLagReport is the apply consumer under ingest at the receiver's maximum.
type applyLagReport struct {
	Clients          int     `json:"clients"`
	Seconds          float64 `json:"seconds"`
	IngestPerSecond  float64 `json:"ingest_per_second"`
	ApplyPerSecond   float64 `json:"apply_per_second"` // applied during the ingest
	Stored           uint64  `json:"stored"`
	AppliedAtEnd     uint64  `json:"applied_at_end"`
	LagAtEnd         uint64  `json:"lag_at_end"`         // stored but not yet applied when the ingest stopped
	MaxLag           uint64  `json:"max_lag"`            // the largest lag sampled
	CatchUpSeconds   float64 `json:"catch_up_seconds"`   // from the end of the ingest until nothing is pending
	DrainPerSecond   float64 `json:"drain_per_second"`   // apply rate while catching up
	SustainedApplied float64 `json:"sustained_fraction"` // applied over stored at the end of the ingest
}

func runBench(ctx context.Context, a *app, mode string, o benchOptions) (*benchReport, error) {
	rep := &benchReport{Mode: mode, GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), LoadAverage: loadAverage()}
	b := &bencher{a: a, o: o}
	if mode == "replicas" {
		var err error
		if rep.Replicas, err = b.replicas(ctx); err != nil {
			return nil, fmt.Errorf("bench replicas: %w", err)
		}
		return rep, nil
	}
	run := func(name string, f func(context.Context) error) error {
		if mode != name && mode != "end-to-end" {
			return nil
		}
		if err := f(ctx); err != nil {
			return fmt.Errorf("bench %s: %w", name, err)
		}
		return nil
	}
	if err := run("ingest", func(ctx context.Context) (err error) { rep.Ingest, err = b.ingest(ctx); return }); err != nil {
		return nil, err
	}
	if err := run("apply", func(ctx context.Context) (err error) { rep.Apply, err = b.applyLatency(ctx); return }); err != nil {
		return nil, err
	}
	if err := run("writeback", func(ctx context.Context) (err error) { rep.Writeback, err = b.writebackLatency(ctx); return }); err != nil {
		return nil, err
	}
	if err := run("lag", func(ctx context.Context) (err error) { rep.Lag, err = b.applyLag(ctx); return }); err != nil {
		return nil, err
	}
	return rep, nil
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func (r *benchReport) print(w io.Writer) {
	fmt.Fprintf(w, "bridge bench %s: %s, GOMAXPROCS %d, load average %s\n", r.Mode, r.GoVersion, r.GOMAXPROCS, r.LoadAverage)
	if in := r.Ingest; in != nil {
		fmt.Fprintf(w, "\ningest, %d clients, %d-byte bodies:\n", in.Clients, in.BodyBytes)
		for _, p := range []struct {
			name string
			r    phaseReport
		}{{"forwarder (no checks)", in.Forwarder}, {"bridge (signed, validated)", in.Bridge}} {
			fmt.Fprintf(w, "  %-28s %8d in %5.1fs = %7.0f /s   p50 %6.2f ms   p99 %6.2f ms   failures %d\n",
				p.name, p.r.Requests, p.r.Seconds, p.r.PerSecond, p.r.P50ms, p.r.P99ms, p.r.Failures)
		}
		fmt.Fprintf(w, "  ratio bridge/forwarder: %.2f\n", in.Ratio)
	}
	lat := func(name string, l *latencyReport) {
		if l == nil {
			return
		}
		fmt.Fprintf(w, "\n%s at %d/s: %d sent, %d received in %.1fs (%.0f/s)\n", name, l.Rate, l.Sent, l.Received, l.Seconds, l.PerSecond)
		fmt.Fprintf(w, "  %-22s p50 %7.2f ms   p99 %7.2f ms\n", "bridge", l.Bridge.P50, l.Bridge.P99)
		fmt.Fprintf(w, "  %-22s p50 %7.2f ms   p99 %7.2f ms\n", "simulator (subtracted)", l.Simulator.P50, l.Simulator.P99)
		fmt.Fprintf(w, "  %-22s p50 %7.2f ms   p99 %7.2f ms\n", "total", l.Total.P50, l.Total.P99)
	}
	lat("ServiceNow change -> bridge.apply", r.Apply)
	lat("app change -> ServiceNow write", r.Writeback)
	if l := r.Lag; l != nil {
		fmt.Fprintf(w, "\napply lag under ingest at the receiver's maximum (%d clients, %.1fs):\n", l.Clients, l.Seconds)
		fmt.Fprintf(w, "  ingest %.0f/s, applied meanwhile %.0f/s (%.2f of stored)\n", l.IngestPerSecond, l.ApplyPerSecond, l.SustainedApplied)
		fmt.Fprintf(w, "  stored %d, applied %d, lag %d at the end (max %d); caught up in %.1fs (%.0f/s)\n",
			l.Stored, l.AppliedAtEnd, l.LagAtEnd, l.MaxLag, l.CatchUpSeconds, l.DrainPerSecond)
	}
	r.Replicas.print(w)
}

// bencher runs the phases of one `bridge bench`.
type bencher struct {
	a *app
	o benchOptions
}

// bar is a progress bar over d on stderr, or nothing with --quiet.
func (b *bencher) bar(d time.Duration, what string) (tick func(), done func()) {
	if b.o.quiet {
		return func() {}, func() {}
	}
	total := d.Milliseconds()
	if total <= 0 {
		total = -1 // a spinner: no known end
	}
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(b.a.stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
	start := time.Now()
	return func() {
			if total < 0 {
				_ = bar.Add64(1)
				return
			}
			_ = bar.Set64(min(time.Since(start), d).Milliseconds())
		},
		func() { _ = bar.Finish(); _ = bar.Clear() }
}

// ticker drives tick every 200 ms until stop is called.
func ticker(tick func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				tick()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// ---- ingest ----

// ingestStack is an embedded JetStream with the bridge's streams, the
// receiver and the reference forwarder, each on its own loopback port.
type ingestStack struct {
	js        jetstream.JetStream
	receiver  string // URL of the receiver's webhook path
	forwarder string // URL of the forwarder
	secret    webhook.Secret
	url       string // the embedded server's client URL
	close     func()
}

func startIngestStack(ctx context.Context) (_ *ingestStack, err error) {
	var cleanup cleanups
	defer func() {
		if err != nil {
			cleanup.run()
		}
	}()
	dir, err := os.MkdirTemp("", "nowbridge-bench-")
	if err != nil {
		return nil, fmt.Errorf("temporary data directory: %w", err)
	}
	cleanup.add(func() { _ = os.RemoveAll(dir) })
	quiet := slog.New(slog.DiscardHandler)
	ns, err := broker.StartEmbedded(broker.EmbeddedConfig{Listen: "127.0.0.1:0", DataDir: dir, Logger: quiet})
	if err != nil {
		return nil, err
	}
	cleanup.add(func() { ns.Shutdown(); ns.WaitForShutdown() })
	// The receiver's connection, as in `bridge serve`.
	nc, err := broker.Connect(ctx, ns.ClientURL(), "bench receiver", quiet)
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
	st := &ingestStack{js: js, url: ns.ClientURL(), secret: webhook.NewSecret([]byte(randomHex(16)))}
	// With an echo cache, as `bridge serve` runs it: every webhook is checked.
	rcv, err := inbound.New(inbound.Config{Conn: nc, Secrets: []webhook.Secret{st.secret}, Tables: []string{"incident"},
		Echoes: dedupe.New(dedupe.Config{Tables: mapping.Default(nil)}), Logger: quiet, Registry: prometheus.NewRegistry()})
	if err != nil {
		return nil, err
	}
	rln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- rcv.Serve(sctx, rln, 5*time.Second) }()
	cleanup.add(func() { stop(); <-served })
	st.receiver = "http://" + rln.Addr().String() + inbound.Path

	// The forwarder has its own connection, as a separate program would.
	fnc, err := nats.Connect(ns.ClientURL(), nats.Name("bench forwarder"))
	if err != nil {
		return nil, err
	}
	cleanup.add(fnc.Close)
	fjs, err := jetstream.New(fnc)
	if err != nil {
		return nil, err
	}
	fln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	fsrv := &http.Server{Handler: forwarder(fjs, events.SNSubject("incident", events.ActionUpdate)), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = fsrv.Serve(fln) }()
	cleanup.add(func() { _ = fsrv.Close() })
	st.forwarder = "http://" + fln.Addr().String() + "/"
	st.close = cleanup.run
	return st, nil
}

// forwarder is the minimal webhook-to-JetStream program a user might write
// instead of the bridge, the reference of the ingest benchmark: read the
// body, publish it with the webhook id as Nats-Msg-Id, answer 202 once
// stored. No signature, no validation, no echo check.
func forwarder(js jetstream.JetStream, subject string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{events.HeaderMsgID: {r.Header.Get(webhook.HeaderID)}}}
		if _, err := js.PublishMsg(r.Context(), msg); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
}

func (b *bencher) ingest(ctx context.Context) (*ingestReport, error) {
	st, err := startIngestStack(ctx)
	if err != nil {
		return nil, err
	}
	defer st.close()
	sample, _ := events.EncodeWebhookBody(benchEvent(0, 0))
	rep := &ingestReport{Clients: b.o.clients, BodyBytes: len(sample)}
	// Turns of at most a second each, alternating which goes first: the
	// load of a shared machine drifts, and both see the same drift.
	fwd, brg := newSender(st.forwarder, st.secret, 1, b.o.clients), newSender(st.receiver, st.secret, 2, b.o.clients)
	defer fwd.tr.CloseIdleConnections()
	defer brg.tr.CloseIdleConnections()
	turn := min(time.Second, b.o.duration)
	tick, done := b.bar(2*b.o.duration, "ingest: forwarder and bridge in turns")
	stopTick := ticker(tick)
	for i := 0; time.Duration(i)*turn < b.o.duration && ctx.Err() == nil; i++ {
		d := min(turn, b.o.duration-time.Duration(i)*turn)
		first, second := fwd, brg
		if i%2 == 1 {
			first, second = brg, fwd
		}
		first.run(ctx, d)
		second.run(ctx, d)
	}
	stopTick()
	done()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep.Forwarder, rep.Bridge = fwd.report(), brg.report()
	if rep.Forwarder.PerSecond == 0 || rep.Bridge.PerSecond == 0 {
		return rep, fmt.Errorf("no request succeeded (forwarder %d, bridge %d failures): is the machine out of ports or memory?",
			rep.Forwarder.Failures, rep.Bridge.Failures)
	}
	rep.Ratio = round2(rep.Bridge.PerSecond / rep.Forwarder.PerSecond)
	return rep, nil
}

// sender posts signed ~1 KiB webhooks to one URL from clients goroutines;
// each event is new (phase and a sequence make its sys_id).
type sender struct {
	url     string
	secret  webhook.Secret
	phase   int
	clients int
	tr      *http.Transport
	client  *http.Client
	seq     atomic.Int64

	lat      []time.Duration // of every success so far
	failures int64
	elapsed  time.Duration
}

func newSender(url string, secret webhook.Secret, phase, clients int) *sender {
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	return &sender{url: url, secret: secret, phase: phase, clients: clients, tr: tr,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// run sends for d and adds the outcome to the sender's totals.
func (s *sender) run(ctx context.Context, d time.Duration) {
	var failures atomic.Int64
	lat := make([][]time.Duration, s.clients)
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range s.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if err := postWebhook(ctx, s.client, s.url, s.secret, benchEvent(s.phase, s.seq.Add(1))); err != nil {
					failures.Add(1)
					continue
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	s.elapsed += time.Since(start)
	s.failures += failures.Load()
	for _, l := range lat {
		s.lat = append(s.lat, l...)
	}
}

func (s *sender) report() phaseReport {
	slices.Sort(s.lat)
	secs := s.elapsed.Seconds()
	if secs == 0 {
		secs = 1
	}
	return phaseReport{Requests: int64(len(s.lat)), Failures: s.failures, Seconds: round2(s.elapsed.Seconds()),
		PerSecond: round2(float64(len(s.lat)) / secs), P50ms: ms(quantile(s.lat, 0.50)), P99ms: ms(quantile(s.lat, 0.99))}
}

// sendPhase is one sender for d with a progress bar.
func (b *bencher) sendPhase(ctx context.Context, name, url string, secret webhook.Secret, phase int, clients int, d time.Duration) phaseReport {
	s := newSender(url, secret, phase, clients)
	defer s.tr.CloseIdleConnections()
	tick, done := b.bar(d, name)
	stopTick := ticker(tick)
	s.run(ctx, d)
	stopTick()
	done()
	return s.report()
}

// postWebhook sends ev as a business rule would and wants a 202.
func postWebhook(ctx context.Context, client *http.Client, url string, secret webhook.Secret, ev *events.SNEvent) error {
	body, err := events.EncodeWebhookBody(ev)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	webhook.SetHeaders(req.Header, secret, ev.MsgID(), time.Now(), body)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("answer %d", resp.StatusCode)
	}
	return nil
}

// benchEvent is a ~1 KiB incident update; phase and seq make its id unique.
func benchEvent(phase int, seq int64) *events.SNEvent {
	return &events.SNEvent{
		Instance:     "dev12345",
		Table:        "incident",
		SysID:        fmt.Sprintf("%08x%024x", phase, seq),
		Action:       events.ActionUpdate,
		SysModCount:  4,
		SysUpdatedOn: "2026-11-28 10:00:00",
		SysUpdatedBy: "beth.anglin",
		Changed:      []string{"comments", "state"},
		Record: events.Fields{
			"number": fmt.Sprintf("INC%07d", seq%10_000_000), "short_description": "Email down", "state": "2",
			"description": "Users on floor 3 report that Outlook cannot connect since 09:40; webmail works.",
			"caller_id":   "681ccaf9c0a8016400b98a06818d57c7", "assignment_group": "287ebd7da9fe198100f92cc8d1d2154e",
			"category": "network", "subcategory": "email", "impact": "2", "urgency": "2", "priority": "3",
			"opened_at": "2026-11-28 09:41:12", "opened_by": "681b365ec0a80164000fb0b05854a0cd",
			"sys_created_on": "2026-11-28 09:41:12", "sys_created_by": "beth.anglin", "sys_updated_on": "2026-11-28 10:00:00",
			"correlation_id": "TCK-1042", "comments": "2026-11-28 10:00:00 - Beth Anglin (Additional comments)\nLooking into it",
			"work_notes": "", "close_code": "", "close_notes": "", "contact_type": "email", "location": "", "cmdb_ci": "",
		},
	}
}

// ---- the whole bridge: apply, writeback, lag ----

// startBenchDev starts what `bridge dev` runs, on free loopback ports,
// syncing incident only, with records seeded records.
func (b *bencher) startBenchDev(ctx context.Context, records int) (*devStack, func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	st, wait, err := startDev(ctx, b.a.stderr, devOptions{
		listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0",
		tables: []string{"incident"}, seed: records,
	})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return st, func() { cancel(); _ = wait() }, nil
}

// arrivals records when each webhook reached an observer placed before
// the bridge among the simulator's targets: the end of the simulator's
// own part of a change's journey.
type arrivals struct {
	url string // where it listens (startArrivals)
	mu  sync.Mutex
	at  map[string]time.Time // "<sys_id>:<sys_mod_count>"
}

func (o *arrivals) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	_, _ = io.Copy(io.Discard, r.Body)
	// webhook-id is "<table>:<sys_id>:<sys_mod_count>:<action>".
	if parts := strings.Split(r.Header.Get(webhook.HeaderID), ":"); len(parts) == 4 {
		o.mu.Lock()
		o.at[parts[1]+":"+parts[2]] = now
		o.mu.Unlock()
	}
	w.WriteHeader(http.StatusAccepted)
}

func (o *arrivals) get(key string) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	t, ok := o.at[key]
	return t, ok
}

// pace calls send(i) rate times a second for d, from a few workers so a
// slow call does not hold the schedule back; it returns how many it sent.
func (b *bencher) pace(ctx context.Context, what string, d time.Duration, send func(i int) error) (int, error) {
	const workers = 4
	jobs := make(chan int, b.o.rate)
	var sent atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := send(i); err != nil {
					errOnce.Do(func() { firstErr = err })
					continue
				}
				sent.Add(1)
			}
		}()
	}
	tick, done := b.bar(d, what)
	stopTick := ticker(tick)
	start := time.Now()
	interval := time.Second / time.Duration(b.o.rate)
	n := int(d / interval)
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	stopTick()
	done()
	if sent.Load() == 0 && firstErr != nil {
		return 0, firstErr
	}
	return int(sent.Load()), ctx.Err()
}

// applyLatency: ServiceNow change (a person's edit in the simulator) ->
// the bridge.apply message for that version. The simulator's part, from
// the change until its webhook arrives, is taken per change from an
// observer the simulator posts to just before the bridge.
func (b *bencher) applyLatency(ctx context.Context) (*latencyReport, error) {
	st, stop, err := b.startBenchDev(ctx, b.o.records)
	if err != nil {
		return nil, err
	}
	defer stop()
	obs, closeObs, err := startArrivals()
	if err != nil {
		return nil, err
	}
	defer closeObs()
	if err := st.sim.SetWebhooks(
		snsim.WebhookTarget{URL: obs.url, Secrets: []webhook.Secret{st.secret}},
		snsim.WebhookTarget{URL: st.bridge + inbound.Path, Secrets: []webhook.Secret{st.secret}},
	); err != nil {
		return nil, err
	}
	// The seeded records' own webhooks first: they are not measured.
	if err := st.sim.WaitWebhooks(ctx); err != nil {
		return nil, err
	}
	j, err := b.applyTurn(ctx, "apply", st.sim, st.nc, obs)
	if err != nil {
		return nil, err
	}
	return j.report(b.o.rate), nil
}

// journeys are the measured journeys of one or more turns, before
// percentiles: span adds up each turn's time from its first change to its
// last arrival.
type journeys struct {
	sent               int
	span               time.Duration
	bridge, sim, total []time.Duration
}

func (j *journeys) add(o *journeys) {
	j.sent += o.sent
	j.span += o.span
	j.bridge = append(j.bridge, o.bridge...)
	j.sim = append(j.sim, o.sim...)
	j.total = append(j.total, o.total...)
}

func (j *journeys) report(rate int) *latencyReport {
	return latencies(rate, j.sent, len(j.total), j.span, j.bridge, j.sim, j.total)
}

// startArrivals serves an arrivals observer on a loopback port.
func startArrivals() (*arrivals, func(), error) {
	obs := &arrivals{at: map[string]time.Time{}}
	oln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	obs.url = "http://" + oln.Addr().String() + "/"
	osrv := &http.Server{Handler: obs, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = osrv.Serve(oln) }()
	return obs, func() { _ = osrv.Close() }, nil
}

// applyTurn makes --rate changes a second for --duration in sim (records of
// incident, in turn) and times each until its bridge.apply message arrives
// on nc; obs must be among sim's webhook targets, before the bridge.
func (b *bencher) applyTurn(ctx context.Context, what string, sim *snsim.Server, nc *nats.Conn, obs *arrivals) (*journeys, error) {
	ids := sim.IDs("incident")
	if len(ids) == 0 {
		return nil, errors.New("the simulator has no incident to change")
	}

	var mu sync.Mutex
	changed := map[string]time.Time{} // "<sys_id>:<sys_mod_count>" -> when the change was made
	received := map[string]time.Time{}
	sub, err := nc.Subscribe(events.ApplySubjects, func(m *nats.Msg) {
		now := time.Now()
		var am events.ApplyMessage
		if json.Unmarshal(m.Data, &am) != nil || am.SysID == "" {
			return
		}
		mu.Lock()
		received[am.SysID+":"+strconv.FormatInt(am.Version, 10)] = now
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)

	start := time.Now()
	sent, err := b.pace(ctx, what, b.o.duration, func(i int) error {
		id := ids[i%len(ids)]
		t0 := time.Now()
		// A value never set before: a change that sets the value a record
		// has already is no change, and the bridge hands nothing over.
		value := fmt.Sprintf("bench change %d at %d", i, t0.UnixNano())
		rec, err := sim.Update("incident", id, map[string]string{"short_description": value}, "beth.anglin")
		if err != nil {
			return err
		}
		mu.Lock()
		changed[id+":"+rec["sys_mod_count"]] = t0
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := waitAll(ctx, &mu, changed, received, 30*time.Second); err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	j := &journeys{sent: sent}
	var lastAt time.Time
	for key, t0 := range changed {
		t2, ok := received[key]
		if !ok {
			continue
		}
		t1, ok := obs.get(key)
		if !ok {
			continue
		}
		lastAt = maxTime(lastAt, t2)
		j.total = append(j.total, t2.Sub(t0))
		j.sim = append(j.sim, t1.Sub(t0))
		j.bridge = append(j.bridge, t2.Sub(t1))
	}
	if len(j.total) == 0 {
		return nil, fmt.Errorf("none of %d changes reached bridge.apply within 30 s of the last: see the warnings above", sent)
	}
	j.span = lastAt.Sub(start)
	return j, nil
}

// writebackLatency: an app change published on app.<entity>.upsert -> its
// bridge.result (the ServiceNow write answered and recorded). The
// simulator's part is its own time serving the Table API calls of the
// run (mean per call, times the calls per change), subtracted per change.
func (b *bencher) writebackLatency(ctx context.Context) (*latencyReport, error) {
	// One seeded record, so the bridge learns the table's fields from it.
	st, stop, err := b.startBenchDev(ctx, 1)
	if err != nil {
		return nil, err
	}
	defer stop()
	j, err := b.writebackTurn(ctx, "writeback", st.sim, st.nc, st.js, "")
	if err != nil {
		return nil, err
	}
	return j.report(b.o.rate), nil
}

// writebackTurn publishes --rate app changes a second for --duration over
// --records external ids (BENCH-<prefix><n>: a new prefix, new records)
// and times each until its final bridge.result arrives on nc.
func (b *bencher) writebackTurn(ctx context.Context, what string, sim *snsim.Server, nc *nats.Conn, js jetstream.JetStream, prefix string) (*journeys, error) {
	entity := events.DefaultEntity
	var mu sync.Mutex
	published := map[string]time.Time{} // "<external_id>:<version>"
	results := map[string]time.Time{}
	var failed atomic.Int64
	sub, err := nc.Subscribe(events.ResultsSubjects, func(m *nats.Msg) {
		now := time.Now()
		var r events.Result
		if json.Unmarshal(m.Data, &r) != nil || !r.Final() {
			return
		}
		if r.Outcome != events.OutcomeCreated && r.Outcome != events.OutcomeUpdated && r.Outcome != events.OutcomeUnchanged {
			failed.Add(1)
		}
		mu.Lock()
		results[r.ExternalID+":"+strconv.FormatInt(r.Version, 10)] = now
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	sim.ResetStats()

	records := b.o.records
	start := time.Now()
	sent, err := b.pace(ctx, what, b.o.duration, func(i int) error {
		ext := fmt.Sprintf("BENCH-%s%d", prefix, i%records)
		version := int64(i/records + 1)
		body, err := json.Marshal(events.AppChange{ExternalID: ext, Version: version, UpdatedAt: time.Now().UTC(),
			Fields: map[string]string{"title": "bench change " + strconv.Itoa(i), "status": "new"}})
		if err != nil {
			return err
		}
		key := ext + ":" + strconv.FormatInt(version, 10)
		mu.Lock()
		published[key] = time.Now()
		mu.Unlock()
		_, err = js.Publish(ctx, events.AppSubject(entity, events.AppUpsert), body,
			jetstream.WithMsgID(events.AppMsgID(entity, ext, version, events.AppUpsert)))
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := waitAll(ctx, &mu, published, results, 60*time.Second); err != nil {
		return nil, err
	}
	simPerChange := simTableTime(sim, sent)
	mu.Lock()
	defer mu.Unlock()
	j := &journeys{sent: sent}
	var lastAt time.Time
	for key, t0 := range published {
		t1, ok := results[key]
		if !ok {
			continue
		}
		lastAt = maxTime(lastAt, t1)
		d := t1.Sub(t0)
		j.total = append(j.total, d)
		j.sim = append(j.sim, simPerChange)
		j.bridge = append(j.bridge, max(d-simPerChange, 0))
	}
	if len(j.total) == 0 {
		return nil, fmt.Errorf("none of %d app changes got a result within 60 s of the last: see the warnings above", sent)
	}
	if f := failed.Load(); f > 0 {
		return nil, fmt.Errorf("%d app changes were not written (rejected, conflict or stale): see the warnings above", f)
	}
	j.span = lastAt.Sub(start)
	return j, nil
}

// simTableTime is the simulator's own time per app change: the mean time
// it took to serve a Table API call (from its request log, the latest
// calls) times the Table API calls per change in the run.
func simTableTime(sim *snsim.Server, changes int) time.Duration {
	var sum time.Duration
	var logged int
	for _, r := range sim.Requests() {
		if strings.HasPrefix(r.Path, "/api/now/table/") {
			sum += r.Duration
			logged++
		}
	}
	calls := 0
	for k, n := range sim.RequestStats() {
		if strings.HasPrefix(k.Path, "/api/now/table/") {
			calls += n
		}
	}
	if logged == 0 || changes == 0 {
		return 0
	}
	return time.Duration(float64(sum) / float64(logged) * float64(calls) / float64(changes))
}

// latencies builds a report; PerSecond is what arrived over the time from
// the first send to the last arrival.
func latencies(rate, sent, received int, span time.Duration, bridgePart, simPart, total []time.Duration) *latencyReport {
	for _, s := range [][]time.Duration{bridgePart, simPart, total} {
		slices.Sort(s)
	}
	pc := func(s []time.Duration) percentileMS {
		return percentileMS{P50: ms(quantile(s, 0.50)), P99: ms(quantile(s, 0.99))}
	}
	return &latencyReport{Rate: rate, Sent: sent, Received: received, Seconds: round2(span.Seconds()),
		PerSecond: round2(float64(received) / span.Seconds()), Bridge: pc(bridgePart), Simulator: pc(simPart), Total: pc(total)}
}

// applyLag drives webhooks into the bridge's receiver as fast as --clients
// senders can for --duration and samples how far the apply consumer is
// behind SN_EVENTS; then it waits for the consumer to catch up.
func (b *bencher) applyLag(ctx context.Context) (*applyLagReport, error) {
	st, stop, err := b.startBenchDev(ctx, 1) // one record: the bridge learns the fields from it
	if err != nil {
		return nil, err
	}
	defer stop()
	stream, err := st.js.Stream(ctx, events.StreamSN)
	if err != nil {
		return nil, err
	}
	// The apply pipeline creates its consumer as it starts.
	var cons jetstream.Consumer
	for wait := time.Now().Add(10 * time.Second); ; {
		if cons, err = stream.Consumer(ctx, "apply"); err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) || time.Now().After(wait) {
			return nil, fmt.Errorf("the apply consumer: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	state := func() (stored, applied uint64, err error) {
		ci, err := cons.Info(ctx)
		if err != nil {
			return 0, 0, err
		}
		si, err := stream.Info(ctx)
		if err != nil {
			return 0, 0, err
		}
		return si.State.LastSeq, ci.AckFloor.Stream, nil
	}
	s0, a0, err := state()
	if err != nil {
		return nil, err
	}
	var maxLag atomic.Uint64
	sampleDone := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sampleDone:
				return
			case <-t.C:
				if s, a, err := state(); err == nil && s > a && s-a > maxLag.Load() {
					maxLag.Store(s - a)
				}
			}
		}
	}()
	ph := b.sendPhase(ctx, "lag", st.bridge+inbound.Path, st.secret, 3, b.o.clients, b.o.duration)
	close(sampleDone)
	sampler.Wait()
	stored, applied, err := state()
	if err != nil {
		return nil, err
	}
	end := time.Now()
	rep := &applyLagReport{Clients: b.o.clients, Seconds: ph.Seconds, IngestPerSecond: ph.PerSecond,
		Stored: stored - s0, AppliedAtEnd: applied - a0, MaxLag: max(maxLag.Load(), stored-applied), LagAtEnd: stored - applied}
	rep.ApplyPerSecond = round2(float64(rep.AppliedAtEnd) / ph.Seconds)
	if rep.Stored > 0 {
		rep.SustainedApplied = round2(float64(rep.AppliedAtEnd) / float64(rep.Stored))
	}
	if ph.Requests == 0 {
		return nil, fmt.Errorf("no webhook was accepted (%d failures): see the warnings above", ph.Failures)
	}
	// Catch up: a generous bound, since a slow machine may be far behind.
	limit := time.Now().Add(10*b.o.duration + 30*time.Second)
	tick, done := b.bar(0, "catching up")
	defer done()
	for applied < stored {
		if time.Now().After(limit) {
			return nil, fmt.Errorf("the apply consumer was still %d events behind after %s", stored-applied, time.Since(end).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		tick()
		if _, applied, err = state(); err != nil {
			return nil, err
		}
	}
	rep.CatchUpSeconds = round2(time.Since(end).Seconds())
	if rep.CatchUpSeconds > 0 {
		rep.DrainPerSecond = round2(float64(rep.LagAtEnd) / rep.CatchUpSeconds)
	}
	return rep, nil
}

// waitAll waits until every key of sent is in got, or for at most quiet
// after the last arrival; the caller reports what is missing.
func waitAll(ctx context.Context, mu *sync.Mutex, sent, got map[string]time.Time, quiet time.Duration) error {
	last, lastN := time.Now(), -1
	for {
		mu.Lock()
		missing, n := 0, len(got)
		for k := range sent {
			if _, ok := got[k]; !ok {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			return nil
		}
		if n != lastN {
			last, lastN = time.Now(), n
		} else if time.Since(last) > quiet {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func quantile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(p*float64(len(sorted)-1))]
}

func ms(d time.Duration) float64 { return round2(float64(d) / float64(time.Millisecond)) }

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }
