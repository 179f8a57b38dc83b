package main

import (
	"github.com/spf13/cobra"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/trace"
)

func newTraceCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "trace <INC number | sys_id | external id> [--json]",
		Short: "Show a record's timeline: each step across the bridge's streams and the decision taken, with why",
		Long: `trace answers "why didn't ticket X sync?". It finds the record by its number
(INC0010006), its sys_id, or the app's external id, and prints its bridge_state
and bridge_links entries, then one line per step: when, which part (ingest,
apply, writeback, reconcile, dlq), the source (webhook, reconcile, replay, app,
dlq_retry), the version, the decision (stored, echo_suppressed, applied, stale,
written, unchanged, conflict, unclaimed, rejected, dead_lettered, retrying,
gap_found, ...) and why, with the stream sequences of the messages it names.
Decisions come from the decision log (BRIDGE_TRACE), read by the record's
subject; --json adds each step's message, read by sequence.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			_, nc, js, err := connectTool(ctx, a, cmd, "bridge trace")
			if err != nil {
				return err
			}
			defer nc.Close()
			if _, err := needStream(ctx, js, events.StreamTrace); err != nil {
				return err
			}
			states, links, err := state.Open(ctx, js)
			if err != nil {
				return err
			}
			tl, err := trace.NewStore(js, states, links).Timeline(ctx, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, tl)
			}
			return tl.WriteText(a.stdout)
		},
	}
	bindToolFlags(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output, with each step's message")
	return cmd
}
