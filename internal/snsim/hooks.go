package snsim

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/servicenow"
)

// DefaultWebhookFields is what the shipped business rules send in `record`
// for each shipped table while nowbridge.fields.<table> is empty
// (NowbridgeWebhook.DEFAULT_FIELDS, through its Go mirror).
var DefaultWebhookFields = func() map[string][]string {
	m := map[string][]string{}
	for _, t := range servicenow.ShippedTables() {
		m[t] = servicenow.DefaultFieldList(t)
	}
	return m
}()

// WebhookTarget is one business-rule endpoint. Every secret signs (one
// webhook-signature entry each), as the script does with several secrets.
type WebhookTarget struct {
	URL     string
	Secrets []webhook.Secret
}

// WebhookOptions tunes the business-rule emulation.
type WebhookOptions struct {
	// DropRate is the share of changes whose webhook is never sent (a lost
	// outbound call: the platform does not retry, reconcile must find it).
	DropRate float64
	// Delay holds each webhook back this long after the change (the ECC
	// queue); order per record is kept.
	Delay time.Duration
	// BeforeResponse makes an API write wait until its webhook was
	// delivered before answering, to provoke echo races.
	BeforeResponse bool
	// SkipUser: changes made by this user name send no webhook (the
	// script's nowbridge.skip_user loop guard). Empty sends all.
	SkipUser string
	// Fields lists, per table, the fields sent in `record` (the
	// nowbridge.fields.<table> properties); tables not listed send no
	// webhook, as tables missing from nowbridge.tables do. Nil takes
	// DefaultWebhookFields: every shipped table, each with its default list.
	Fields map[string][]string
}

func (o WebhookOptions) validate() error {
	if o.DropRate < 0 || o.DropRate > 1 {
		return fmt.Errorf("snsim: webhook drop rate must be within [0,1], got %g", o.DropRate)
	}
	if o.Delay < 0 {
		return fmt.Errorf("snsim: webhook delay must not be negative, got %s", o.Delay)
	}
	return nil
}

// WebhookStats counts business-rule webhooks.
type WebhookStats struct {
	Fired   int // changes that ran the business rule (sent, dropped or pending)
	Sent    int // deliveries answered 2xx (one per target)
	Failed  int // deliveries answered otherwise or not at all (not retried)
	Dropped int // changes whose webhook the drop rate swallowed
	Skipped int // changes by the skip user
}

type hookJob struct {
	id      string
	key     string
	body    []byte
	due     time.Time
	targets []WebhookTarget
	done    chan struct{}
}

type hookShard struct {
	mu   sync.Mutex
	cond *sync.Cond
	q    []*hookJob
}

// dispatcher delivers webhooks asynchronously, one worker per shard of
// records, so webhooks of one record leave in the order of its changes.
type dispatcher struct {
	s      *Server
	client *http.Client
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	shards []*hookShard

	mu      sync.Mutex
	targets []WebhookTarget
	opts    WebhookOptions
	stats   WebhookStats
	pending int
	idle    chan struct{}
	closed  bool
}

const hookShards = 8

func newDispatcher(s *Server, targets []WebhookTarget, opts WebhookOptions, client *http.Client) *dispatcher {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if opts.Fields == nil {
		opts.Fields = DefaultWebhookFields
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &dispatcher{s: s, client: client, ctx: ctx, cancel: cancel, targets: targets, opts: opts}
	for range hookShards {
		sh := &hookShard{}
		sh.cond = sync.NewCond(&sh.mu)
		d.shards = append(d.shards, sh)
		d.wg.Add(1)
		go d.work(sh)
	}
	return d
}

func (d *dispatcher) close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	for _, sh := range d.shards {
		sh.mu.Lock()
		sh.cond.Broadcast()
		sh.mu.Unlock()
	}
	d.wg.Wait()
	d.client.CloseIdleConnections()
	d.mu.Lock()
	d.pending = 0
	if d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
	d.mu.Unlock()
}

func (d *dispatcher) beforeResponse() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.opts.BeforeResponse
}

// SetWebhooks replaces the business rules' endpoints.
func (s *Server) SetWebhooks(targets ...WebhookTarget) error {
	if err := (Config{Webhooks: targets}).Validate(); err != nil {
		return err
	}
	d := s.hooks
	d.mu.Lock()
	d.targets = append([]WebhookTarget(nil), targets...)
	d.mu.Unlock()
	return nil
}

// SetWebhookOptions replaces drop rate, delay, skip user, field lists and the
// before-response knob.
func (s *Server) SetWebhookOptions(o WebhookOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if o.Fields == nil {
		o.Fields = DefaultWebhookFields
	}
	d := s.hooks
	d.mu.Lock()
	d.opts = o
	d.mu.Unlock()
	return nil
}

// WebhookStats returns the business-rule counters.
func (s *Server) WebhookStats() WebhookStats {
	d := s.hooks
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// WaitWebhooks blocks until every queued webhook was delivered or failed.
func (s *Server) WaitWebhooks(ctx context.Context) error {
	d := s.hooks
	for {
		d.mu.Lock()
		if d.pending == 0 {
			d.mu.Unlock()
			return nil
		}
		if d.idle == nil {
			d.idle = make(chan struct{})
		}
		idle := d.idle
		d.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("snsim: waiting for %d pending webhooks: %w", s.pendingWebhooks(), ctx.Err())
		}
	}
}

func (s *Server) pendingWebhooks() int {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	return s.hooks.pending
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// fire runs the business rule for one change (called with s.mu held, so
// jobs of one record are queued in the order of its versions). It returns a
// channel closed once the webhook is delivered, dropped or skipped.
func (d *dispatcher) fire(s *Server, t *table, w write, old, cur *row, journal []JournalEntry) <-chan struct{} {
	d.mu.Lock()
	opts, targets, closed := d.opts, d.targets, d.closed
	d.mu.Unlock()
	fields, ok := opts.Fields[t.s.name]
	if !ok || closed || len(targets) == 0 {
		return closedChan
	}
	return d.enqueue(s, s.buildEvent(t, w.action, old, cur, journal, fields), w.user, opts, targets)
}

// enqueue counts one run of a business rule and queues its webhook, unless
// the skip user made the change or the drop rate swallows it. Called with
// s.mu held, so the webhooks of one record queue in the order of its
// versions.
func (d *dispatcher) enqueue(s *Server, ev *events.SNEvent, user string, opts WebhookOptions, targets []WebhookTarget) <-chan struct{} {
	d.mu.Lock()
	d.stats.Fired++
	if opts.SkipUser != "" && user == opts.SkipUser {
		d.stats.Skipped++
		d.mu.Unlock()
		return closedChan
	}
	d.mu.Unlock()
	if s.chance(opts.DropRate) {
		d.mu.Lock()
		d.stats.Dropped++
		d.mu.Unlock()
		s.log.Debug("snsim business rule: webhook dropped", "table", ev.Table, "sys_id", ev.SysID)
		return closedChan
	}
	body, err := events.EncodeWebhookBody(ev)
	if err != nil {
		s.log.Error("snsim business rule: encode webhook body", "table", ev.Table, "sys_id", ev.SysID, "err", err)
		return closedChan
	}
	job := &hookJob{id: ev.MsgID(), key: ev.Table + ":" + ev.SysID, body: body, due: time.Now().Add(opts.Delay), targets: targets, done: make(chan struct{})}
	h := fnv.New32a()
	_, _ = h.Write([]byte(job.key))
	sh := d.shards[h.Sum32()%hookShards]
	d.mu.Lock()
	d.pending++
	d.mu.Unlock()
	sh.mu.Lock()
	sh.q = append(sh.q, job)
	sh.cond.Signal()
	sh.mu.Unlock()
	return job.done
}

// buildEvent renders the change as the shipped script's buildEvent does.
func (s *Server) buildEvent(t *table, action string, old, cur *row, journal []JournalEntry, fields []string) *events.SNEvent {
	rec := events.Fields{}
	var changed []string
	added := map[string]JournalEntry{}
	for _, j := range journal {
		added[j.Element] = j
	}
	seen := map[string]bool{}
	for _, name := range fields {
		f, i, ok := t.s.field(name)
		if !ok || seen[name] {
			continue // the script warns and skips fields the table lacks
		}
		seen[name] = true
		did := false
		if action != events.ActionDelete {
			switch {
			case f.typ == typeJournal:
				_, did = added[name]
			case old == nil:
				did = cur.vals[i] != ""
			default:
				did = old.vals[i] != cur.vals[i]
			}
		}
		if did {
			changed = append(changed, name)
		}
		if f.typ == typeJournal {
			if did {
				rec[name] = s.formatEntry(added[name], f.label)
			} else {
				rec[name] = ""
			}
			continue
		}
		rec[name] = cur.vals[i]
	}
	mc := 0
	fmt.Sscan(t.get("sys_mod_count", cur), &mc)
	return &events.SNEvent{
		Instance:     s.cfg.InstanceName,
		Table:        t.s.name,
		SysID:        cur.id(t),
		Action:       action,
		SysModCount:  events.ModCount(mc),
		SysUpdatedOn: t.get("sys_updated_on", cur),
		SysUpdatedBy: t.get("sys_updated_by", cur),
		Changed:      changed,
		Record:       rec,
	}
}

func (d *dispatcher) work(sh *hookShard) {
	defer d.wg.Done()
	for {
		sh.mu.Lock()
		for len(sh.q) == 0 && d.ctx.Err() == nil {
			sh.cond.Wait()
		}
		if d.ctx.Err() != nil {
			// Closed: release anyone waiting on a webhook that will
			// never be sent.
			for _, j := range sh.q {
				close(j.done)
			}
			sh.q = nil
			sh.mu.Unlock()
			return
		}
		job := sh.q[0]
		sh.q = sh.q[1:]
		sh.mu.Unlock()
		if err := sleepCtx(d.ctx, time.Until(job.due)); err != nil {
			close(job.done)
			continue
		}
		for _, tg := range job.targets {
			d.deliver(job, tg)
		}
		close(job.done)
		d.mu.Lock()
		d.pending--
		if d.pending == 0 && d.idle != nil {
			close(d.idle)
			d.idle = nil
		}
		d.mu.Unlock()
	}
}

// deliver posts one webhook. A failure is logged and counted, never
// retried: the platform does not retry outbound calls.
func (d *dispatcher) deliver(job *hookJob, tg WebhookTarget) {
	req, err := http.NewRequestWithContext(d.ctx, http.MethodPost, tg.URL, bytes.NewReader(job.body))
	if err != nil {
		d.count(false)
		d.s.log.Error("snsim business rule: bad webhook URL", "webhook_id", job.id, "err", err)
		return
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8") // as NowbridgeWebhook.js sends it
	req.Header.Set("Accept", "application/json")
	now := time.Now()
	webhook.SetHeaders(req.Header, tg.Secrets[0], job.id, now, job.body)
	if len(tg.Secrets) > 1 {
		sigs := make([]string, 0, len(tg.Secrets))
		for _, sec := range tg.Secrets {
			sigs = append(sigs, webhook.Sign(sec, job.id, now.Unix(), job.body))
		}
		req.Header.Set(webhook.HeaderSignature, strings.Join(sigs, " "))
	}
	resp, err := d.client.Do(req)
	if err != nil {
		d.count(false)
		if d.ctx.Err() == nil {
			d.s.log.Warn("snsim business rule: webhook not delivered (not retried)", "webhook_id", job.id, "err", err)
		}
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	d.count(ok)
	if !ok {
		d.s.log.Warn("snsim business rule: webhook rejected (not retried)", "webhook_id", job.id, "status", resp.StatusCode)
	}
}

func (d *dispatcher) count(ok bool) {
	d.mu.Lock()
	if ok {
		d.stats.Sent++
	} else {
		d.stats.Failed++
	}
	d.mu.Unlock()
}
