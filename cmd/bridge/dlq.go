package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/nowbridge/nowbridge/internal/config"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
)

func newDLQCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Dead letters: ls, show SEQ, retry SEQ|--all, purge",
		Long: `Dead letters are messages a pipeline gave up on (a permanent ServiceNow or
SaaS error, or too many deliveries). They wait in BRIDGE_DLQ on
bridge.dlq.<pipeline> (apply: ServiceNow -> SaaS, writeback: SaaS -> ServiceNow,
results: results the app's BRIDGE_RESULTS_URL refused) with the reason in
headers. Fix the cause, then retry them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("dlq needs a subcommand: ls, show SEQ, retry SEQ|--all, purge")}
		},
	}
	// BRIDGE_TABLES and BRIDGE_MAPPING_DIR name each table's entity for --table.
	bindToolFlags(cmd.PersistentFlags(), "tables", "mapping-dir")
	cmd.AddCommand(newDLQLsCmd(a), newDLQShowCmd(a), newDLQRetryCmd(a), newDLQPurgeCmd(a))
	return cmd
}

func newDLQLsCmd(a *app) *cobra.Command {
	var pipeline, table string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [--pipeline P] [--table T]",
		Short: "List dead letters: seq, pipeline, record, status, reason, age",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, nc, js, err := connectTool(cmd.Context(), a, cmd, "bridge dlq")
			if err != nil {
				return err
			}
			defer nc.Close()
			if _, err := needStream(cmd.Context(), js, events.StreamDLQ); err != nil {
				return err
			}
			entries, err := listDeadLetters(cmd.Context(), js, cfg, pipeline, table)
			if err != nil {
				return err
			}
			if asJSON {
				if entries == nil {
					entries = []dlq.Entry{}
				}
				return writeJSON(a.stdout, entries)
			}
			if len(entries) == 0 {
				fmt.Fprintln(a.stdout, "no dead letters")
				return nil
			}
			now := time.Now()
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tPIPELINE\tRECORD\tSTATUS\tREASON\tAGE")
			for _, e := range entries {
				st := "-"
				if e.Status != 0 {
					st = strconv.Itoa(e.Status)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Pipeline, e.Record, st, oneLine(e.Reason, 80), e.Age(now).Round(time.Second))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "\n%d dead letters; `bridge dlq show SEQ` for details, `bridge dlq retry SEQ|--all` once the cause is fixed\n", len(entries))
			return nil
		},
	}
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "only this pipeline (apply, writeback or results)")
	cmd.Flags().StringVar(&table, "table", "", tableFlagUsage)
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	return cmd
}

const tableFlagUsage = "only this ServiceNow table's dead letters: apply's of the table, the writeback's of its entity (from its mapping)"

// listDeadLetters lists the dead letters of pipeline ("" for both) and,
// with table, of that table only.
func listDeadLetters(ctx context.Context, js jetstream.JetStream, cfg config.Config, pipeline, table string) ([]dlq.Entry, error) {
	entries, err := dlq.List(ctx, js, pipeline)
	if err != nil || table == "" {
		return entries, err
	}
	match, err := tableMatcher(cfg, table)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(entries, func(e dlq.Entry) bool { return !match(e) }), nil
}

// tableMatcher matches the dead letters of one table: apply's came from
// sn.<table>.<action>, the writeback's from app.<entity>.<action> and the
// results delivery's from bridge.result.<entity>.<outcome>, with the
// entity the table's mapping names (its file in BRIDGE_MAPPING_DIR, else the
// shipped one).
func tableMatcher(cfg config.Config, table string) (func(dlq.Entry) bool, error) {
	tables := slices.Clone(cfg.Tables)
	if !slices.Contains(tables, table) {
		tables = append(tables, table)
	}
	cfg.Tables = tables
	mset, err := loadMapping(cfg, nil)
	if err != nil {
		return nil, usageError{fmt.Errorf("--table %s: %w", table, err)}
	}
	entity, _ := mset.Entity(table)
	return func(e dlq.Entry) bool {
		kind, name, _, ok := events.ParseSubject(e.Origin)
		switch {
		case !ok:
			return false
		case kind == "sn":
			return name == table
		case kind == "app", kind == "bridge.result":
			return name == entity
		}
		return false
	}, nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

func parseSeq(arg string) (uint64, error) {
	n, err := strconv.ParseUint(arg, 10, 64)
	if err != nil || n == 0 {
		return 0, usageError{fmt.Errorf("%q is not a dead-letter sequence number (see `bridge dlq ls`)", arg)}
	}
	return n, nil
}

func newDLQShowCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show SEQ",
		Short: "Show one dead letter: headers, body, ServiceNow's error, hint",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			seq, err := parseSeq(args[0])
			if err != nil {
				return err
			}
			_, nc, js, err := connectTool(cmd.Context(), a, cmd, "bridge dlq")
			if err != nil {
				return err
			}
			defer nc.Close()
			e, err := dlq.Get(cmd.Context(), js, seq)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, struct {
					dlq.Entry
					Body json.RawMessage `json:"body"`
				}{e, rawOrString(e.Data)})
			}
			w := a.stdout
			fmt.Fprintf(w, "seq:       %d\npipeline:  %s\nrecord:    %s\n", e.Seq, e.Pipeline, e.Record)
			fmt.Fprintf(w, "origin:    %s (%s seq %d)\n", e.Origin, e.Stream, e.OrigSeq)
			fmt.Fprintf(w, "dead since %s (%s ago)\n", e.Time.Format(time.RFC3339), e.Age(time.Now()).Round(time.Second))
			if e.Status != 0 {
				fmt.Fprintf(w, "status:    %d\n", e.Status)
			}
			fmt.Fprintf(w, "error:     %s\n", e.Reason)
			if e.Response != "" {
				fmt.Fprintf(w, "response:  %s\n", e.Response)
			}
			if e.Hint != "" {
				fmt.Fprintf(w, "hint:      %s\n", e.Hint)
			}
			fmt.Fprintln(w, "headers:")
			keys := make([]string, 0, len(e.Headers))
			for k := range e.Headers {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				for _, v := range e.Headers[k] {
					fmt.Fprintf(w, "  %s: %s\n", k, v)
				}
			}
			fmt.Fprintln(w, "body:")
			var pretty bytes.Buffer
			if json.Indent(&pretty, e.Data, "  ", "  ") == nil {
				fmt.Fprintf(w, "  %s\n", pretty.String())
			} else {
				fmt.Fprintf(w, "  %q\n", e.Data)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	return cmd
}

func rawOrString(b []byte) json.RawMessage {
	if json.Valid(b) {
		return b
	}
	s, _ := json.Marshal(string(b))
	return s
}

func newDLQRetryCmd(a *app) *cobra.Command {
	var all, asJSON bool
	var pipeline, table string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "retry SEQ | --all [--pipeline P] [--table T] [--wait D]",
		Short: "Republish dead letters to the subject they came from; each is removed once stored again",
		Long: `Republish dead letters to the subject they came from; each is removed once
its stream stored it again. A retried app change is written back again, and the
app hears its late result on bridge.result.<entity>.<outcome>; --wait waits for
those results and prints them (updated, or rejected again and why).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) == 1) {
				return usageError{errors.New("retry takes either a sequence number or --all")}
			}
			if (pipeline != "" || table != "") && !all {
				return usageError{errors.New("--pipeline and --table go with --all")}
			}
			cfg, nc, js, err := connectTool(cmd.Context(), a, cmd, "bridge dlq")
			if err != nil {
				return err
			}
			defer nc.Close()
			since := time.Now().Add(-time.Second) // the results of these retries come after this
			var results []dlq.RetryResult
			var rerr error
			switch {
			case all && table != "":
				results, rerr = retryTable(cmd.Context(), js, cfg, pipeline, table)
			case all:
				results, rerr = dlq.RetryAll(cmd.Context(), js, pipeline)
			default:
				seq, err := parseSeq(args[0])
				if err != nil {
					return err
				}
				res, err := dlq.Retry(cmd.Context(), js, seq)
				if err != nil {
					return err
				}
				results = []dlq.RetryResult{res}
			}
			pending := 0
			if wait > 0 && len(results) > 0 {
				wctx, cancel := context.WithTimeout(cmd.Context(), wait)
				var err error
				pending, err = dlq.AwaitResults(wctx, js, since, results)
				cancel()
				if err != nil {
					rerr = errors.Join(rerr, err)
				}
			}
			if asJSON {
				if results == nil {
					results = []dlq.RetryResult{}
				}
				if err := writeJSON(a.stdout, results); err != nil {
					return err
				}
			} else {
				for _, r := range results {
					fmt.Fprintf(a.stdout, "retried %d -> %s (%s seq %d)%s\n", r.Seq, r.Subject, r.Stream, r.StreamSeq, resultLine(r.Result))
				}
				fmt.Fprintf(a.stdout, "%d dead letters retried\n", len(results))
				if pending > 0 {
					fmt.Fprintf(a.stdout, "%d retried app changes have no result after %s; `bridge status` shows the writeback, and they may still be waiting on ServiceNow\n", pending, wait)
				}
			}
			return rerr
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "retry every dead letter (of --pipeline, of --table)")
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "with --all: only this pipeline (apply, writeback or results)")
	cmd.Flags().StringVar(&table, "table", "", "with --all: "+tableFlagUsage)
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the result of each retried app change (a running writeback writes it) and print it")
	return cmd
}

// resultLine renders a retried change's result after its retry line.
func resultLine(r *events.Result) string {
	if r == nil {
		return ""
	}
	out := ": " + r.Outcome
	if r.Number != "" {
		out += " " + r.Number
	}
	if r.Error != nil {
		out += ": " + oneLine(strings.TrimSpace(r.Error.Message+" "+r.Error.Detail), 160)
		if r.Error.Hint != "" {
			out += " (hint: " + oneLine(r.Error.Hint, 200) + ")"
		}
	} else if r.URL != "" {
		out += " " + r.URL
	}
	return out
}

// retryTable retries the dead letters of one table, oldest first, going on
// past failures (returned joined), as dlq.RetryAll does for a pipeline.
func retryTable(ctx context.Context, js jetstream.JetStream, cfg config.Config, pipeline, table string) ([]dlq.RetryResult, error) {
	entries, err := listDeadLetters(ctx, js, cfg, pipeline, table)
	if err != nil {
		return nil, err
	}
	var out []dlq.RetryResult
	var errs []error
	for _, e := range entries {
		res, err := dlq.Retry(ctx, js, e.Seq)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		out = append(out, res)
	}
	return out, errors.Join(errs...)
}

func newDLQPurgeCmd(a *app) *cobra.Command {
	var yes bool
	var pipeline string
	cmd := &cobra.Command{
		Use:   "purge [--pipeline P] [--yes]",
		Short: "Delete dead letters for good, after a confirmation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, nc, js, err := connectTool(cmd.Context(), a, cmd, "bridge dlq")
			if err != nil {
				return err
			}
			defer nc.Close()
			counts, err := dlq.Count(cmd.Context(), js)
			if err != nil {
				return err
			}
			var n uint64
			for p, c := range counts {
				if pipeline == "" || p == pipeline {
					n += c
				}
			}
			if n == 0 {
				fmt.Fprintln(a.stdout, "no dead letters to purge")
				return nil
			}
			what := "all pipelines"
			if pipeline != "" {
				what = "pipeline " + pipeline
			}
			if err := confirm(a, yes, fmt.Sprintf("Delete %d dead letters of %s for good?", n, what)); err != nil {
				return err
			}
			purged, err := dlq.Purge(cmd.Context(), js, pipeline)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "purged %d dead letters\n", purged)
			return nil
		},
	}
	cmd.Flags().StringVar(&pipeline, "pipeline", "", "only this pipeline (apply, writeback or results)")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask (scripts)")
	return cmd
}
