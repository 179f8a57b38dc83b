package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
)

// replica is one bridge replica's reconcile: its own NATS connection, its
// own bridge_state handles and Reconciler, as in a separate process.
type replica struct {
	nc  *nats.Conn
	r   *Reconciler
	reg *prometheus.Registry
}

func startReplica(t *testing.T, env *recoverytest.Env, pager Pager, cfg Config) *replica {
	t.Helper()
	nc, err := nats.Connect(env.NC.ConnectedUrl())
	if err != nil {
		t.Fatalf("replica %s: connect: %v", cfg.Holder, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	store, _, err := state.Open(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Tables = []string{recoverytest.Table}
	cfg.Fields = env.Mapping.Fields
	cfg.Instance = "dev00000"
	cfg.Registerer = reg
	r, err := New(js, store.KV(), pager, store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &replica{nc: nc, r: r, reg: reg}
}

// gaps is what the replica's passes published that SN_EVENTS did not hold.
func (p *replica) gaps() int {
	return int(testutil.ToFloat64(p.r.m.gaps.WithLabelValues(recoverytest.Table, events.ActionInsert)) +
		testutil.ToFloat64(p.r.m.gaps.WithLabelValues(recoverytest.Table, events.ActionUpdate)))
}

func (p *replica) passes(result string) int {
	return int(testutil.ToFloat64(p.r.m.passes.WithLabelValues(recoverytest.Table, result)))
}

// dyingPager lets a replica's record scan publish `after` pages, slowly
// enough for its lease to be renewed, then kills the replica: its NATS
// connection is closed (nothing it does afterwards reaches the cluster:
// no renewal, no release, no publish) and the scan freezes until thaw is
// closed, like a process that stopped.
type dyingPager struct {
	Pager
	after  int
	delay  time.Duration
	die    func()
	dead   chan struct{} // closed once the replica died
	thaw   chan struct{}
	diedAt time.Time
}

var errReplicaDied = errors.New("replica died")

func (d *dyingPager) Scan(ctx context.Context, q Query, fn func([]events.Fields, int) error) error {
	if q.ByID || q.Table != recoverytest.Table {
		return d.Pager.Scan(ctx, q, fn)
	}
	pages := 0
	return d.Pager.Scan(ctx, q, func(rows []events.Fields, total int) error {
		if err := fn(rows, total); err != nil {
			return err
		}
		if pages++; pages < d.after {
			time.Sleep(d.delay)
			return nil
		}
		d.die()
		d.diedAt = time.Now()
		close(d.dead)
		<-d.thaw
		return errReplicaDied
	})
}

// leaseWrite is one write of the lease entry seen by a watcher.
type leaseWrite struct {
	holder string // "" for a delete or an expiry marker
	op     jetstream.KeyValueOp
	at     time.Time
}

// watchLease records every write of the table's reconcile lease until the
// returned stop is called.
func watchLease(t *testing.T, kv jetstream.KeyValue) (stop func() []leaseWrite) {
	t.Helper()
	w, err := kv.Watch(t.Context(), LeaseKey(recoverytest.Table), jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		writes []leaseWrite
		wg     sync.WaitGroup
	)
	wg.Go(func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			lw := leaseWrite{op: e.Operation(), at: e.Created()}
			if e.Operation() == jetstream.KeyValuePut {
				var v struct{ Holder string }
				_ = json.Unmarshal(e.Value(), &v)
				lw.holder = v.Holder
			}
			mu.Lock()
			writes = append(writes, lw)
			mu.Unlock()
		}
	})
	return func() []leaseWrite {
		_ = w.Stop()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(writes)
	}
}

// streamIDs counts SN_EVENTS messages by Nats-Msg-Id.
func streamIDs(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	n := streamMsgs(t, js)
	ids := map[string]int{}
	if n == 0 {
		return ids
	}
	cons, err := js.OrderedConsumer(t.Context(), events.StreamSN, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for read := uint64(0); read < n; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			ids[m.Headers().Get(events.HeaderMsgID)]++
			read++
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("read SN_EVENTS: %v", err)
		}
	}
	return ids
}

// simRecord is one record of the simulator as reconcile sees it.
type simRecord struct {
	msgID   string
	updated time.Time
}

// simRecords lists the simulator's incidents in (sys_updated_on, sys_id)
// order, each with the Nats-Msg-Id of its current version.
func simRecords(t *testing.T, sim *snsim.Server) []simRecord {
	t.Helper()
	var out []simRecord
	for _, id := range sim.IDs(recoverytest.Table) {
		rec, ok := sim.Get(recoverytest.Table, id)
		if !ok {
			t.Fatalf("simulator lists %s but has no record of it", id)
		}
		mc, err := strconv.ParseInt(rec["sys_mod_count"], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		updated, err := time.ParseInLocation(events.SNTimeLayout, rec["sys_updated_on"], time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		action := events.ActionUpdate
		if mc == 0 {
			action = events.ActionInsert
		}
		out = append(out, simRecord{msgID: events.MsgID(recoverytest.Table, id, mc, action), updated: updated})
	}
	return out
}

// checkEachVersionOnce fails unless SN_EVENTS holds each record's current
// version exactly once, and returns how many messages it holds.
func checkEachVersionOnce(t *testing.T, js jetstream.JetStream, recs []simRecord) int {
	t.Helper()
	ids := streamIDs(t, js)
	total := 0
	for id, n := range ids {
		total += n
		if n != 1 {
			t.Errorf("SN_EVENTS holds %s %d times, want once", id, n)
		}
	}
	missing := 0
	for _, rec := range recs {
		if ids[rec.msgID] == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of the simulator's %d record versions never reached SN_EVENTS", missing, len(recs))
	}
	return total
}

func TestReconcile_PassCutByADyingReplicaIsTakenOverOnce(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 14})
	// An import of 2,000 records (no business rule), 4 per second of
	// sys_updated_on: an 8-minute span, so A dies further into it than the
	// 2-minute overlap and B re-reads only part of what A published.
	const records, pageSize, diesAfter = 2000, 100, 10
	if err := env.Sim.SeedWith(records, snsim.SeedOptions{PerSecond: 4}); err != nil {
		t.Fatal(err)
	}
	recs := simRecords(t, env.Sim)
	const ttl = 2 * time.Second
	stopWatch := watchLease(t, env.Store.KV())

	// Replica A publishes 10 pages, 120 ms apart so its lease is renewed
	// (every third of the TTL) on the way, then dies mid-pass.
	dying := &dyingPager{Pager: &SNPager{Client: env.SN}, after: diesAfter, delay: 120 * time.Millisecond,
		dead: make(chan struct{}), thaw: make(chan struct{})}
	a := startReplica(t, env, dying, Config{Holder: "a", LeaseTTL: ttl, PageSize: pageSize})
	dying.die = a.nc.Close
	type result struct {
		sum Summary
		err error
	}
	aDone := make(chan result, 1)
	aStarted := time.Now()
	go func() {
		sum, err := a.r.Pass(context.Background(), recoverytest.Table, PassOptions{})
		aDone <- result{sum, err}
	}()
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			close(dying.thaw)
		}
	}
	defer thaw()

	// Replica B tries a pass every 100 ms: refused while A's lease lives.
	b := startReplica(t, env, &SNPager{Client: env.SN}, Config{Holder: "b", LeaseTTL: ttl, PageSize: pageSize})
	type attempt struct {
		start, end time.Time
		err        error
	}
	var (
		attempts []attempt
		sumB     Summary
	)
	deadline := time.Now().Add(15 * time.Second)
	for {
		start := time.Now()
		sum, err := b.r.Pass(t.Context(), recoverytest.Table, PassOptions{})
		attempts = append(attempts, attempt{start, time.Now(), err})
		if err == nil {
			sumB = sum
			break
		}
		if !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("replica B's pass failed other than by a held lease: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica B never took over within 15 s (A died: %v)", chanClosed(dying.dead))
		}
		time.Sleep(100 * time.Millisecond)
	}
	writes := stopWatch()
	if !chanClosed(dying.dead) {
		t.Fatalf("replica B's pass ran while replica A was alive and reconciling (after %d refusals)", len(attempts)-1)
	}
	thaw()
	resA := <-aDone
	if resA.err == nil {
		t.Fatal("replica A's cut pass reported success")
	}

	// The lease's story: A took it and renewed it; nobody wrote it between
	// A's last renewal and B's acquisition, at least a TTL later.
	var aWrites []leaseWrite
	var bAcquired, expiredAt time.Time
	for _, w := range writes {
		switch {
		case w.holder == "a":
			aWrites = append(aWrites, w)
		case w.holder == "b" && bAcquired.IsZero():
			bAcquired = w.at
		case w.op != jetstream.KeyValuePut && bAcquired.IsZero():
			expiredAt = w.at
		}
	}
	if len(aWrites) < 2 || bAcquired.IsZero() {
		t.Fatalf("lease writes %+v: want A's acquisition, at least one renewal, then B's", writes)
	}
	lastA := aWrites[len(aWrites)-1].at
	if !lastA.Before(dying.diedAt) {
		t.Fatalf("A's last lease write %v is after its death %v", lastA, dying.diedAt)
	}
	takeover := bAcquired.Sub(lastA)
	if takeover < ttl {
		t.Fatalf("B took the lease %v after A's last renewal, before its %v TTL ran out: two passes could overlap", takeover, ttl)
	}
	if takeover > ttl+time.Second {
		t.Fatalf("B took the lease %v after A's last renewal; want within the TTL (%v) and B's 100 ms retry, plus a little", takeover, ttl)
	}
	refusedAlive, refusedDead := 0, 0
	for _, at := range attempts[:len(attempts)-1] {
		if at.end.Before(dying.diedAt) {
			refusedAlive++
		} else if at.start.After(dying.diedAt) {
			refusedDead++
		}
	}
	if refusedAlive == 0 || refusedDead == 0 {
		t.Fatalf("B was refused %d times while A was alive and %d times after A died; want both, or the test proves nothing", refusedAlive, refusedDead)
	}

	// What A stored is in the stream once; B published the rest and found
	// what A had stored within its overlap as already in flight.
	sumA := resA.sum
	// (A keyset page holds its last second back for the next one: 90 rows.)
	if sumA.Pages != diesAfter || sumA.Gaps != sumA.Scanned || sumA.Gaps < diesAfter*pageSize*8/10 {
		t.Fatalf("A's cut pass = %+v; want %d pages of about %d rows, every row published", sumA, diesAfter, pageSize)
	}
	if want := sumA.Watermark.Add(-2 * time.Minute); !sumB.From.Equal(want) {
		t.Fatalf("B read from %v, want A's watermark %v minus the overlap: B must resume, not start over", sumB.From, sumA.Watermark)
	}
	reread := 0
	for _, rec := range recs[:sumA.Gaps] {
		if !rec.updated.Before(sumB.From) {
			reread++
		}
	}
	if sumB.Gaps != records-sumA.Gaps || sumB.InFlight != reread || sumB.UpToDate != 0 || sumB.Scanned != sumB.Gaps+sumB.InFlight {
		t.Fatalf("B's pass = %+v; want %d gaps (what A did not publish) and %d in flight (what A stored inside the overlap), %d scanned",
			sumB, records-sumA.Gaps, reread, sumB.Gaps+reread)
	}
	if n := checkEachVersionOnce(t, env.JS, recs); n != records {
		t.Fatalf("SN_EVENTS holds %d messages for %d record versions", n, records)
	}
	wm, _, err := (Store{KV: env.Store.KV()}).Watermark(t.Context(), recoverytest.Table)
	if newest := recs[len(recs)-1].updated; err != nil || !wm.Records.Equal(newest) || !sumB.Watermark.Equal(newest) {
		t.Fatalf("watermark = %v (%v), B's summary says %v; want the newest record's %v", wm.Records, err, sumB.Watermark, newest)
	}
	last, _, err := (Store{KV: env.Store.KV()}).LastPass(t.Context(), recoverytest.Table)
	if err != nil || last.Holder != "b" || last.Gaps != sumB.Gaps {
		t.Fatalf("stored pass summary = %+v (%v); want B's, A's cut pass never stored one", last, err)
	}
	expiry := "not seen"
	if !expiredAt.IsZero() {
		expiry = fmt.Sprintf("%v after the last renewal", expiredAt.Sub(lastA).Round(time.Millisecond))
	}
	t.Logf("A: %d pages, %d events, %d lease writes, died %v after starting; lease (TTL %v) expired %s; B refused %d times (%d while A lived), took the lease %v after A's last renewal (%v after its death); B's pass: %d gaps, %d in flight (duplicates the stream dropped), %d scanned from %v, %v",
		diesAfter, sumA.Gaps, len(aWrites), dying.diedAt.Sub(aStarted).Round(time.Millisecond), ttl, expiry,
		len(attempts)-1, refusedAlive, takeover.Round(time.Millisecond), bAcquired.Sub(dying.diedAt).Round(time.Millisecond),
		sumB.Gaps, sumB.InFlight, sumB.Scanned, sumB.From.Format(time.TimeOnly), sumB.Duration.Round(time.Millisecond))
}

func chanClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// scanLog records when each replica's record scans ran.
type scanLog struct {
	mu    sync.Mutex
	scans []scan
}

type scan struct {
	holder     string
	start, end time.Time
}

// loggedPager records each scan of a replica in log, each page delay
// apart, so a pass lasts long enough for the other replica to try.
type loggedPager struct {
	Pager
	holder string
	delay  time.Duration
	log    *scanLog
}

func (p *loggedPager) Scan(ctx context.Context, q Query, fn func([]events.Fields, int) error) error {
	start := time.Now()
	err := p.Pager.Scan(ctx, q, func(rows []events.Fields, total int) error {
		if err := fn(rows, total); err != nil {
			return err
		}
		time.Sleep(p.delay)
		return nil
	})
	p.log.mu.Lock()
	p.log.scans = append(p.log.scans, scan{p.holder, start, time.Now()})
	p.log.mu.Unlock()
	return err
}

func TestRun_TwoReplicasNeverReconcileATableAtOnceNorPublishTwice(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 41})
	if err := env.Sim.SeedWith(300, snsim.SeedOptions{PerSecond: 2}); err != nil {
		t.Fatal(err)
	}
	ids := env.Sim.IDs(recoverytest.Table)
	log := &scanLog{}
	start := func(holder string) *replica {
		return startReplica(t, env, &loggedPager{Pager: &SNPager{Client: env.SN}, holder: holder, delay: 20 * time.Millisecond, log: log},
			Config{Holder: holder, LeaseTTL: 2 * time.Second, PageSize: 30, Interval: 300 * time.Millisecond, SkipDeletes: true})
	}
	a, b := start("a"), start("b")
	runPasses := func() map[string]int {
		log.mu.Lock()
		defer log.mu.Unlock()
		n := map[string]int{}
		for _, s := range log.scans {
			n[s.holder]++
		}
		return n
	}

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, rep := range []*replica{a, b} {
		wg.Go(func() {
			if err := rep.r.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	// Changes whose webhooks never come, for 2 s while both replicas run,
	// then until each replica has run passes (at most 10 s in all).
	rng := rand.New(rand.NewPCG(41, 41))
	changes := 0
	began := time.Now()
	for {
		n := runPasses()
		if time.Since(began) > 2*time.Second && n["a"] >= 2 && n["b"] >= 2 {
			break
		}
		if time.Since(began) > 10*time.Second {
			cancel()
			wg.Wait()
			t.Fatalf("in 10 s replica a ran %d passes and b %d; want two each", n["a"], n["b"])
		}
		if time.Since(began) < 2*time.Second {
			id := ids[rng.IntN(len(ids))]
			if _, err := env.Sim.UpdateNoWorkflow(recoverytest.Table, id, map[string]string{"short_description": fmt.Sprintf("change %d", changes)}, human); err != nil {
				t.Fatal(err)
			}
			changes++
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	ran := runPasses()
	// A last pass catches the changes made while the last one ran.
	if _, err := a.r.Pass(t.Context(), recoverytest.Table, PassOptions{}); err != nil {
		t.Fatal(err)
	}

	log.mu.Lock()
	scans := slices.Clone(log.scans)
	log.mu.Unlock()
	slices.SortFunc(scans, func(x, y scan) int { return x.start.Compare(y.start) })
	for i, s := range scans {
		if i > 0 && s.start.Before(scans[i-1].end) {
			t.Errorf("%s's pass started %v before %s's ended: two replicas reconciled the table at once",
				s.holder, scans[i-1].end.Sub(s.start), scans[i-1].holder)
		}
	}
	skipped := a.passes("skipped") + b.passes("skipped")
	if skipped == 0 {
		t.Fatalf("passes: a %d, b %d, none refused for the lease; want the replicas to contend, or the test proves nothing", ran["a"], ran["b"])
	}
	recs := simRecords(t, env.Sim)
	published := a.gaps() + b.gaps()
	stored := checkEachVersionOnce(t, env.JS, recs)
	if published != stored {
		t.Fatalf("the passes counted %d events new to SN_EVENTS, which holds %d: a version was published as new twice", published, stored)
	}
	reread := 0
	for _, rep := range []*replica{a, b} {
		reread += int(testutil.ToFloat64(rep.r.m.scanned.WithLabelValues(recoverytest.Table))) - rep.gaps()
	}
	t.Logf("%d changes without webhooks; Run passes in %v: a %d, b %d, %d refused for the lease; %d events stored once each, %d re-reads the stream dropped as duplicates",
		changes, time.Since(began).Round(100*time.Millisecond), ran["a"], ran["b"], skipped, stored, reread)
}

func TestRun_TakesOverATableADeadReplicaHeldWithinTheLeaseNotAnIntervalLater(t *testing.T) {
	js, kv := setup(t)
	sn := &memTable{}
	sn.put("incident", events.Fields{"sys_id": sysID(1), "sys_mod_count": "0", "sys_updated_on": time.Now().UTC().Format(events.SNTimeLayout)})
	const ttl, interval = 4 * time.Second, 3 * time.Second // JetStream TTLs are whole seconds
	// A replica died mid-pass: its lease is never renewed nor released.
	if _, err := AcquireLease(t.Context(), js, kv, "incident", "dead", ttl); err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	reg := prometheus.NewRegistry()
	r, err := New(js, kv, sn, &memVersions{}, Config{Tables: []string{"incident"}, Holder: "b", Interval: interval, LeaseTTL: ttl, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Run's first pass comes an interval in, while the dead lease lives.
	deadline := held.Add(3 * interval)
	var sum Summary
	for {
		if s, ok, err := (Store{KV: kv}).LastPass(t.Context(), "incident"); err == nil && ok && s.Holder == "b" && s.Error == "" {
			sum = s
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Run did not pass within %v of a dead replica's lease (TTL %v)", 3*interval, ttl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	skipped := testutil.ToFloat64(r.m.passes.WithLabelValues("incident", "skipped"))
	if skipped == 0 {
		t.Fatalf("Run's first pass was not refused: it started %v after the dead lease was taken, the test needs it inside the %v TTL", sum.Started.Sub(held), ttl)
	}
	after := sum.Started.Sub(held)
	if after < ttl-100*time.Millisecond || after > ttl+time.Second {
		t.Fatalf("Run took the table over %v after a dead replica took its lease (TTL %v, interval %v, refused %v times); want within the TTL and a retry of a tenth of it, not the next interval",
			after, ttl, interval, skipped)
	}
	t.Logf("refused %v times, passed %v after the dead replica's lease was taken (TTL %v, interval %v)", skipped, after.Round(time.Millisecond), ttl, interval)
}
