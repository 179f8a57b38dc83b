// Package status gathers the one-screen view of a bridge for operators:
// streams, consumers, dead letters, the last reconcile pass of each table,
// and what each running bridge process reports about its ServiceNow
// connection. Processes publish that report into bridge_state with a TTL,
// so `bridge status` needs only NATS and sees every replica.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/reconcile"
)

// ProcessKeyPrefix prefixes the bridge_state keys of process reports.
const ProcessKeyPrefix = "status.process."

// Process is what a running bridge reports about itself.
type Process struct {
	ID      string    `json:"id"`
	Host    string    `json:"host,omitempty"`
	PID     int       `json:"pid,omitempty"`
	Version string    `json:"version,omitempty"`
	Started time.Time `json:"started,omitzero"`
	Updated time.Time `json:"updated"`
	// TokenExpiry is when the OAuth access token in use expires (zero: no
	// token yet, or ServiceNow not configured).
	TokenExpiry time.Time `json:"token_expiry,omitzero"`
	// Breaker is the ServiceNow client's circuit breaker: closed, open or
	// half-open ("" when unknown).
	Breaker string `json:"breaker,omitempty"`
	// Extra holds anything else worth a glance (applier, reconcile interval).
	Extra map[string]string `json:"extra,omitempty"`
	// Counters are the process's own counts since it started (ReportedCounters:
	// events ingested, echoes suppressed, conflicts, 429s, ...), so every
	// replica's work shows in one place.
	Counters map[string]float64 `json:"counters,omitempty"`
}

// ReportedCounters are the metrics a process sums into its report's
// Counters: what an operator compares across replicas at a glance.
var ReportedCounters = []string{
	"bridge_ingest_events_published_total",
	"bridge_echoes_suppressed_total", // both directions; the receiver's share is also bridge_ingest_echoes_total
	"bridge_apply_applied_total",
	"bridge_apply_dlq_total",
	"bridge_writeback_messages_total",
	"bridge_writeback_dead_letters_total",
	"conflicts_total",
	"bridge_servicenow_requests_total",
	"bridge_servicenow_rate_limited_total",
	"bridge_attachment_bytes_total",        // both directions
	"bridge_attachment_dead_letters_total", // both directions
	"reconcile_gaps_total",
}

// CounterLine is the process's counts in a line: ingested, echoes,
// conflicts, 429s (of all requests), dead letters; "" without counters.
func (p Process) CounterLine() string {
	if len(p.Counters) == 0 {
		return ""
	}
	c := func(n string) int64 { return int64(p.Counters[n]) }
	line := fmt.Sprintf("ingested %d, echoes suppressed %d, applied %d, written back %d, conflicts %d, 429s %d of %d requests, dead letters %d",
		c("bridge_ingest_events_published_total"), c("bridge_echoes_suppressed_total"),
		c("bridge_apply_applied_total"), c("bridge_writeback_messages_total"), c("conflicts_total"),
		c("bridge_servicenow_rate_limited_total"), c("bridge_servicenow_requests_total"),
		c("bridge_apply_dlq_total")+c("bridge_writeback_dead_letters_total"))
	if p.Extra["sync_owner"] == "true" {
		line += " (sync owner)"
	}
	return line
}

// Counters sums every series of each named metric g gathers (all labels
// together); a name without series is 0.
func Counters(g prometheus.Gatherer, names []string) (map[string]float64, error) {
	families, err := g.Gather()
	if err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(names))
	for _, n := range names {
		out[n] = 0
	}
	for _, f := range families {
		if _, ok := out[f.GetName()]; !ok {
			continue
		}
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[f.GetName()] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[f.GetName()] += m.GetGauge().GetValue()
			}
		}
	}
	return out, nil
}

// Reporter keeps one process's report fresh in bridge_state. Each write
// carries a TTL of three intervals, so a process that died drops off the
// screen on its own.
type Reporter struct {
	JS       jetstream.JetStream
	ID       string
	Interval time.Duration // default 10s
	// Snapshot returns the current report; ID and Updated are filled in.
	Snapshot func() Process
	// Gatherer, when set, fills the report's Counters (ReportedCounters).
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
}

// DefaultID names this process: host and pid.
func DefaultID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", sanitize(host), os.Getpid())
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// Publish writes the report once.
func (r *Reporter) Publish(ctx context.Context) error {
	p := r.Snapshot()
	if r.Gatherer != nil {
		c, err := Counters(r.Gatherer, ReportedCounters)
		if err != nil {
			return fmt.Errorf("gather counters: %w", err)
		}
		p.Counters = c
	}
	p.ID = sanitize(r.ID)
	p.Updated = time.Now().UTC()
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = r.JS.Publish(ctx, "$KV."+events.BucketState+"."+ProcessKeyPrefix+p.ID, b, jetstream.WithMsgTTL(max(3*r.interval(), 2*time.Second)))
	return err
}

func (r *Reporter) interval() time.Duration {
	if r.Interval <= 0 {
		return 10 * time.Second
	}
	return r.Interval
}

// Run publishes the report every Interval until ctx ends, then removes it.
func (r *Reporter) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval())
	defer t.Stop()
	for {
		if err := r.Publish(ctx); err != nil && ctx.Err() == nil && r.Logger != nil {
			r.Logger.Warn("status report not published", "err", err)
		}
		select {
		case <-ctx.Done():
			kv, err := r.JS.KeyValue(context.WithoutCancel(ctx), events.BucketState)
			if err == nil {
				_ = kv.Delete(context.WithoutCancel(ctx), ProcessKeyPrefix+sanitize(r.ID))
			}
			return nil
		case <-t.C:
		}
	}
}

// Stream is one stream's size and age.
type Stream struct {
	Name      string    `json:"name"`
	Msgs      uint64    `json:"messages"`
	LastSeq   uint64    `json:"last_seq"` // grows by each message stored: its rate is the stream's throughput
	Bytes     uint64    `json:"bytes"`
	FirstTime time.Time `json:"first_time,omitzero"`
	LastTime  time.Time `json:"last_time,omitzero"`
	Consumers int       `json:"consumers"`
	Missing   bool      `json:"missing,omitempty"`
}

// Consumer is one consumer's backlog.
type Consumer struct {
	Stream      string `json:"stream"`
	Name        string `json:"name"`
	Durable     bool   `json:"durable"`
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
}

// Report is the whole screen.
type Report struct {
	Time      time.Time           `json:"time"`
	Streams   []Stream            `json:"streams"`
	Consumers []Consumer          `json:"consumers"`
	DLQ       map[string]uint64   `json:"dlq"`
	DLQTotal  uint64              `json:"dlq_total"`
	Reconcile []reconcile.Summary `json:"reconcile"`
	Processes []Process           `json:"processes"`
	// Attachments: bridge_attachments and the files kept in sync.
	Attachments *Attachments `json:"attachments,omitempty"`
}

// Collect reads the report from NATS; tables are the synced tables whose
// reconcile passes to show.
func Collect(ctx context.Context, js jetstream.JetStream, tables []string) (Report, error) {
	rep := Report{Time: time.Now().UTC(), DLQ: map[string]uint64{}}
	for _, name := range []string{events.StreamSN, events.StreamApp, events.StreamApply, events.StreamResults, events.StreamDLQ, events.StreamTrace} {
		st, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			rep.Streams = append(rep.Streams, Stream{Name: name, Missing: true})
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("stream %s: %w", name, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			return rep, fmt.Errorf("stream %s: %w", name, err)
		}
		rep.Streams = append(rep.Streams, Stream{
			Name: name, Msgs: info.State.Msgs, LastSeq: info.State.LastSeq, Bytes: info.State.Bytes,
			FirstTime: info.State.FirstTime, LastTime: info.State.LastTime, Consumers: info.State.Consumers,
		})
		lister := st.ListConsumers(ctx)
		for ci := range lister.Info() {
			rep.Consumers = append(rep.Consumers, Consumer{
				Stream: name, Name: ci.Name, Durable: ci.Config.Durable != "",
				Pending: ci.NumPending, AckPending: ci.NumAckPending, Redelivered: ci.NumRedelivered,
			})
		}
		if err := lister.Err(); err != nil {
			return rep, fmt.Errorf("consumers of %s: %w", name, err)
		}
	}
	if counts, err := dlq.Count(ctx, js); err == nil {
		rep.DLQ = counts
		for _, n := range counts {
			rep.DLQTotal += n
		}
	}
	kv, err := js.KeyValue(ctx, events.BucketState)
	if err != nil {
		return rep, fmt.Errorf("bucket %s: %w", events.BucketState, err)
	}
	store := reconcile.Store{KV: kv}
	for _, table := range tables {
		sum, ok, err := store.LastPass(ctx, table)
		if err != nil {
			return rep, err
		}
		if !ok {
			sum = reconcile.Summary{Table: table}
		}
		rep.Reconcile = append(rep.Reconcile, sum)
	}
	keys, err := kv.ListKeysFiltered(ctx, ProcessKeyPrefix+">")
	if err != nil {
		return rep, fmt.Errorf("list process reports: %w", err)
	}
	for key := range keys.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue // expired between listing and reading
		}
		var p Process
		if json.Unmarshal(e.Value(), &p) == nil {
			rep.Processes = append(rep.Processes, p)
		}
	}
	slices.SortFunc(rep.Processes, func(a, b Process) int { return strings.Compare(a.ID, b.ID) })
	if rep.Attachments, err = collectAttachments(ctx, js); err != nil {
		return rep, err
	}
	return rep, nil
}

// WriteText renders the report for a terminal.
func (r Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, a ...any) { fmt.Fprintf(tw, format, a...) }
	p("STREAM\tMESSAGES\tBYTES\tFIRST\tLAST\tCONSUMERS\n")
	for _, s := range r.Streams {
		if s.Missing {
			p("%s\t(missing: start `bridge serve` once to create it)\t\t\t\t\n", s.Name)
			continue
		}
		p("%s\t%d\t%s\t%s\t%s\t%d\n", s.Name, s.Msgs, humanBytes(s.Bytes), ago(r.Time, s.FirstTime), ago(r.Time, s.LastTime), s.Consumers)
	}
	p("\nCONSUMER\tSTREAM\tPENDING\tACK PENDING\tREDELIVERED\t\n")
	if len(r.Consumers) == 0 {
		p("(none: is `bridge serve` running?)\t\t\t\t\t\n")
	}
	for _, c := range r.Consumers {
		name := c.Name
		if !c.Durable {
			name += " (ephemeral)"
		}
		p("%s\t%s\t%d\t%d\t%d\t\n", name, c.Stream, c.Pending, c.AckPending, c.Redelivered)
	}
	p("\nDEAD LETTERS\t%d", r.DLQTotal)
	if r.DLQTotal > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.DLQ)) {
			parts = append(parts, fmt.Sprintf("%s=%d", k, r.DLQ[k]))
		}
		p("\t(%s; see `bridge dlq ls`)", strings.Join(parts, " "))
	}
	p("\n\nRECONCILE\tLAST PASS\tGAPS\tDELETES\tSCANNED\tWATERMARK\tRESULT\n")
	for _, s := range r.Reconcile {
		if s.Finished.IsZero() {
			p("%s\tnever\t\t\t\t\t\n", s.Table)
			continue
		}
		p("%s\t%s\t%d\t%d\t%d\t%s\t%s\n", s.Table, ago(r.Time, s.Finished), s.Gaps, s.Deletes, s.Scanned, s.Watermark.Format(events.SNTimeLayout), s.Result())
	}
	// How deletes were checked does not fit a column: a line per table.
	for _, s := range r.Reconcile {
		if s.Finished.IsZero() {
			continue
		}
		line := s.DeleteReport()
		if !s.PresenceLast.IsZero() {
			line = "last presence scan " + ago(r.Time, s.PresenceLast) + "; " + line
		}
		p("  deletes in %s: %s\n", s.Table, line)
	}
	r.Attachments.writeText(p, r.Processes)
	p("\nPROCESS\tUPDATED\tTOKEN EXPIRES\tBREAKER\t\t\t\n")
	if len(r.Processes) == 0 {
		p("(no bridge process reporting: token and breaker state are unknown)\t\t\t\t\t\t\n")
	}
	for _, pr := range r.Processes {
		token := "-"
		if !pr.TokenExpiry.IsZero() {
			token = "in " + pr.TokenExpiry.Sub(r.Time).Round(time.Second).String()
			if pr.TokenExpiry.Before(r.Time) {
				token = "EXPIRED " + ago(r.Time, pr.TokenExpiry)
			}
		}
		breaker := pr.Breaker
		if breaker == "" {
			breaker = "-"
		}
		p("%s\t%s\t%s\t%s\t\t\t\n", pr.ID, ago(r.Time, pr.Updated), token, breaker)
	}
	// Each process's counts do not fit the columns either.
	for _, pr := range r.Processes {
		if line := pr.CounterLine(); line != "" {
			p("  %s: %s\n", pr.ID, line)
		}
	}
	return tw.Flush()
}

func ago(now, t time.Time) string {
	if t.IsZero() || t.Year() < 2000 {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String() + " ago"
	case d < time.Hour:
		return d.Round(time.Second).String() + " ago"
	case d < 48*time.Hour:
		return d.Round(time.Minute).String() + " ago"
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
