package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/reconcile"
	"github.com/nowbridge/nowbridge/internal/replay"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/state"
)

func newReconcileCmd(a *app) *cobra.Command {
	var once, full, asJSON bool
	var since string
	var pageSize int
	var overlap time.Duration
	cmd := &cobra.Command{
		Use:   "reconcile [--once] [--since T | --full] [--json]",
		Short: "Find ServiceNow changes the webhooks lost and publish them to SN_EVENTS",
		Long: `reconcile scans each table in BRIDGE_TABLES by (sys_updated_on, sys_id) from its
watermark (minus a 2-minute overlap) and publishes every version bridge_state has
not seen to SN_EVENTS under the webhook's own Nats-Msg-Id. Deletes are found by
presence: the sys_ids bridge_state knows that a scan of the table's sys_ids no
longer returns, each confirmed with a sys_id query, are published as delete
events once. The presence scan reads every sys_id, so it runs on --full and
every BRIDGE_DELETE_SCAN_INTERVAL (24h); sys_audit_delete, where the integration
user may read it, finds deletes on every pass. A table whose rows ServiceNow
counts but does not return is reported hidden, and nothing is concluded from it.
--once runs one pass and prints a summary; without it the command runs a pass
every BRIDGE_RECONCILE_INTERVAL, like bridge serve does. --since (RFC 3339 or a
duration back from now, e.g. 24h) and --full choose where the pass starts
instead of the watermark; neither moves the watermark back.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, err := config.Load(cmd.Flags(), a.getenv)
			if err != nil {
				return err
			}
			if err := cfg.RequireServiceNow(); err != nil {
				return err
			}
			if full && since != "" {
				return usageError{errors.New("--since and --full exclude each other")}
			}
			if (full || since != "") && !once {
				return usageError{errors.New("--since and --full go with --once")}
			}
			opts := reconcile.PassOptions{Full: full}
			if opts.Since, err = replay.ParseTime(since, time.Now()); err != nil {
				return usageError{fmt.Errorf("--since: %w", err)}
			}
			logger := cfg.Logger(a.stderr)
			if once {
				// The summary is the output; keep the log to problems.
				logger = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			}
			nc, js, err := connectNATS(ctx, cfg, "bridge reconcile")
			if err != nil {
				return err
			}
			defer nc.Close()
			if err := broker.EnsureAll(ctx, js, events.StreamOptions{Replicas: cfg.StreamReplicas}); err != nil {
				return err
			}
			r, closeFn, err := newReconciler(ctx, cfg, js, reconcileDeps{Logger: logger}, func(c *reconcile.Config) {
				c.PageSize, c.Overlap = pageSize, overlap
			})
			if err != nil {
				return err
			}
			defer closeFn()
			if !once {
				if cfg.ReconcileInterval <= 0 {
					return usageError{errors.New("BRIDGE_RECONCILE_INTERVAL is 0: nothing to run in a loop (use --once)")}
				}
				return r.Run(ctx)
			}
			var bar interface {
				ChangeMax(int)
				Set(int) error
				Describe(string)
				Finish() error
			}
			if b := newProgress(a, -1, "reconcile"); b != nil {
				bar = b
				defer func() { _ = b.Finish() }()
			}
			if bar != nil {
				progress := func(what string) func(table string, scanned, total int) {
					return func(table string, scanned, total int) {
						bar.Describe(what + " " + table)
						if total >= scanned && total > 0 {
							bar.ChangeMax(total)
						}
						_ = bar.Set(scanned)
					}
				}
				opts.Progress = progress("reconcile")
				opts.PresenceProgress = progress("presence scan")
			}
			sums, err := r.Once(ctx, opts)
			if bar != nil {
				_ = bar.Finish()
			}
			if asJSON {
				if sums == nil {
					sums = []reconcile.Summary{}
				}
				if jerr := writeJSON(a.stdout, sums); jerr != nil {
					return jerr
				}
			} else {
				writeReconcileSummary(a.stdout, sums)
			}
			return err
		},
	}
	config.BindFlags(cmd.Flags())
	f := cmd.Flags()
	f.BoolVar(&once, "once", false, "run one pass of every table, print a summary and exit")
	f.StringVar(&since, "since", "", "with --once: start at this time (RFC 3339 or a duration like 24h) instead of the watermark")
	f.BoolVar(&full, "full", false, "with --once: read the whole table")
	f.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	f.IntVar(&pageSize, "page-size", 1000, "rows per ServiceNow request")
	f.DurationVar(&overlap, "overlap", 2*time.Minute, "re-read window before the watermark (late commits)")
	return cmd
}

// reconcileDeps are the parts bridge serve shares with its reconcile loop;
// bridge reconcile leaves them zero and gets its own.
type reconcileDeps struct {
	// SN is the process's ServiceNow client: sharing it shares its rate
	// limiter with the writeback. Nil: a client is built from cfg.
	SN *snclient.Client
	// Mapping is the process's mapping set; nil loads BRIDGE_MAPPING_DIR.
	Mapping *mapping.Set
	// Echoes is the process's echo-suppression cache (versions the
	// writeback just wrote); nil relies on bridge_state alone.
	Echoes     reconcile.Echoes
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// newReconciler builds the reconciler bridge serve and bridge reconcile run:
// the ServiceNow client paced to reconcile's share of BRIDGE_SN_RATE_LIMIT,
// bridge_state for versions, watermarks and leases, the mapping's fields.
// bridge serve wires it as
//
//	r, closeRec, err := newReconciler(ctx, cfg, js, reconcileDeps{SN: sn, Mapping: mset, Echoes: dd, Registerer: reg, Logger: log}, nil)
//	defer closeRec()
//	g.Go(func() error { return r.Run(ctx) }) // returns at once when BRIDGE_RECONCILE_INTERVAL=0
func newReconciler(ctx context.Context, cfg config.Config, js jetstream.JetStream, d reconcileDeps, tune func(*reconcile.Config)) (*reconcile.Reconciler, func(), error) {
	logger := d.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	mset := d.Mapping
	if mset == nil {
		var err error
		if mset, err = apply.LoadMapping(cfg.MappingDir, cfg.Tables, logger); err != nil {
			return nil, nil, err
		}
	}
	sn, closeFn := d.SN, func() {}
	if sn == nil {
		if err := cfg.RequireServiceNow(); err != nil {
			return nil, nil, usageError{err}
		}
		var err error
		sn, err = newSNClient(cfg, mset, logger, nil)
		if err != nil {
			return nil, nil, usageError{err}
		}
		closeFn = func() { _ = sn.Close() }
	}
	store, _, err := state.Open(ctx, js)
	if err != nil {
		closeFn()
		return nil, nil, err
	}
	rc := reconcile.Config{
		Tables:   cfg.Tables,
		Fields:   mset.Fields,
		Interval: cfg.ReconcileInterval,
		// The presence scan's schedule; bridge reconcile --once --full
		// runs it whatever the interval.
		DeleteScanInterval: cfg.DeleteScanInterval,
		Limiter:            reconcile.SharedLimiter(cfg.SNRateLimit),
		Echoes:             d.Echoes,
		Logger:             logger,
		Registerer:         d.Registerer,
	}
	if u, err := url.Parse(cfg.SNInstanceURL); err == nil {
		rc.Instance, _, _ = strings.Cut(u.Hostname(), ".")
	}
	if tune != nil {
		tune(&rc)
	}
	r, err := reconcile.New(js, store.KV(), &reconcile.SNPager{Client: sn}, store, rc)
	if err != nil {
		closeFn()
		return nil, nil, err
	}
	return r, closeFn, nil
}

func writeReconcileSummary(w io.Writer, sums []reconcile.Summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tFROM\tPAGES\tSCANNED\tGAPS\tDELETES\tIN FLIGHT\tDURATION\tRESULT")
	for _, s := range sums {
		from := "start of table"
		if !s.From.IsZero() {
			from = s.From.Format(events.SNTimeLayout)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Table, from, s.Pages, s.Scanned, s.Gaps, s.Deletes, s.InFlight, s.Duration.Round(time.Millisecond), s.Result())
	}
	_ = tw.Flush()
	for _, s := range sums {
		if r := s.DeleteReport(); r != "" {
			fmt.Fprintf(w, "deletes in %s: %s\n", s.Table, r)
		}
	}
}

// mappingFS is BRIDGE_MAPPING_DIR as a file system, nil for the built-in
// mapping (mapping.Load's convention).
func mappingFS(cfg config.Config) fs.FS {
	if cfg.MappingDir == "" {
		return nil
	}
	return os.DirFS(cfg.MappingDir)
}
