package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/nowbridge/nowbridge/internal/attach"
	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/replay"
)

// replayFlags are `bridge replay`'s own flags.
type replayFlags struct {
	stream, since, until, seq, table, entity, sysID, externalID string
	dryRun, force, yes, asJSON                                  bool
}

func newReplayCmd(a *app) *cobra.Command {
	var rf replayFlags
	cmd := &cobra.Command{
		Use:   "replay [--stream sn|app] [--since T] [--until T] [--seq A-B] [--table T | --entity E] [--sys-id ID] [--external-id ID] [--dry-run | --force [--yes]]",
		Short: "Re-run a window of SN_EVENTS (apply path) or APP_EVENTS (writeback path)",
		Long: `replay reads the selected messages with an ordered ephemeral consumer (the
durable consumers are not disturbed) and runs each through the live consumer's
own per-message code, wired from the configuration as bridge serve wires it
(mappings, applier, every writeback setting). The version guard skips what the
target already has; --dry-run lists each message with the guard's verdict and
changes nothing; --force applies the skipped ones too, after a confirmation
(--yes in scripts). Times are RFC 3339 or a duration back from now (2h).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := rf.selection(time.Now())
			if err != nil {
				return usageError{err}
			}
			cfg, err := config.Load(cmd.Flags(), a.getenv)
			if err != nil {
				return usageError{err}
			}
			if rf.force {
				if err := confirm(a, rf.yes, fmt.Sprintf("--force re-applies messages of %s the version guard would skip.", sel.Stream)); err != nil {
					return err
				}
			}
			return runReplay(cmd.Context(), a, cfg, sel, rf)
		},
	}
	// The settings of the apply path (--stream sn) and of the writeback
	// (--stream app): a replay applies exactly as bridge serve does.
	bindToolFlags(cmd.Flags(), "tables", "mapping-dir", "applier", "apply-url", "apply-secret", "webhook-secrets",
		"sn-instance-url", "sn-client-id", "sn-client-secret", "sn-rate-limit", "sn-known-fields",
		"writeback-delete", "writeback-delete-state", "close-code", "conflict-policy", "conflict-policies", "writeback-blind", "writeback-handover-grace",
		"attachment-max-bytes", "attachment-types-allow", "attachment-types-deny")
	f := cmd.Flags()
	f.StringVar(&rf.stream, "stream", "sn", "sn (SN_EVENTS -> the SaaS app) or app (APP_EVENTS -> ServiceNow)")
	f.StringVar(&rf.since, "since", "", "messages stored at or after (RFC 3339 or a duration like 2h)")
	f.StringVar(&rf.until, "until", "", "messages stored at or before (RFC 3339 or a duration)")
	f.StringVar(&rf.seq, "seq", "", "stream sequence range A-B (or A-, or A)")
	f.StringVar(&rf.table, "table", "", "only this ServiceNow table (--stream sn)")
	f.StringVar(&rf.entity, "entity", "", "only this SaaS entity (--stream app)")
	f.StringVar(&rf.sysID, "sys-id", "", "only this record")
	f.StringVar(&rf.externalID, "external-id", "", "only this SaaS id (correlation_id on the ServiceNow side)")
	f.BoolVar(&rf.dryRun, "dry-run", false, "list what would be applied and what the version guard would skip")
	f.BoolVar(&rf.force, "force", false, "apply what the version guard would skip (asks first)")
	f.BoolVar(&rf.yes, "yes", false, "with --force: do not ask (scripts)")
	f.BoolVar(&rf.asJSON, "json", false, "print the summary as JSON")
	return cmd
}

// selection checks the flags and turns them into what replay reads; its
// errors are wrong usage.
func (rf replayFlags) selection(now time.Time) (replay.Selection, error) {
	sel := replay.Selection{SysID: rf.sysID, ExternalID: rf.externalID}
	switch rf.stream {
	case "sn", events.StreamSN:
		sel.Stream, sel.Name = events.StreamSN, rf.table
		if rf.entity != "" {
			return sel, errors.New("--entity goes with --stream app; use --table")
		}
	case "app", events.StreamApp:
		sel.Stream, sel.Name = events.StreamApp, rf.entity
		if rf.table != "" {
			return sel, errors.New("--table goes with --stream sn; use --entity")
		}
	default:
		return sel, fmt.Errorf("--stream must be sn or app, got %q", rf.stream)
	}
	var err error
	if sel.Since, err = replay.ParseTime(rf.since, now); err != nil {
		return sel, fmt.Errorf("--since: %w", err)
	}
	if sel.Until, err = replay.ParseTime(rf.until, now); err != nil {
		return sel, fmt.Errorf("--until: %w", err)
	}
	if sel.FromSeq, sel.ToSeq, err = replay.ParseSeqRange(rf.seq); err != nil {
		return sel, err
	}
	if err := sel.Validate(); err != nil {
		return sel, err
	}
	if rf.dryRun && rf.force {
		return sel, errors.New("--dry-run and --force exclude each other")
	}
	return sel, nil
}

// runReplay replays sel through its stream's consumer path and prints the
// summary.
func runReplay(ctx context.Context, a *app, cfg config.Config, sel replay.Selection, rf replayFlags) error {
	nc, js, err := connectNATS(ctx, cfg, "bridge replay")
	if err != nil {
		return err
	}
	defer nc.Close()
	if _, err := needStream(ctx, js, sel.Stream); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	h, closeFn, err := newReplayHandler(ctx, cfg, js, sel.Stream, logger)
	if err != nil {
		return err
	}
	defer closeFn()
	opts := replay.Options{DryRun: rf.dryRun, Force: rf.force}
	if bar := newProgress(a, -1, "replay "+sel.Stream); bar != nil {
		opts.Progress = func(done, total int) {
			if total > 0 {
				bar.ChangeMax(total)
			}
			_ = bar.Set(done)
		}
		defer func() { _ = bar.Finish() }()
	}
	sum, err := replay.Run(ctx, js, sel, h, opts)
	if rf.asJSON {
		if jerr := writeJSON(a.stdout, sum); jerr != nil {
			return jerr
		}
	} else {
		writeReplaySummary(a.stdout, sum)
	}
	return err
}

// newReplayHandler builds the live consumer's per-message path for stream
// from the configuration, wired as bridge serve wires it: --stream app
// writes with every writeback setting (delete mode and state, conflict
// policies, close code, blind writes), --stream sn applies with the
// configured applier, minus the link write-back (a replayed version's link
// is already known or comes with the next one).
func newReplayHandler(ctx context.Context, cfg config.Config, js jetstream.JetStream, stream string, logger *slog.Logger) (replay.Handler, func(), error) {
	if stream == events.StreamApp {
		if err := cfg.RequireServiceNow(); err != nil {
			return nil, nil, usageError{fmt.Errorf("replay --stream app writes to ServiceNow: %w", err)}
		}
		b, err := wire(ctx, cfg, js, wireOptions{Logger: logger, ServiceNow: snRequired, Attachments: true})
		if err != nil {
			return nil, nil, err
		}
		return withAttachments(b, replay.Writeback{W: b.writer}), b.Close, nil
	}
	// Attachment events download from ServiceNow: with its settings, they
	// replay through the attachment path too.
	need := snOff
	if cfg.RequireServiceNow() == nil {
		need = snIfSet
	}
	b, err := wire(ctx, cfg, js, wireOptions{Logger: logger, ServiceNow: need, Apply: true, Attachments: true})
	if err != nil {
		return nil, nil, err
	}
	return withAttachments(b, replay.Apply{R: b.apply}), b.Close, nil
}

// withAttachments routes a stream's attachment messages to the attachment
// path when the bridge has one.
func withAttachments(b *bridge, h replay.Handler) replay.Handler {
	if b.attach == nil {
		return h
	}
	return attach.Replay{S: b.attach, Next: h}
}

func writeReplaySummary(w io.Writer, sum replay.Summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(sum.Items) > 0 {
		head := "SEQ\tSUBJECT\tRECORD\tGUARD\tOUTCOME\tNOTE"
		if sum.DryRun {
			head = "SEQ\tSUBJECT\tRECORD\tWOULD\tNOTE"
		}
		fmt.Fprintln(tw, head)
		for _, it := range sum.Items {
			note := it.Reason
			if it.Error != "" {
				note = "error: " + it.Error
			}
			if sum.DryRun {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", it.Seq, it.Subject, it.Record, it.Verdict, note)
			} else {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", it.Seq, it.Subject, it.Record, it.Verdict, it.Outcome, note)
			}
		}
		_ = tw.Flush()
		fmt.Fprintln(w)
	}
	if sum.DryRun {
		fmt.Fprintf(w, "dry run of %s: %d selected, %d would be applied, %d skipped by the version guard (nothing changed)\n", sum.Stream, sum.Selected, sum.Apply, sum.Skip)
		return
	}
	fmt.Fprintf(w, "replayed %s: %d selected, %d applied, %d skipped by the version guard, %d failed in %s\n", sum.Stream, sum.Selected, sum.Applied, sum.Skipped, sum.Failed, sum.Duration.Round(time.Millisecond))
}
