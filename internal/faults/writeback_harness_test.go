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
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// snWrite is one POST or PATCH the bridge sent a table of the simulator,
// with what ServiceNow answered (0: no answer, the connection was dropped by
// a fault or the bridge died waiting).
type snWrite struct {
	Method string
	Table  string
	At     time.Time         // when the front received it
	Token  string            // the end of its bearer token: which bridge process sent it
	SysID  string            // PATCH: from the path
	Fields map[string]string // the request body
	Status int               // answerLost: committed, the connection dropped before the answer
}

const answerLost = -1

// ok: the bridge heard that ServiceNow committed it.
func (w snWrite) ok() bool { return w.Status >= 200 && w.Status < 300 }

// committed: ServiceNow holds it, whether or not the bridge heard so.
func (w snWrite) committed() bool { return w.ok() || w.Status == answerLost }

// snFront is the ServiceNow simulator behind a recording front: every write
// to a table is logged with its answer (the simulator's own
// request log keeps only the last 2,000 requests and no bodies), and a kill
// hook can stop the bridge after ServiceNow has committed a write and
// before the bridge hears the answer.
type snFront struct {
	sim *snsim.Server
	URL string

	mu       sync.Mutex
	writes   []snWrite
	statuses map[int]int // every Table API answer (0: dropped)
	// loseAnswers is the share of writes committed whose answer is lost
	// (the connection dropped after ServiceNow committed, as a proxy timing
	// out does): the duplicate risk the simulator's own DropRate, which
	// drops before handling, does not cover.
	loseAnswers float64
	rng         *rand.Rand
	// kill, when set, is asked about each write; true: the write is
	// committed, then the front calls it again with committed=true and
	// drops the connection once that returns.
	kill func(w snWrite, committed bool) bool
}

func newSNFront(t *testing.T) *snFront {
	t.Helper()
	sim := snsim.New(snsim.Config{ClientID: "faults", ClientSecret: "faults-secret-0123456789"})
	f := &snFront{sim: sim, statuses: map[int]int{}, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 16))}
	srv := httptest.NewServer(f)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		sim.Close()
	})
	f.URL = srv.URL
	return f
}

// env is the bridge's ServiceNow settings for the simulator, reconcile off
// so that every write the front sees is the writeback's.
func (f *snFront) env() map[string]string {
	return map[string]string{
		"BRIDGE_SN_INSTANCE_URL":    f.URL,
		"BRIDGE_SN_CLIENT_ID":       f.sim.ClientID(),
		"BRIDGE_SN_CLIENT_SECRET":   f.sim.ClientSecret(),
		"BRIDGE_RECONCILE_INTERVAL": "0",
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

// Unwrap lets the simulator's DropRate fault hijack the connection.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (f *snFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	table, isTable := strings.CutPrefix(r.URL.Path, "/api/now/table/")
	if (r.Method != http.MethodPost && r.Method != http.MethodPatch) || !isTable {
		sw := &statusWriter{ResponseWriter: w}
		f.sim.ServeHTTP(sw, r)
		if strings.HasPrefix(r.URL.Path, "/api/now/") {
			f.mu.Lock()
			f.statuses[sw.status]++
			f.mu.Unlock()
		}
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var raw map[string]any
	_ = json.Unmarshal(body, &raw)
	table, _, _ = strings.Cut(table, "/")
	auth := r.Header.Get("Authorization")
	wr := snWrite{Method: r.Method, Table: table, At: time.Now(), Token: auth[max(0, len(auth)-6):], Fields: map[string]string{}}
	for k, v := range raw {
		wr.Fields[k] = fmt.Sprint(v)
	}
	if r.Method == http.MethodPatch {
		wr.SysID = path.Base(r.URL.Path)
	}
	f.mu.Lock()
	kill := f.kill
	lose := f.rng.Float64() < f.loseAnswers
	f.mu.Unlock()
	if lose {
		rec := httptest.NewRecorder()
		f.sim.ServeHTTP(rec, r)
		wr.Status = rec.Code
		if rec.Code >= 200 && rec.Code < 300 {
			wr.Status = answerLost
		}
		f.record(wr)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
		}
		return
	}
	if kill != nil && kill(wr, false) {
		rec := httptest.NewRecorder()
		f.sim.ServeHTTP(rec, r)
		wr.Status = rec.Code
		f.record(wr)
		kill(wr, true)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
		}
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	f.sim.ServeHTTP(sw, r)
	wr.Status = sw.status
	f.record(wr)
}

func (f *snFront) record(w snWrite) {
	f.mu.Lock()
	f.writes = append(f.writes, w)
	f.statuses[w.Status]++
	f.mu.Unlock()
}

func (f *snFront) setLoseAnswers(rate float64) {
	f.mu.Lock()
	f.loseAnswers = rate
	f.mu.Unlock()
}

func (f *snFront) setKill(k func(w snWrite, committed bool) bool) {
	f.mu.Lock()
	f.kill = k
	f.mu.Unlock()
}

// written counts the writes that match and that ServiceNow committed,
// whether or not their answer reached the bridge.
func (f *snFront) written(match func(snWrite) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, w := range f.writes {
		if w.committed() && match(w) {
			n++
		}
	}
	return n
}

// answers counts the Table API's answers by status (0: connection dropped
// by the simulator before handling, -1: committed and the answer lost).
func (f *snFront) answers() map[int]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.statuses)
}

// byCorrelation is the simulator's incidents by correlation_id.
func (f *snFront) byCorrelation() map[string][]snsim.Record { return f.byCorrelationIn("incident") }

// byCorrelationIn is a table's records by correlation_id.
func (f *snFront) byCorrelationIn(table string) map[string][]snsim.Record {
	out := map[string][]snsim.Record{}
	for _, id := range f.sim.IDs(table) {
		if rec, ok := f.sim.Get(table, id); ok && rec["correlation_id"] != "" {
			out[rec["correlation_id"]] = append(out[rec["correlation_id"]], rec)
		}
	}
	return out
}

// app is the SaaS app's side of a bridge: it publishes ticket changes to
// APP_EVENTS as the SDK does (one message id per version) and reads what
// the bridge stored.
type app struct {
	t  *testing.T
	nc *nats.Conn
	js jetstream.JetStream
}

func connectApp(t *testing.T, natsURL string) *app {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect the app to %s: %v", natsURL, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &app{t: t, nc: nc, js: js}
}

func (a *app) publish(externalID string, version int64, fields map[string]string) {
	a.t.Helper()
	if err := a.tryPublish(context.Background(), "ticket", externalID, version, fields); err != nil {
		a.t.Fatal(err)
	}
}

// tryPublish publishes one app change (an upsert) as the SDK does, and
// publishes it again under the same message id while JetStream does not
// confirm it (a stream electing a leader after losing a node), for up to
// 15 s: the stream stores it once.
func (a *app) tryPublish(ctx context.Context, entity, externalID string, version int64, fields map[string]string) error {
	body, _ := json.Marshal(events.AppChange{ExternalID: externalID, Version: version, UpdatedAt: time.Now().UTC(), Fields: fields})
	id := events.AppMsgID(entity, externalID, version, events.AppUpsert)
	deadline := time.Now().Add(15 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := a.js.Publish(pctx, events.AppSubject(entity, events.AppUpsert), body, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("publish %s %s v%d: %w", entity, externalID, version, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitWritebackIdle waits until the writeback consumer has acked (or
// dead-lettered) every app change stored: the ack floor at the stream's
// last message and nothing outstanding.
func (a *app) waitWritebackIdle(d time.Duration) {
	a.t.Helper()
	deadline := time.Now().Add(d)
	last := "no consumer yet"
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := a.js.Stream(ctx, events.StreamApp)
		if err == nil {
			var c jetstream.Consumer
			if c, err = a.js.Consumer(ctx, events.StreamApp, "writeback"); err == nil {
				var info *jetstream.ConsumerInfo
				if info, err = c.Info(ctx); err == nil {
					lastSeq := st.CachedInfo().State.LastSeq
					if info.AckFloor.Stream >= lastSeq && info.NumAckPending == 0 && info.NumPending == 0 {
						cancel()
						return
					}
					last = fmt.Sprintf("ack floor %d of %d, %d unacknowledged, %d pending", info.AckFloor.Stream, lastSeq, info.NumAckPending, info.NumPending)
				}
			}
		}
		if err != nil {
			last = err.Error()
		}
		cancel()
		time.Sleep(50 * time.Millisecond)
	}
	a.t.Fatalf("the writeback did not finish the app's changes within %s: %s", d, last)
}

// messages returns every message of a (small) stream.
func (a *app) messages(stream string) []*jetstream.RawStreamMsg {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := a.js.Stream(ctx, stream)
	if err != nil {
		a.t.Fatalf("%s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		a.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out = append(out, m)
	}
	return out
}

// results are the bridge's results of the app's changes, by external id.
func (a *app) results() map[string][]events.Result {
	a.t.Helper()
	out := map[string][]events.Result{}
	for _, m := range a.messages(events.StreamResults) {
		var r events.Result
		if err := json.Unmarshal(m.Data, &r); err != nil {
			a.t.Fatalf("result %s: %v", m.Subject, err)
		}
		out[r.ExternalID] = append(out[r.ExternalID], r)
	}
	return out
}
