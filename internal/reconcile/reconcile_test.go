package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// memTable is an in-memory stand-in for a ServiceNow table behind the
// package's own Pager interface: it pages by (sys_updated_on, sys_id) like
// the keyset iterator, so the pass logic can be tested without HTTP.
type memTable struct {
	mu   sync.Mutex
	rows map[string][]events.Fields // table -> rows
	reqs int
	fail func(page int) error
}

func (m *memTable) put(table string, row events.Fields) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rows == nil {
		m.rows = map[string][]events.Fields{}
	}
	rows := m.rows[table]
	for i, r := range rows {
		if r["sys_id"] == row["sys_id"] {
			rows[i] = row
			return
		}
	}
	m.rows[table] = append(rows, row)
}

func (m *memTable) Scan(ctx context.Context, q Query, fn func([]events.Fields, int) error) error {
	if q.ByID {
		return m.scanIDs(q, fn)
	}
	m.mu.Lock()
	var match []events.Fields
	since := q.Since.UTC().Format(events.SNTimeLayout)
	for _, r := range m.rows[q.Table] {
		if !q.Since.IsZero() && r["sys_updated_on"] < since {
			continue
		}
		skip := false
		for k, v := range q.Equals {
			skip = skip || r[k] != v
		}
		if skip {
			continue
		}
		match = append(match, r)
	}
	m.mu.Unlock()
	slices.SortFunc(match, func(a, b events.Fields) int {
		return strings.Compare(a["sys_updated_on"]+a["sys_id"], b["sys_updated_on"]+b["sys_id"])
	})
	for page := 0; page*q.PageSize < len(match); page++ {
		m.mu.Lock()
		m.reqs++
		fail := m.fail
		m.mu.Unlock()
		if fail != nil {
			if err := fail(page); err != nil {
				return err
			}
		}
		if err := fn(match[page*q.PageSize:min((page+1)*q.PageSize, len(match))], len(match)); err != nil {
			return err
		}
	}
	return nil
}

// scanIDs pages sys_ids in sys_id order, as snclient's IDPager does.
func (m *memTable) scanIDs(q Query, fn func([]events.Fields, int) error) error {
	m.mu.Lock()
	var ids []string
	for _, r := range m.rows[q.Table] {
		if len(q.IDs) == 0 || slices.Contains(q.IDs, r["sys_id"]) {
			ids = append(ids, r["sys_id"])
		}
	}
	m.mu.Unlock()
	slices.Sort(ids)
	for page := 0; page == 0 || page*q.PageSize < len(ids); page++ {
		m.mu.Lock()
		m.reqs++
		m.mu.Unlock()
		rows := []events.Fields{}
		for _, id := range ids[min(page*q.PageSize, len(ids)):min((page+1)*q.PageSize, len(ids))] {
			rows = append(rows, events.Fields{"sys_id": id})
		}
		if err := fn(rows, len(ids)); err != nil {
			return err
		}
	}
	return nil
}

func (m *memTable) remove(table, sysID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rows[table] = slices.DeleteFunc(m.rows[table], func(r events.Fields) bool { return r["sys_id"] == sysID })
}

type memVersions struct {
	mu sync.Mutex
	v  map[string]int64
}

func (m *memVersions) LastVersion(_ context.Context, table, sysID string) (int64, bool, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.v[table+"/"+sysID]
	return v, ok, false, nil
}

func (m *memVersions) RecordIDs(_ context.Context, table string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for k := range m.v {
		if t, id, _ := strings.Cut(k, "/"); t == table {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func (m *memVersions) set(table, sysID string, v int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.v == nil {
		m.v = map[string]int64{}
	}
	m.v[table+"/"+sysID] = v
}

func sysID(i int) string { return fmt.Sprintf("%032x", i) }

func setup(t *testing.T) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, events.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(t.Context(), events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestPass_PublishesOnlyVersionsTheBridgeHasNotSeen(t *testing.T) {
	js, kv := setup(t)
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	sn := &memTable{}
	vers := &memVersions{}
	for i := range 50 {
		// Many records share a second, as on a real instance.
		sn.put("incident", events.Fields{"sys_id": sysID(i), "sys_mod_count": "2", "sys_updated_on": now.Add(-time.Duration(i/10) * time.Minute).Format(events.SNTimeLayout), "short_description": "x"})
		if i%5 != 0 {
			vers.set("incident", sysID(i), 2)
		}
	}
	reg := prometheus.NewRegistry()
	r, err := New(js, kv, sn, vers, Config{Tables: []string{"incident"}, PageSize: 7, Now: func() time.Time { return now }, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := r.Pass(t.Context(), "incident", PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Gaps != 10 || sum.Scanned != 50 || sum.UpToDate != 40 || sum.Pages != 8 {
		t.Fatalf("summary = %+v, want 10 gaps, 50 scanned, 40 up to date, 8 pages", sum)
	}
	if got := streamMsgs(t, js); got != 10 {
		t.Fatalf("SN_EVENTS holds %d messages, want 10", got)
	}
	if got := testutil.ToFloat64(r.m.gaps.WithLabelValues("incident", events.ActionUpdate)); got != 10 {
		t.Fatalf("reconcile_gaps_total = %v, want 10", got)
	}
	if n, err := testutil.GatherAndCount(reg, "reconcile_pages_total", "reconcile_records_scanned_total", "reconcile_pass_duration_seconds"); err != nil || n != 3 {
		t.Fatalf("pass metrics: %d series, %v", n, err)
	}
	// The same findings again are duplicates for the stream, not new gaps.
	sum, err = r.Pass(t.Context(), "incident", PassOptions{Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Gaps != 0 || sum.InFlight != 10 {
		t.Fatalf("second pass = %+v, want 0 gaps and 10 in flight", sum)
	}
	wm, ok, err := Store{KV: kv}.Watermark(t.Context(), "incident")
	if err != nil || !ok || !wm.Records.Equal(now) {
		t.Fatalf("watermark = %v %v %v, want %v", wm, ok, err, now)
	}
	last, ok, err := Store{KV: kv}.LastPass(t.Context(), "incident")
	if err != nil || !ok || last.InFlight != 10 {
		t.Fatalf("stored pass = %+v %v %v", last, ok, err)
	}
	// The event carries the webhook's message id and the reconcile source.
	cons, err := js.OrderedConsumer(t.Context(), events.StreamSN, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var ev events.SNEvent
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		t.Fatal(err)
	}
	if msg.Headers().Get(events.HeaderMsgID) != ev.MsgID() || ev.Source != events.SourceReconcile || ev.Action != events.ActionUpdate {
		t.Fatalf("event %+v with id %q", ev, msg.Headers().Get(events.HeaderMsgID))
	}
}

func TestPass_FailedPageKeepsTheWatermarkBeforeIt(t *testing.T) {
	js, kv := setup(t)
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	sn := &memTable{}
	for i := range 30 {
		sn.put("incident", events.Fields{"sys_id": sysID(i), "sys_mod_count": "0", "sys_updated_on": now.Add(-time.Duration(30-i) * 10 * time.Minute).Format(events.SNTimeLayout)})
	}
	sn.fail = func(page int) error {
		if page == 2 {
			return errors.New("instance went away")
		}
		return nil
	}
	r, err := New(js, kv, sn, &memVersions{}, Config{Tables: []string{"incident"}, PageSize: 10, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Pass(t.Context(), "incident", PassOptions{}); err == nil {
		t.Fatal("pass with a failing page succeeded")
	}
	wm, _, _ := Store{KV: kv}.Watermark(t.Context(), "incident")
	if want := now.Add(-11 * 10 * time.Minute); !wm.Records.Equal(want) {
		t.Fatalf("watermark after page 2 failed = %v, want the last row of page 1 (%v)", wm.Records, want)
	}
	sn.fail = nil
	sum, err := r.Pass(t.Context(), "incident", PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := wm.Records.Add(-2 * time.Minute); !sum.From.Equal(want) {
		t.Fatalf("resumed from %v, want watermark − overlap %v", sum.From, want)
	}
	if got := streamMsgs(t, js); got != 30 {
		t.Fatalf("SN_EVENTS holds %d messages after the resumed pass, want 30 (each version once)", got)
	}
}

func TestLease_OneHolderAtATimeAndExpiry(t *testing.T) {
	js, kv := setup(t)
	ctx := t.Context()
	a, err := AcquireLease(ctx, js, kv, "incident", "a", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AcquireLease(ctx, js, kv, "incident", "b", 2*time.Second); !errors.Is(err, ErrLeaseHeld) || !strings.Contains(err.Error(), "holder a") {
		t.Fatalf("second acquire: %v, want ErrLeaseHeld naming a", err)
	}
	if err := a.Renew(ctx); err != nil {
		t.Fatalf("renew: %v", err)
	}
	// a dies without releasing: the TTL frees the table.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := AcquireLease(ctx, js, kv, "incident", "b", 2*time.Second)
		if err == nil {
			if err := a.Renew(ctx); err == nil {
				t.Fatal("the expired holder renewed a lease someone else holds")
			}
			if err := b.Release(ctx); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease never expired: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := AcquireLease(ctx, js, kv, "incident", "c", time.Second); err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
}

type countingLimiter struct {
	mu sync.Mutex
	n  int
}

func (c *countingLimiter) Wait(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return nil
}

type wrote map[string]bool

func (w wrote) Wrote(_, sysID string, _ int64) bool { return w[sysID] }

func TestPass_SkipsVersionsTheBridgeWroteAndPacesEveryRequest(t *testing.T) {
	js, kv := setup(t)
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	sn := &memTable{}
	ours := wrote{}
	for i := range 20 {
		sn.put("incident", events.Fields{"sys_id": sysID(i), "sys_mod_count": "1", "sys_updated_on": now.Format(events.SNTimeLayout)})
		if i < 5 {
			ours[sysID(i)] = true
		}
	}
	lim := &countingLimiter{}
	r, err := New(js, kv, sn, &memVersions{}, Config{Tables: []string{"incident"}, PageSize: 5, Echoes: ours, Limiter: lim, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := r.Pass(t.Context(), "incident", PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Echoes != 5 || sum.Gaps != 15 {
		t.Fatalf("summary = %+v; want the 5 versions the bridge wrote left alone and 15 gaps", sum)
	}
	if lim.n < sn.reqs {
		t.Fatalf("limiter asked %d times for %d ServiceNow requests; every request must be paced", lim.n, sn.reqs)
	}
}

func TestPass_SecondReplicaSkipsWhileTheLeaseIsHeld(t *testing.T) {
	js, kv := setup(t)
	other, err := AcquireLease(t.Context(), js, kv, "incident", "replica-a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(js, kv, &memTable{}, &memVersions{}, Config{Tables: []string{"incident"}, Holder: "replica-b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Pass(t.Context(), "incident", PassOptions{}); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("pass while replica-a holds the lease: %v, want ErrLeaseHeld", err)
	}
	if err := other.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Pass(t.Context(), "incident", PassOptions{}); err != nil {
		t.Fatalf("pass after release: %v", err)
	}
}

func TestRun_PassesEveryIntervalAndStopsWithTheContext(t *testing.T) {
	js, kv := setup(t)
	sn := &memTable{}
	sn.put("incident", events.Fields{"sys_id": sysID(1), "sys_mod_count": "0", "sys_updated_on": time.Now().UTC().Format(events.SNTimeLayout)})
	off, err := New(js, kv, sn, &memVersions{}, Config{Tables: []string{"incident"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := off.Run(t.Context()); err != nil {
		t.Fatalf("Run with interval 0 = %v, want nil at once", err)
	}
	r, err := New(js, kv, sn, &memVersions{}, Config{Tables: []string{"incident"}, Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if sum, ok, _ := (Store{KV: kv}).LastPass(t.Context(), "incident"); ok && sum.InFlight > 0 {
			break // a second pass found the first one's event still in the stream
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not pass twice within 15s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
}
