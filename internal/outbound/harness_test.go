package outbound_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// harness is a real nats-server, the ServiceNow simulator on httptest, the
// real snclient, state and mapping, and the writeback consumer. The
// simulator's business rules post to hooks, which answers each webhook
// with the echo check the inbound receiver runs (dedupe.IsEcho).
type harness struct {
	t      testing.TB
	ctx    context.Context
	sim    *snsim.Server
	simURL string
	js     jetstream.JetStream
	sn     *snclient.Client
	cache  *dedupe.Cache
	store  *state.Store
	links  *state.Links
	maps   *mapping.Set
	w      *outbound.Writer
	reg    *prometheus.Registry
	hooks  *hookSink
	appVer map[string]int64
	cons   *outbound.Consumer
	stop   func() // stops the consumer (and waits for it)
}

type hookSink struct {
	cache *dedupe.Cache
	v     *events.Validator
	mu    sync.Mutex
	echo  []events.SNEvent
	other []events.SNEvent
}

func (h *hookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	evs, err := h.v.DecodeBody(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range evs {
		if h.cache.IsEcho(&ev) {
			h.echo = append(h.echo, ev)
		} else {
			h.other = append(h.other, ev)
		}
	}
	w.WriteHeader(http.StatusAccepted)
}

// counts returns echoes and non-echo webhooks seen for a sys_id ("" = all).
func (h *hookSink) counts(sysID string) (echo, other int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.echo {
		if sysID == "" || e.SysID == sysID {
			echo++
		}
	}
	for _, e := range h.other {
		if sysID == "" || e.SysID == sysID {
			other++
		}
	}
	return echo, other
}

type opts struct {
	cfg   outbound.Config
	snCfg func(*snclient.Config)
	// tables are the synced tables, each with its shipped mapping (default
	// incident); extraMap adds mappings, replacing a shipped one of the
	// same table.
	tables   []string
	extraMap []*mapping.Table
	simCfg   func(*snsim.Config) // tunes the simulator (grants, ...)
}

func newHarness(t testing.TB, o opts) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	maps, err := harnessMappings(o)
	if err != nil {
		t.Fatal(err)
	}
	cache := dedupe.New(dedupe.Config{Tables: maps})
	h := &harness{t: t, ctx: ctx, js: js, cache: cache, maps: maps, reg: prometheus.NewRegistry(), appVer: map[string]int64{}}
	h.hooks = &hookSink{cache: cache, v: events.NewValidator(maps.Tables())}
	hookSrv := httptest.NewServer(h.hooks)
	secret := webhook.NewSecret([]byte("0123456789abcdef0123456789abcdef"))
	simCfg := snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 42,
		Webhooks: []snsim.WebhookTarget{{URL: hookSrv.URL, Secrets: []webhook.Secret{secret}}}}
	if o.simCfg != nil {
		o.simCfg(&simCfg)
	}
	h.sim = snsim.New(simCfg)
	simSrv := httptest.NewServer(h.sim)
	h.simURL = simSrv.URL
	snCfg := snclient.Config{
		InstanceURL: simSrv.URL, ClientID: "bridge", ClientSecret: "s3cret",
		RetryInitial: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, RetryMaxElapsed: time.Second,
		BreakerFailures: 1000, DisableBackgroundRefresh: true,
	}
	if o.snCfg != nil {
		o.snCfg(&snCfg)
	}
	sn, err := snclient.New(snCfg)
	if err != nil {
		t.Fatal(err)
	}
	h.sn = sn
	h.store, h.links, err = state.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.cfg
	cfg.Registerer = h.reg
	if cfg.RetryBase == 0 {
		cfg.RetryBase = 50 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 400 * time.Millisecond
	}
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 10 * time.Second
	}
	if cfg.InstanceURL == "" {
		cfg.InstanceURL = simSrv.URL
	}
	h.w, err = outbound.NewWriter(outbound.Deps{API: sn, Mapping: h.maps, States: h.store, Links: h.links, StateKV: h.store.KV(), Dedupe: cache}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.startConsumer()
	t.Cleanup(func() {
		h.stop()
		cancel()
		_ = sn.Close()
		h.sim.Close()
		simSrv.Close()
		hookSrv.Close()
	})
	return h
}

// startConsumer runs a writeback consumer over h.w until h.stop.
func (h *harness) startConsumer() {
	ctx, cancel := context.WithCancel(h.ctx)
	h.cons = outbound.NewConsumer(h.js, h.w)
	done := make(chan error, 1)
	go func() { done <- h.cons.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("consumer: %v", err)
			}
		})
	}
}

// harnessMappings is the shipped mapping of each of o.tables (incident by
// default) with o.extraMap replacing or adding tables.
func harnessMappings(o opts) (*mapping.Set, error) {
	tables := o.tables
	if len(tables) == 0 {
		tables = []string{"incident"}
	}
	var all []*mapping.Table
	extra := map[string]bool{}
	for _, t := range o.extraMap {
		extra[t.Name] = true
		all = append(all, t)
	}
	for _, name := range tables {
		if extra[name] {
			continue
		}
		data, ok := mapping.ShippedFile(name)
		if !ok {
			return nil, fmt.Errorf("no shipped mapping of %s", name)
		}
		t, err := mapping.Parse(name+".yaml", data)
		if err != nil {
			return nil, err
		}
		all = append(all, t)
	}
	return mapping.NewSet(nil, all...)
}

// human inserts an incident as a ServiceNow user and makes the bridge know
// it as the apply pipeline would have: linked to externalID, state = the
// record's mapped fields.
func (h *harness) linkedIncident(externalID string, fields map[string]string) snsim.Record {
	h.t.Helper()
	f := map[string]string{"short_description": "Email down", "description": "Outlook cannot connect", "impact": "2", "urgency": "2", "correlation_id": externalID}
	for k, v := range fields {
		f[k] = v
	}
	rec, err := h.sim.Insert("incident", f, "beth.anglin")
	if err != nil {
		h.t.Fatal(err)
	}
	h.waitHooks()
	h.syncState(rec)
	if err := h.links.Link(h.ctx, "ticket", externalID, "incident", rec["sys_id"]); err != nil {
		h.t.Fatal(err)
	}
	return rec
}

// syncState records rec in bridge_state as delivered to the app.
func (h *harness) syncState(rec snsim.Record) {
	h.t.Helper()
	var mc int64
	fmt.Sscan(rec["sys_mod_count"], &mc)
	fields := map[string]string{}
	for _, f := range h.maps.Fields("incident") {
		fields[f] = rec[f]
	}
	if _, err := h.store.Advance(h.ctx, "incident", rec["sys_id"], state.Record{Version: mc, UpdatedOn: rec["sys_updated_on"], Fields: fields}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) waitHooks() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	if err := h.sim.WaitWebhooks(ctx); err != nil {
		h.t.Fatal(err)
	}
}

// publish sends an app change with the next version of its id.
func (h *harness) publish(action, externalID string, fields map[string]string, updatedAt time.Time) int64 {
	h.t.Helper()
	h.appVer[externalID]++
	v := h.appVer[externalID]
	if updatedAt.IsZero() {
		updatedAt = time.Now().UTC()
	}
	body, _ := json.Marshal(events.AppChange{ExternalID: externalID, Version: v, UpdatedAt: updatedAt, Fields: fields})
	if _, err := h.js.Publish(h.ctx, events.AppSubject("ticket", action), body,
		jetstream.WithMsgID(events.AppMsgID("ticket", externalID, v, action))); err != nil {
		h.t.Fatal(err)
	}
	return v
}

// eventually polls cond until it holds or the deadline passes.
func (h *harness) eventually(what string, d time.Duration, cond func() (bool, string)) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not reached within %s; last seen: %s", what, d, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeback bookmark: the version of externalID the writeback finished.
func (h *harness) waitWritten(externalID string, version int64) {
	h.t.Helper()
	h.eventually(fmt.Sprintf("writeback of %s v%d", externalID, version), 20*time.Second, func() (bool, string) {
		e, err := h.store.KV().Get(h.ctx, "writeback.ticket."+externalID)
		if err != nil {
			return false, err.Error()
		}
		var p struct {
			Version int64 `json:"version"`
		}
		_ = json.Unmarshal(e.Value(), &p)
		return p.Version >= version, fmt.Sprintf("bookmark v%d", p.Version)
	})
}

func (h *harness) record(sysID string) snsim.Record {
	h.t.Helper()
	rec, ok := h.sim.Get("incident", sysID)
	if !ok {
		h.t.Fatalf("incident %s not in the simulator", sysID)
	}
	return rec
}

func (h *harness) count(method, path string, status int) int {
	return h.sim.RequestCount(method, path, status)
}

const (
	pathOne  = "/api/now/table/incident/{sys_id}"
	pathList = "/api/now/table/incident"
)

func (h *harness) dlq() []*jetstream.RawStreamMsg {
	h.t.Helper()
	st, err := h.js.Stream(h.ctx, events.StreamDLQ)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(h.ctx, seq)
		if err == nil {
			out = append(out, m)
		}
	}
	return out
}
