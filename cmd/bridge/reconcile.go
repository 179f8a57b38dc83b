package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/reconcile"
	"github.com/nowbridge/nowbridge/internal/replay"
)

// reconcileFlags are `bridge reconcile`'s own flags.
type reconcileFlags struct {
	once, full, asJSON bool
	since              string
	pageSize           int
	overlap            time.Duration
}

func newReconcileCmd(a *app) *cobra.Command {
	var rf reconcileFlags
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
			cfg, err := config.Load(cmd.Flags(), a.getenv)
			if err != nil {
				return err
			}
			if err := cfg.RequireServiceNow(); err != nil {
				return err
			}
			if rf.full && rf.since != "" {
				return usageError{errors.New("--since and --full exclude each other")}
			}
			if (rf.full || rf.since != "") && !rf.once {
				return usageError{errors.New("--since and --full go with --once")}
			}
			opts := reconcile.PassOptions{Full: rf.full}
			if opts.Since, err = replay.ParseTime(rf.since, time.Now()); err != nil {
				return usageError{fmt.Errorf("--since: %w", err)}
			}
			return runReconcile(cmd.Context(), a, cfg, opts, rf)
		},
	}
	config.BindFlags(cmd.Flags())
	f := cmd.Flags()
	f.BoolVar(&rf.once, "once", false, "run one pass of every table, print a summary and exit")
	f.StringVar(&rf.since, "since", "", "with --once: start at this time (RFC 3339 or a duration like 24h) instead of the watermark")
	f.BoolVar(&rf.full, "full", false, "with --once: read the whole table")
	f.BoolVar(&rf.asJSON, "json", false, "print the summary as JSON")
	f.IntVar(&rf.pageSize, "page-size", 1000, "rows per ServiceNow request")
	f.DurationVar(&rf.overlap, "overlap", 2*time.Minute, "re-read window before the watermark (late commits)")
	return cmd
}

// runReconcile wires the reconciler from cfg and runs one pass of every
// table (--once, printing the summaries) or a pass every interval.
func runReconcile(ctx context.Context, a *app, cfg config.Config, opts reconcile.PassOptions, rf reconcileFlags) error {
	logger := cfg.Logger(a.stderr)
	if rf.once {
		// The summary is the output; keep the log to problems.
		logger = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	nc, js, err := connectNATS(ctx, cfg, "bridge reconcile")
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := broker.EnsureAll(ctx, js, cfg.StreamOptions()); err != nil {
		return err
	}
	b, err := wire(ctx, cfg, js, wireOptions{Logger: logger, ServiceNow: snRequired, Reconcile: true, Attachments: true,
		Tune: func(c *reconcile.Config) { c.PageSize, c.Overlap = rf.pageSize, rf.overlap }})
	if err != nil {
		return err
	}
	defer b.Close()
	if !rf.once {
		if cfg.ReconcileInterval <= 0 {
			return usageError{errors.New("BRIDGE_RECONCILE_INTERVAL is 0: nothing to run in a loop (use --once)")}
		}
		return b.reconciler.Run(ctx)
	}
	bar := newProgress(a, -1, "reconcile")
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
	sums, err := b.reconciler.Once(ctx, opts)
	if bar != nil {
		_ = bar.Finish() // cleared before the summary is printed
	}
	if rf.asJSON {
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
