package console

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/status"
	"github.com/nowbridge/nowbridge/internal/trace"
)

// maxRows bounds the dead letters one page lists.
const maxRows = 500

func (c *Console) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", c.overview)
	m.HandleFunc("GET /overview/fragment", c.overviewFragment)
	m.HandleFunc("GET /dlq", c.deadLetters)
	m.HandleFunc("GET /dlq/purge", c.purgeConfirm)
	m.HandleFunc("POST /dlq/purge", c.purge)
	m.HandleFunc("POST /dlq/retry", c.retryAll)
	m.HandleFunc("GET /dlq/{seq}", c.deadLetter)
	m.HandleFunc("POST /dlq/{seq}/retry", c.retry)
	m.HandleFunc("GET /trace", c.trace)
	m.HandleFunc("POST /logout", c.logout)
	c.mux = m
}

func (c *Console) page(w http.ResponseWriter, r *http.Request, page, title string, data any) {
	c.renderPage(w, r, http.StatusOK, page, principalOf(r), view{Title: title, Data: data})
}

// --- overview

type overviewView struct {
	Now       time.Time
	Err       string // the status could not be read now: the last sample is shown
	Stale     bool
	Owner     string // the replica holding the sync lease ("" if none reports it)
	Replica   string
	Streams   []streamRow
	Consumers []consumerRow
	DLQ       []dlqCount
	DLQTotal  uint64
	DLQSpark  template.HTML
	Processes []processRow
	Totals    totals
	Report    status.Report
	Samples   int
	Every     time.Duration
}

type streamRow struct {
	status.Stream
	Rate  float64 // messages stored per second over the sampled window
	Spark template.HTML
}

type consumerRow struct {
	status.Consumer
	Spark template.HTML
}

type dlqCount struct {
	Pipeline string
	N        uint64
}

type processRow struct {
	status.Process
	Owner, This         bool
	Token, TokenClass   string
	Breaker, BreakerCls string
}

// totals are every replica's counters summed, with their rate sparklines.
type totals struct {
	Ingested, Echoes, Applied, Written, Conflicts, RateLimited, Requests, DeadLetters float64
	Share429                                                                          string
	IngestSpark, EchoSpark, ConflictSpark, LimitedSpark                               template.HTML
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	c.page(w, r, "overview", "Overview", c.overviewData(r.Context()))
}

// overviewFragment is the overview's body alone, which the page's script
// fetches every few seconds.
func (c *Console) overviewFragment(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	v := view{Data: c.overviewData(r.Context()), Replica: c.cfg.Replica}
	if err := c.pages["overview"].ExecuteTemplate(&buf, "overview-body", v); err != nil {
		c.log.Error("console: render", "page", "overview fragment", "err", err)
		http.Error(w, "500 the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

func (c *Console) overviewData(ctx context.Context) overviewView {
	now := c.cfg.Now()
	v := overviewView{Now: now, Replica: c.cfg.Replica, Samples: len(c.sampler.samples()), Every: c.sampler.every}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	rep, err := status.Collect(cctx, c.cfg.JS, c.cfg.Tables)
	cancel()
	if err != nil {
		v.Err = err.Error()
		last, ok := c.sampler.latest(now)
		if !ok && len(c.sampler.samples()) == 0 {
			return v
		}
		v.Stale = !ok
		rep = last.rep
	}
	v.Report = rep
	for _, s := range rep.Streams {
		name := s.Name
		seqs := c.sampler.series(func(r status.Report) (float64, bool) {
			for _, x := range r.Streams {
				if x.Name == name && !x.Missing {
					return float64(x.LastSeq), true
				}
			}
			return 0, false
		})
		rs := rates(seqs)
		row := streamRow{Stream: s, Spark: sparkline(rs, "msg/s")}
		if len(seqs) > 1 {
			first, last := seqs[0], seqs[len(seqs)-1]
			if dt := last.at.Sub(first.at).Seconds(); dt > 0 && last.v >= first.v {
				row.Rate = (last.v - first.v) / dt
			}
		}
		v.Streams = append(v.Streams, row)
	}
	for _, cs := range rep.Consumers {
		stream, name := cs.Stream, cs.Name
		pend := c.sampler.series(func(r status.Report) (float64, bool) {
			for _, x := range r.Consumers {
				if x.Stream == stream && x.Name == name {
					return float64(x.Pending), true
				}
			}
			return 0, false
		})
		v.Consumers = append(v.Consumers, consumerRow{Consumer: cs, Spark: sparkline(pend, "pending")})
	}
	slices.SortStableFunc(v.Consumers, func(a, b consumerRow) int { // durable ones first: the bridge's own
		if a.Durable != b.Durable {
			if a.Durable {
				return -1
			}
			return 1
		}
		return 0
	})
	for _, p := range slices.Sorted(maps.Keys(rep.DLQ)) {
		v.DLQ = append(v.DLQ, dlqCount{p, rep.DLQ[p]})
	}
	v.DLQTotal = rep.DLQTotal
	v.DLQSpark = sparkline(c.sampler.series(func(r status.Report) (float64, bool) { return float64(r.DLQTotal), true }), "dead letters")
	for _, p := range rep.Processes {
		row := processRow{Process: p, Owner: p.Extra["sync_owner"] == "true", This: p.ID == c.cfg.Replica}
		if row.Owner {
			v.Owner = p.ID
		}
		row.Token, row.TokenClass = "-", ""
		if !p.TokenExpiry.IsZero() {
			left := p.TokenExpiry.Sub(now)
			row.Token, row.TokenClass = "expires in "+left.Round(time.Second).String(), "ok"
			if left <= 0 {
				row.Token, row.TokenClass = "EXPIRED "+(-left).Round(time.Second).String()+" ago", "bad"
			} else if left < 5*time.Minute {
				row.TokenClass = "warn"
			}
		}
		row.Breaker, row.BreakerCls = p.Breaker, "ok"
		switch p.Breaker {
		case "":
			row.Breaker, row.BreakerCls = "-", ""
		case "open":
			row.BreakerCls = "bad"
		case "half-open":
			row.BreakerCls = "warn"
		}
		v.Processes = append(v.Processes, row)
		t := &v.Totals
		t.Ingested += p.Counters["bridge_ingest_events_published_total"]
		t.Echoes += p.Counters["bridge_echoes_suppressed_total"]
		t.Applied += p.Counters["bridge_apply_applied_total"]
		t.Written += p.Counters["bridge_writeback_messages_total"]
		t.Conflicts += p.Counters["conflicts_total"]
		t.RateLimited += p.Counters["bridge_servicenow_rate_limited_total"]
		t.Requests += p.Counters["bridge_servicenow_requests_total"]
		t.DeadLetters += p.Counters["bridge_apply_dlq_total"] + p.Counters["bridge_writeback_dead_letters_total"]
	}
	t := &v.Totals
	t.Share429 = "-"
	if t.Requests > 0 {
		t.Share429 = strconv.FormatFloat(100*t.RateLimited/t.Requests, 'f', 1, 64) + "%"
	}
	sum := func(name string) func(status.Report) (float64, bool) {
		return func(r status.Report) (float64, bool) {
			var n float64
			for _, p := range r.Processes {
				n += p.Counters[name]
			}
			return n, len(r.Processes) > 0
		}
	}
	t.IngestSpark = sparkline(rates(c.sampler.series(sum("bridge_ingest_events_published_total"))), "events/s")
	t.EchoSpark = sparkline(rates(c.sampler.series(sum("bridge_echoes_suppressed_total"))), "echoes/s")
	t.ConflictSpark = sparkline(rates(c.sampler.series(sum("conflicts_total"))), "conflicts/s")
	t.LimitedSpark = sparkline(rates(c.sampler.series(sum("bridge_servicenow_rate_limited_total"))), "429s/s")
	return v
}

// sparkline draws a series as an inline SVG polyline. Only numbers go into
// it, so it is safe HTML.
func sparkline(ps []point, unit string) template.HTML {
	const w, h = 120.0, 24.0
	if len(ps) < 2 {
		return template.HTML(`<svg class="spark" width="120" height="24" viewBox="0 0 120 24" role="img" aria-label="not enough samples yet"><line class="spark-empty" x1="0" y1="23" x2="120" y2="23"/></svg>`)
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range ps {
		lo, hi = min(lo, p.v), max(hi, p.v)
	}
	lo = min(lo, 0)
	span := hi - lo
	if span == 0 {
		span = 1
	}
	t0, t1 := ps[0].at, ps[len(ps)-1].at
	dt := t1.Sub(t0).Seconds()
	if dt <= 0 {
		dt = 1
	}
	var pts strings.Builder
	for i, p := range ps {
		if i > 0 {
			pts.WriteByte(' ')
		}
		x := p.at.Sub(t0).Seconds() / dt * w
		y := h - 1 - (p.v-lo)/span*(h-2)
		fmt.Fprintf(&pts, "%.1f,%.1f", x, y)
	}
	last := ps[len(ps)-1].v
	label := fmt.Sprintf("last %s %s, peak %s over %s", num(last), unit, num(hi), t1.Sub(t0).Round(time.Second))
	return template.HTML(fmt.Sprintf(`<svg class="spark" width="120" height="24" viewBox="0 0 120 24" role="img" aria-label="%s"><title>%s</title><polyline points="%s"/></svg>`,
		template.HTMLEscapeString(label), template.HTMLEscapeString(label), pts.String()))
}

func num(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'f', 2, 64)
}

// --- dead letters

type deadLettersView struct {
	Pipeline  string
	Pipelines []dlqCount
	Total     uint64
	Entries   []dlq.Entry
	More      int // entries beyond maxRows
	Now       time.Time
	Err       string
}

func (c *Console) deadLetters(w http.ResponseWriter, r *http.Request) {
	v := deadLettersView{Pipeline: pipelineParam(r.URL.Query().Get("pipeline")), Now: c.cfg.Now()}
	counts, err := dlq.Count(r.Context(), c.cfg.JS)
	if err == nil {
		for _, p := range slices.Sorted(maps.Keys(counts)) {
			v.Pipelines = append(v.Pipelines, dlqCount{p, counts[p]})
			v.Total += counts[p]
		}
		v.Entries, err = dlq.List(r.Context(), c.cfg.JS, v.Pipeline)
	}
	if err != nil {
		v.Err = err.Error()
	}
	if len(v.Entries) > maxRows {
		v.More = len(v.Entries) - maxRows
		v.Entries = v.Entries[:maxRows]
	}
	c.page(w, r, "dlq", "Dead letters", v)
}

// pipelineParam keeps a pipeline name to what a subject token may be.
func pipelineParam(p string) string {
	if p == "" || strings.ContainsAny(p, ".*> \t\r\n") || len(p) > 64 {
		return ""
	}
	return p
}

type deadLetterView struct {
	Entry    dlq.Entry
	TraceKey string // what the trace page finds the record by
	Headers  []header
	Body     string
	Now      time.Time
	Err      string
}

type header struct{ Name, Value string }

func (c *Console) deadLetter(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		http.Error(w, "404 not a dead-letter sequence number", http.StatusNotFound)
		return
	}
	e, err := dlq.Get(r.Context(), c.cfg.JS, seq)
	v := deadLetterView{Entry: e, Now: c.cfg.Now()}
	if err != nil {
		v.Err = err.Error()
		w.Header().Set("Cache-Control", "no-store")
		c.renderPage(w, r, statusOf(err), "dlq-show", principalOf(r), view{Title: "Dead letter " + strconv.FormatUint(seq, 10), Data: v})
		return
	}
	for _, k := range slices.Sorted(maps.Keys(e.Headers)) {
		for _, val := range e.Headers[k] {
			v.Headers = append(v.Headers, header{k, val})
		}
	}
	v.Body = prettyBody(e.Data)
	v.TraceKey = traceKey(e.Data)
	c.page(w, r, "dlq-show", "Dead letter "+strconv.FormatUint(seq, 10), v)
}

// traceKey picks the key a dead letter's record is traced by: the
// incident number or sys_id of a ServiceNow event, the external id of an
// app change or result.
func traceKey(body []byte) string {
	var m struct {
		Number     string `json:"number"`
		SysID      string `json:"sys_id"`
		ExternalID string `json:"external_id"`
		Record     struct {
			Number string `json:"number"`
		} `json:"record"`
	}
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	for _, k := range []string{m.Record.Number, m.Number, m.SysID, m.ExternalID} {
		if k != "" {
			return k
		}
	}
	return ""
}

func statusOf(err error) int {
	if errors.Is(err, dlq.ErrNotFound) {
		return http.StatusNotFound
	}
	return http.StatusBadGateway
}

// prettyBody indents JSON; anything else is shown as text (escaped by the
// template like everything else).
func prettyBody(b []byte) string {
	var out bytes.Buffer
	if json.Indent(&out, b, "", "  ") == nil {
		return out.String()
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return fmt.Sprintf("%q", b)
}

func (c *Console) retry(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		http.Error(w, "404 not a dead-letter sequence number", http.StatusNotFound)
		return
	}
	res, err := dlq.Retry(r.Context(), c.cfg.JS, seq)
	c.action(r, "dlq.retry", err, "seq", seq, "subject", res.Subject, "stream", res.Stream, "stream_seq", res.StreamSeq)
	if err != nil {
		setFlash(w, r, fmt.Sprintf("Dead letter %d was not retried: %v", seq, err))
		http.Redirect(w, r, "/dlq/"+strconv.FormatUint(seq, 10), http.StatusSeeOther)
		return
	}
	setFlash(w, r, fmt.Sprintf("Dead letter %d retried: republished to %s (%s seq %d) and removed from the list.", seq, res.Subject, res.Stream, res.StreamSeq))
	http.Redirect(w, r, "/dlq", http.StatusSeeOther)
}

func (c *Console) retryAll(w http.ResponseWriter, r *http.Request) {
	pipeline := pipelineParam(r.PostFormValue("pipeline"))
	res, err := dlq.RetryAll(r.Context(), c.cfg.JS, pipeline)
	c.action(r, "dlq.retry_all", err, "pipeline", pipeline, "retried", len(res))
	msg := fmt.Sprintf("%d dead letters retried.", len(res))
	if err != nil {
		msg += " Some were not: " + err.Error()
	}
	setFlash(w, r, msg)
	http.Redirect(w, r, dlqURL(pipeline), http.StatusSeeOther)
}

func dlqURL(pipeline string) string {
	if pipeline == "" {
		return "/dlq"
	}
	return "/dlq?pipeline=" + pipeline
}

type purgeView struct {
	Pipeline string
	Count    int
	Last     uint64
	First    time.Time
	Confirm  string
	Err      string
}

// purgeConfirm is the confirmation step: it names how many dead letters a
// purge removes, up to which one, and hands the form the token a purge
// needs.
func (c *Console) purgeConfirm(w http.ResponseWriter, r *http.Request) {
	v := purgeView{Pipeline: pipelineParam(r.URL.Query().Get("pipeline"))}
	entries, err := dlq.List(r.Context(), c.cfg.JS, v.Pipeline)
	if err != nil {
		v.Err = err.Error()
	}
	if len(entries) > 0 {
		v.Count, v.Last, v.First = len(entries), entries[len(entries)-1].Seq, entries[0].Time
		v.Confirm = confirmation(principalOf(r), v.Pipeline, v.Last)
	}
	c.page(w, r, "purge", "Purge dead letters", v)
}

func (c *Console) purge(w http.ResponseWriter, r *http.Request) {
	pipeline := pipelineParam(r.PostFormValue("pipeline"))
	last, err := strconv.ParseUint(r.PostFormValue("last"), 10, 64)
	if err != nil || last == 0 || !equal(r.PostFormValue("confirm"), confirmation(principalOf(r), pipeline, last)) {
		c.action(r, "dlq.purge", errors.New("refused: not confirmed"), "pipeline", pipeline)
		http.Error(w, "400 a purge needs its confirmation step: open /dlq/purge, check what it removes, and confirm there", http.StatusBadRequest)
		return
	}
	n, err := dlq.PurgeThrough(r.Context(), c.cfg.JS, pipeline, last)
	c.action(r, "dlq.purge", err, "pipeline", pipeline, "through_seq", last, "purged", n)
	if err != nil {
		setFlash(w, r, "Nothing was purged: "+err.Error())
	} else {
		setFlash(w, r, fmt.Sprintf("%d dead letters purged (through sequence %d; any that arrived since are kept).", n, last))
	}
	http.Redirect(w, r, dlqURL(pipeline), http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	for _, n := range []string{sessionCookie, csrfCookie} {
		http.SetCookie(w, &http.Cookie{Name: n, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	}
	c.action(r, "logout", nil)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// --- trace

type traceView struct {
	Query     string
	Available bool
	Timeline  *trace.Timeline
	State     traceState
	NotFound  bool
	Err       string
}

func (c *Console) trace(w http.ResponseWriter, r *http.Request) {
	v := traceView{Query: strings.TrimSpace(r.URL.Query().Get("q")), Available: c.cfg.Trace != nil}
	code := http.StatusOK
	if v.Available && v.Query != "" {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		tl, err := c.cfg.Trace.Timeline(ctx, v.Query)
		cancel()
		switch {
		case errors.Is(err, trace.ErrNotFound):
			v.NotFound, code = true, http.StatusNotFound
		case err != nil:
			v.Err, code = err.Error(), http.StatusBadGateway
			c.log.Warn("console: trace failed", "key", v.Query, "err", err)
		default:
			v.Timeline, v.State = tl, stateOf(tl)
		}
	}
	c.renderPage(w, r, code, "trace", principalOf(r), view{Title: "Trace", Data: v})
}

// --- flash messages: one line carried across a redirect

func setFlash(w http.ResponseWriter, r *http.Request, msg string) {
	if len(msg) > 1500 {
		msg = msg[:1500] + "…"
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: base64.RawURLEncoding.EncodeToString([]byte(msg)), Path: "/",
		MaxAge: 60, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

func takeFlash(w http.ResponseWriter, r *http.Request) string {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return ""
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	b, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil || !utf8.Valid(b) {
		return ""
	}
	return string(b)
}

func etag(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}
