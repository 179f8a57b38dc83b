package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/apply"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// natsCluster is three JetStream nodes in the test process, each of which
// can be shut down and started again on its port and store.
type natsCluster struct {
	t     *testing.T
	nodes []*server.Server
	opts  []*server.Options // each node's, for natstest.Restart
	URL   string            // every node's client URL, for clients that fail over
}

func runNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, nodes: natstest.RunCluster(t, 3)}
	c.URL = natstest.ClusterURL(c.nodes)
	for i := range c.nodes {
		c.opts = append(c.opts, c.nodeOptions(i))
	}
	return c
}

// nodeOptions are the options natstest.RunCluster started node i with,
// read back from the running node (RunCluster does not return them): its
// name (its identity as a JetStream peer), store, cluster port and routes.
func (c *natsCluster) nodeOptions(i int) *server.Options {
	s := c.nodes[i]
	o := natstest.Options(filepath.Dir(s.StoreDir())) // the server adds "jetstream"
	o.ServerName = s.Name()
	o.Cluster.Name = s.ClusterName()
	o.Cluster.Host = "127.0.0.1"
	o.Cluster.Port = s.ClusterAddr().Port
	var routes []string
	for _, n := range c.nodes {
		routes = append(routes, "nats-route://"+n.ClusterAddr().String())
	}
	o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
	return o
}

// leaderOf is the index of the node leading a stream.
func (c *natsCluster) leaderOf(js jetstream.JetStream, stream string) int {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	last := "no answer"
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := js.Stream(ctx, stream)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = st.Info(ctx)
		}
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case info.Cluster == nil || info.Cluster.Leader == "":
			last = "no leader"
		default:
			for i, n := range c.nodes {
				if n.Name() == info.Cluster.Leader {
					return i
				}
			}
			last = "leader " + info.Cluster.Leader + " is none of the nodes"
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("the leader of %s: %s", stream, last)
	return -1
}

func (c *natsCluster) shutdown(i int) {
	c.nodes[i].Shutdown()
	c.nodes[i].WaitForShutdown()
}

// restart starts node i again on its port and store.
func (c *natsCluster) restart(i int) {
	c.t.Helper()
	c.nodes[i] = natstest.Restart(c.t, c.nodes[i], c.opts[i])
}

// webhookLB stands between the business rules and the bridge replicas as
// a load balancer with health checks would: each webhook goes to the next
// replica in turn, and to the one after on a transport error (the replica
// is down, or died with the request) or a 503 (it cannot store right now),
// round and round with a short pause for up to 8 s, inside the business
// rule's 10 s timeout. A webhook carries its id and the stream drops a
// repeat, so sending it again after an error whose outcome is unknown
// stores it at most once. The sender gets a 202 only from a replica that
// answered it.
type webhookLB struct {
	URL    string
	client *http.Client

	mu       sync.Mutex
	targets  []string // replica base URLs
	next     int
	answered map[string]lbAnswer // by webhook-id: what the sender got last
	tries    int                 // requests forwarded
	errs     int                 // transport errors
	busy     int                 // 503s
}

// lbAnswer is what the sender got for one webhook.
type lbAnswer struct {
	Status                       int
	Accepted, Duplicates, Echoes int
	Replica                      int // who answered; -1: none did
	At                           time.Time
}

func newWebhookLB(t *testing.T) *webhookLB {
	t.Helper()
	lb := &webhookLB{
		client:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 6 * time.Second},
		answered: map[string]lbAnswer{},
	}
	srv := httptest.NewServer(lb)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		lb.client.CloseIdleConnections()
	})
	lb.URL = srv.URL
	return lb
}

func (lb *webhookLB) setTargets(urls ...string) {
	lb.mu.Lock()
	lb.targets = slices.Clone(urls)
	lb.mu.Unlock()
}

func (lb *webhookLB) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	id := r.Header.Get(webhook.HeaderID)
	deadline := time.Now().Add(8 * time.Second)
	lb.mu.Lock()
	n := len(lb.targets)
	lb.mu.Unlock()
	final := lbAnswer{Status: http.StatusServiceUnavailable, Replica: -1}
	var header http.Header
	var respBody []byte
	for try := 1; ; try++ {
		lb.mu.Lock()
		i := lb.next % n
		lb.next++
		target := lb.targets[i]
		lb.tries++
		lb.mu.Unlock()
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, target+r.URL.Path, bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := lb.client.Do(req)
		if err != nil {
			if r.Context().Err() != nil {
				return // the sender gave up
			}
			lb.mu.Lock()
			lb.errs++
			lb.mu.Unlock()
		} else {
			rb, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				final = lbAnswer{Status: resp.StatusCode, Replica: i}
				if resp.StatusCode == http.StatusAccepted {
					_ = json.Unmarshal(rb, &final) // accepted, duplicates, echoes
				}
				header, respBody = resp.Header, rb
				break
			}
			lb.mu.Lock()
			lb.busy++
			lb.mu.Unlock()
			header, respBody = resp.Header, rb
		}
		if time.Now().After(deadline) {
			break
		}
		if try%n == 0 {
			time.Sleep(200 * time.Millisecond) // every replica refused: wait a little
		}
	}
	final.At = time.Now()
	lb.mu.Lock()
	lb.answered[id] = final
	lb.mu.Unlock()
	if ct := header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(final.Status)
	_, _ = w.Write(respBody)
}

// answers is a copy of what the senders got, by webhook id.
func (lb *webhookLB) answers() map[string]lbAnswer {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return maps.Clone(lb.answered)
}

func (lb *webhookLB) String() string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return fmt.Sprintf("%d webhooks, %d requests to replicas, %d transport errors, %d answered 503", len(lb.answered), lb.tries, lb.errs, lb.busy)
}

// chaosTable is how the chaos test changes the records of one table on
// either side (the workload of cmd/bridge's TestDev_NoEchoAmplification).
type chaosTable struct {
	table, entity, prefix string
	initial               map[string]string // the app's first version (title added)
	compare               []string          // app fields both sides must agree on at the end
	appEdit               func(rng *rand.Rand, rec map[string]string)
	personEdit            func(rng *rand.Rand, rec map[string]string) map[string]string
}

// otherThan draws a value of options other than cur.
func otherThan(rng *rand.Rand, cur string, options ...string) string {
	for {
		if v := options[rng.IntN(len(options))]; v != cur {
			return v
		}
	}
}

var chaosTables = []chaosTable{
	{
		table: "incident", entity: "ticket", prefix: "TCK",
		initial: map[string]string{"description": "", "status": "new", "urgency": "3", "impact": "3", "priority": "5"},
		compare: []string{"title", "description", "status", "urgency", "impact", "priority"},
		appEdit: func(rng *rand.Rand, tk map[string]string) {
			switch rng.IntN(3) {
			case 0:
				tk["title"] = fmt.Sprintf("title %d", rng.IntN(1e6))
			case 1:
				tk["description"] = fmt.Sprintf("description %d", rng.IntN(1e6))
			default:
				tk["status"] = otherThan(rng, tk["status"], "new", "in_progress", "on_hold", "resolved")
			}
			if rng.IntN(4) == 0 {
				tk["comment"] = fmt.Sprintf("comment %d", rng.IntN(1e6))
			}
		},
		personEdit: func(rng *rand.Rand, rec map[string]string) map[string]string {
			switch rng.IntN(4) {
			case 0:
				return map[string]string{"short_description": fmt.Sprintf("sn title %d", rng.IntN(1e6))}
			case 1:
				return map[string]string{"description": fmt.Sprintf("sn description %d", rng.IntN(1e6))}
			case 2:
				return map[string]string{"urgency": otherThan(rng, rec["urgency"], "1", "2", "3")}
			default:
				return map[string]string{"state": otherThan(rng, rec["state"], "1", "2", "3")}
			}
		},
	},
	{
		// A change's priority is not derived; its states are negative.
		table: "change_request", entity: "change", prefix: "CR",
		initial: map[string]string{"description": "", "status": "new", "type": "normal", "risk": "3", "impact": "3", "priority": "4"},
		compare: []string{"title", "description", "status", "type", "risk", "impact", "priority"},
		appEdit: func(rng *rand.Rand, ch map[string]string) {
			switch rng.IntN(3) {
			case 0:
				ch["title"] = fmt.Sprintf("title %d", rng.IntN(1e6))
			case 1:
				ch["description"] = fmt.Sprintf("description %d", rng.IntN(1e6))
			default:
				ch["status"] = otherThan(rng, ch["status"], "new", "assess", "authorize", "scheduled", "implement", "review")
			}
			if rng.IntN(4) == 0 {
				ch["work_note"] = fmt.Sprintf("work note %d", rng.IntN(1e6))
			}
		},
		personEdit: func(rng *rand.Rand, rec map[string]string) map[string]string {
			switch rng.IntN(4) {
			case 0:
				return map[string]string{"short_description": fmt.Sprintf("sn title %d", rng.IntN(1e6))}
			case 1:
				return map[string]string{"description": fmt.Sprintf("sn description %d", rng.IntN(1e6))}
			case 2:
				return map[string]string{"risk": otherThan(rng, rec["risk"], "1", "2", "3", "4")}
			default:
				return map[string]string{"state": otherThan(rng, rec["state"], "-5", "-4", "-3", "-2", "-1", "0")}
			}
		},
	},
}

// chaosApp is the SaaS app of the chaos test, as cmd/bridge's fakeApp: it
// keeps records of every entity (keyed entity/external_id), applies what
// arrives on bridge.apply, and republishes every third version it is
// handed (an app that emits a change event for every write, its own
// integration's included). It reads BRIDGE_APPLY with an ordered consumer
// through the cluster, and publishes as the SDK does, again under the same
// message id while a stream elects a leader.
type chaosApp struct {
	*app
	ctx context.Context

	mu        sync.Mutex
	records   map[string]map[string]string // entity/external_id -> app fields
	versions  map[string]int64
	sent      []string // app message ids published, in order
	applied   int      // bridge.apply messages received for linked records
	received  []appliedMsg
	done      uint64 // BRIDGE_APPLY sequence of the last message finished, its echo published
	lastApply time.Time
}

// appliedMsg is one bridge.apply message for a linked record.
type appliedMsg struct {
	key     string // entity/external_id
	id      string // Nats-Msg-Id: <table>:<sys_id>:<version>:<action>
	version int64
	fields  map[string]string
	stored  time.Time // when BRIDGE_APPLY stored it
}

func startChaosApp(ctx context.Context, t *testing.T, natsURL string) *chaosApp {
	t.Helper()
	ca := &chaosApp{app: connectApp(t, natsURL), ctx: ctx, records: map[string]map[string]string{}, versions: map[string]int64{}}
	cons, err := ca.js.OrderedConsumer(ctx, events.StreamApply, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(ca.handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return ca
}

func (ca *chaosApp) handle(m jetstream.Msg) {
	var stored time.Time
	var seq uint64
	if meta, err := m.Metadata(); err == nil {
		stored, seq = meta.Timestamp, meta.Sequence.Stream
	}
	defer func() {
		ca.mu.Lock()
		ca.done = max(ca.done, seq)
		ca.mu.Unlock()
	}()
	var am apply.Message
	if json.Unmarshal(m.Data(), &am) != nil || am.ExternalID == "" {
		return
	}
	key := am.Entity + "/" + am.ExternalID
	ca.mu.Lock()
	rec, ok := ca.records[key]
	if ok {
		ca.applied++
		ca.received = append(ca.received, appliedMsg{key: key, id: m.Headers().Get(events.HeaderMsgID), version: am.Version, fields: am.Fields, stored: stored})
		ca.lastApply = time.Now()
		for k, v := range am.Fields {
			rec[k] = v
		}
	}
	ca.mu.Unlock()
	if ok && am.Version%3 == 0 {
		ca.publish(key) // the app's echo of what it was handed
	}
}

// publish sends the record's current fields as its next version.
func (ca *chaosApp) publish(key string) {
	entity, id, _ := strings.Cut(key, "/")
	ca.mu.Lock()
	ca.versions[key]++
	v, fields := ca.versions[key], maps.Clone(ca.records[key])
	// Journal entries are actions ("add this"), not state: sent once.
	delete(ca.records[key], "comment")
	delete(ca.records[key], "work_note")
	ca.sent = append(ca.sent, events.AppMsgID(entity, id, v, events.AppUpsert))
	ca.mu.Unlock()
	if err := ca.tryPublish(ca.ctx, entity, id, v, fields); err != nil && ca.ctx.Err() == nil {
		ca.t.Error(err)
	}
}

// counts is what the app has seen so far.
func (ca *chaosApp) counts() (applied, published int) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.applied, len(ca.sent)
}

// drain waits until nothing is in flight anywhere: the business rules'
// webhooks delivered (through the load balancer), every consumer of
// SN_EVENTS and APP_EVENTS with nothing pending or unacknowledged (a
// consumer acks only once a message's effects are done), and the app
// through BRIDGE_APPLY with its echoes published. Each stage can start
// work for another, so a pass counts only when every stage was idle and
// nothing new was fired or stored while it looked. A stream that cannot
// answer (electing a leader) is busy, not an error.
func (ca *chaosApp) drain(sn *snFront, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ca.ctx, timeout)
	defer cancel()
	why := ""
	for {
		before, err := ca.progress(ctx, sn)
		if err == nil {
			var idle bool
			if idle, why, err = ca.idle(ctx, sn); err == nil && idle {
				var after string
				if after, err = ca.progress(ctx, sn); err == nil && after == before {
					return nil
				}
			}
		}
		if err != nil {
			why = err.Error()
		}
		// Not too often: every check is several JetStream API requests,
		// and the cluster runs in this process.
		select {
		case <-ctx.Done():
			if why == "" {
				why = "new work arrived during every check"
			}
			return fmt.Errorf("not drained within %s: %s", timeout, why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// progress is everything that grows when work starts: business rules
// fired, and the last sequence of each stream.
func (ca *chaosApp) progress(ctx context.Context, sn *snFront) (string, error) {
	out := fmt.Sprint(sn.sim.WebhookStats().Fired)
	for _, name := range []string{events.StreamSN, events.StreamApp, events.StreamApply} {
		info, err := ca.streamInfo(ctx, name)
		if err != nil {
			return "", err
		}
		out += fmt.Sprintf(" %s:%d", name, info.State.LastSeq)
	}
	return out, nil
}

func (ca *chaosApp) streamInfo(ctx context.Context, name string) (*jetstream.StreamInfo, error) {
	ictx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	s, err := ca.js.Stream(ictx, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	info, err := s.Info(ictx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return info, nil
}

// idle checks the cheap stages first and stops at the first busy one.
func (ca *chaosApp) idle(ctx context.Context, sn *snFront) (bool, string, error) {
	if err := sn.sim.WaitWebhooks(ctx); err != nil {
		return false, "", err
	}
	info, err := ca.streamInfo(ctx, events.StreamApply)
	if err != nil {
		return false, "", err
	}
	ca.mu.Lock()
	done := ca.done
	ca.mu.Unlock()
	if done < info.State.LastSeq {
		return false, fmt.Sprintf("the app is at %s sequence %d of %d", events.StreamApply, done, info.State.LastSeq), nil
	}
	for _, name := range []string{events.StreamSN, events.StreamApp} {
		sinfo, err := ca.streamInfo(ctx, name)
		if err != nil {
			return false, "", err
		}
		busy, err := ca.busyConsumer(ctx, sinfo)
		if err != nil || busy != "" {
			return false, busy, err
		}
	}
	return true, "", nil
}

// busyConsumer names a consumer of the stream with work left: messages
// pending or unacknowledged, or (one reading the whole stream) an ack
// floor below the stream's last message, since right after a publish its
// pending count may not include it yet.
func (ca *chaosApp) busyConsumer(ctx context.Context, sinfo *jetstream.StreamInfo) (string, error) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	s, err := ca.js.Stream(lctx, sinfo.Config.Name)
	if err != nil {
		return "", err
	}
	list := s.ListConsumers(lctx)
	busy := ""
	for ci := range list.Info() {
		all := len(ci.Config.FilterSubjects) == 0 && (ci.Config.FilterSubject == "" || slices.Equal([]string{ci.Config.FilterSubject}, sinfo.Config.Subjects))
		if ci.NumPending > 0 || ci.NumAckPending > 0 || all && ci.AckFloor.Stream < sinfo.State.LastSeq {
			busy = fmt.Sprintf("consumer %s on %s: %d pending, %d unacknowledged, acked to %d of %d",
				ci.Name, sinfo.Config.Name, ci.NumPending, ci.NumAckPending, ci.AckFloor.Stream, sinfo.State.LastSeq)
		}
	}
	if err := list.Err(); err != nil {
		return "", fmt.Errorf("consumers of %s: %w", sinfo.Config.Name, err)
	}
	return busy, nil
}
