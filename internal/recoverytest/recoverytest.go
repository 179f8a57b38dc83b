// Package recoverytest assembles a whole bridge for the recovery tests out
// of real parts: an in-process nats-server, the ServiceNow simulator on
// httptest with business-rule webhooks, the snclient, the apply pipeline
// with an HTTP applier, and a SaaS endpoint that records what it was given.
// Only test code imports it.
package recoverytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dedupe"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/outbound"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// Table is the table the recovery tests sync.
const Table = "incident"

// Env is one bridge under test.
type Env struct {
	T       testing.TB
	NC      *nats.Conn
	JS      jetstream.JetStream
	Sim     *snsim.Server
	SimURL  string
	SN      *snclient.Client
	Store   *state.Store
	Links   *state.Links
	Mapping *mapping.Set
	SaaS    *SaaS
	Secret  webhook.Secret
	Log     *slog.Logger

	hookSrv *httptest.Server
}

// Options shape the environment.
type Options struct {
	DropRate float64 // share of business-rule webhooks lost
	Seed     uint64
}

// Start builds the environment; everything stops when the test ends.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	ctx := context.Background()
	s := natstest.RunServer(t)
	nc, js := natstest.Connect(t, s)
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, links, err := state.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	e := &Env{T: t, NC: nc, JS: js, Store: store, Links: links, Mapping: mapping.Default(log), Log: log,
		Secret: webhook.NewSecret([]byte("recovery-test-secret-0123456789ab"))}

	// The real webhook receiver: signature check, validation, SN_EVENTS
	// under the webhook's Nats-Msg-Id.
	recv, err := inbound.New(inbound.Config{Conn: nc, Secrets: []webhook.Secret{e.Secret}, Tables: []string{Table}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	e.hookSrv = httptest.NewServer(recv.Handler())
	t.Cleanup(e.hookSrv.Close)

	e.Sim = snsim.New(snsim.Config{
		ClientID: "bridge", ClientSecret: "s3cret", Seed: o.Seed, Logger: log,
		Webhooks:       []snsim.WebhookTarget{{URL: e.hookSrv.URL + "/webhooks/servicenow", Secrets: []webhook.Secret{e.Secret}}},
		WebhookOptions: snsim.WebhookOptions{DropRate: o.DropRate},
	})
	simSrv := httptest.NewServer(e.Sim)
	e.SimURL = simSrv.URL
	t.Cleanup(func() { simSrv.Close(); e.Sim.Close() })
	e.SN, err = snclient.New(snclient.Config{InstanceURL: simSrv.URL, ClientID: "bridge", ClientSecret: "s3cret", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.SN.Close() })
	e.SaaS = newSaaS(t)
	return e
}

// RunApply runs the apply pipeline (durable consumer) until the test ends.
func (e *Env) RunApply() *apply.Runner {
	e.T.Helper()
	r := e.NewApply()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Run(ctx) })
	e.T.Cleanup(func() { cancel(); wg.Wait() })
	return r
}

// NewApply builds the apply pipeline without running its consumer.
func (e *Env) NewApply() *apply.Runner {
	e.T.Helper()
	r, err := apply.New(apply.Config{
		JS: e.JS, Applier: apply.NewHTTPApplier(e.SaaS.URL, e.Secret, 5*time.Second, 4),
		Mapping: e.Mapping, States: e.Store, Links: e.Links, Logger: e.Log,
		Tuning: consume.Tuning{RetryBase: 50 * time.Millisecond, RetryMax: time.Second},
	})
	if err != nil {
		e.T.Fatal(err)
	}
	return r
}

// Settle waits until every business-rule webhook was delivered and the
// apply consumer has nothing pending.
func (e *Env) Settle() {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.Sim.WaitWebhooks(ctx); err != nil {
		e.T.Fatalf("webhooks not delivered: %v", err)
	}
	if st := e.Sim.WebhookStats(); st.Failed > 0 {
		e.T.Fatalf("the receiver refused %d webhooks: %+v", st.Failed, st)
	}
	// Drained means acked up to the stream's last message: right after a
	// publish the consumer's pending count may not include it yet.
	for {
		c, err := e.JS.Consumer(ctx, events.StreamSN, "apply")
		if err == nil {
			st, serr := e.JS.Stream(ctx, events.StreamSN)
			info, err := c.Info(ctx)
			if serr == nil && err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
				sinfo, err := st.Info(ctx)
				if err == nil && info.AckFloor.Stream >= sinfo.State.LastSeq {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			e.T.Fatalf("apply consumer did not drain within 60s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Mismatches compares every incident in the simulator, and every sys_id in
// deleted, with what the SaaS endpoint and bridge_state hold; it returns a
// line per difference.
func (e *Env) Mismatches(deleted []string) []string {
	e.T.Helper()
	ctx := context.Background()
	var out []string
	for _, id := range e.Sim.IDs(Table) {
		rec, ok := e.Sim.Get(Table, id)
		if !ok {
			continue
		}
		var mc int64
		fmt.Sscan(rec["sys_mod_count"], &mc)
		got, have := e.SaaS.Last(id)
		switch {
		case !have:
			out = append(out, fmt.Sprintf("%s: ServiceNow has version %d, the app has nothing", id, mc))
		case got.Version != mc || got.Action == events.ActionDelete:
			out = append(out, fmt.Sprintf("%s: ServiceNow has version %d, the app %d (%s)", id, mc, got.Version, got.Action))
		case got.Fields["title"] != rec["short_description"]:
			out = append(out, fmt.Sprintf("%s: title %q in the app, short_description %q in ServiceNow", id, got.Fields["title"], rec["short_description"]))
		}
		st, _, ok, err := e.Store.Get(ctx, Table, id)
		if err != nil || !ok || st.Version != mc {
			out = append(out, fmt.Sprintf("%s: bridge_state %+v (ok %v, err %v), want version %d", id, st.Version, ok, err, mc))
		}
	}
	for _, id := range deleted {
		got, have := e.SaaS.Last(id)
		if have && got.Action != events.ActionDelete {
			out = append(out, fmt.Sprintf("%s: deleted in ServiceNow, the app still has version %d", id, got.Version))
		}
	}
	sort.Strings(out)
	return out
}

// Applied is one message the SaaS endpoint received.
type Applied struct {
	Action  string            `json:"action"`
	SysID   string            `json:"sys_id"`
	Version int64             `json:"version"`
	Fields  map[string]string `json:"fields"`
	MsgID   string            `json:"-"`
}

// SaaS is the app's HTTP endpoint: it keeps the newest version per record
// (as the app contract asks) and counts deliveries per message id.
type SaaS struct {
	URL string

	mu    sync.Mutex
	last  map[string]Applied
	count map[string]int
	total int
	fail  int // answer this status instead of applying (0: apply)
}

func newSaaS(t testing.TB) *SaaS {
	s := &SaaS{last: map[string]Applied{}, count: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a Applied
		if err := json.NewDecoder(r.Body).Decode(&a); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.MsgID = r.Header.Get(apply.HeaderIdempotencyKey)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.fail != 0 {
			http.Error(w, `{"error":"not now"}`, s.fail)
			return
		}
		s.total++
		s.count[a.MsgID]++
		if cur, ok := s.last[a.SysID]; ok && cur.Version > a.Version {
			w.WriteHeader(http.StatusConflict)
			return
		}
		s.last[a.SysID] = a
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"external_id":"EXT-`+a.SysID[:8]+`"}`)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// Last is the newest version of a record the app holds.
func (s *SaaS) Last(sysID string) (Applied, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.last[sysID]
	return a, ok
}

// Deliveries returns how many messages arrived and the message ids that
// arrived more than once.
func (s *SaaS) Deliveries() (total int, repeated []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, n := range s.count {
		if n > 1 {
			repeated = append(repeated, id)
		}
	}
	sort.Strings(repeated)
	return s.total, repeated
}

// Fail makes the endpoint answer status to everything (0 heals it).
func (s *SaaS) Fail(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = status
}

// RunWriteback runs the writeback consumer on APP_EVENTS until the test
// ends, with dead-lettering after maxDeliver failed deliveries (0: only
// permanent errors dead-letter).
func (e *Env) RunWriteback(maxDeliver int) *outbound.Writer {
	e.T.Helper()
	w, err := outbound.NewWriter(outbound.Deps{
		API: e.SN, Mapping: e.Mapping, States: e.Store, Links: e.Links, StateKV: e.Store.KV(),
		Dedupe: dedupe.New(dedupe.Config{Tables: e.Mapping}),
	}, outbound.Config{Logger: e.Log, MaxDeliver: maxDeliver, RetryBase: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, BlindWrites: true})
	if err != nil {
		e.T.Fatal(err)
	}
	c := outbound.NewConsumer(e.JS, w)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.Run(ctx) })
	e.T.Cleanup(func() { cancel(); wg.Wait() })
	return w
}
