package faults

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

const (
	// chaosChanges is the workload: random changes, each on one side.
	chaosChanges = 1000
	// chaosPerTable records of each table change at once in a round.
	chaosPerTable = 50
	// chaosLeaseTTL is BRIDGE_SYNC_LEASE_TTL: a killed owner's lease
	// expires this long after its last renewal.
	chaosLeaseTTL = 3 * time.Second
	// chaosAckWait is BRIDGE_WRITEBACK_ACK_WAIT: an app change the killed
	// owner was writing comes back to the new owner this long after it was
	// handed out.
	chaosAckWait = 5 * time.Second
	// chaosDownFor is how long the killed replica and the stopped NATS
	// node stay down: longer than the lease, so a survivor takes over.
	chaosDownFor = chaosLeaseTTL + 2*time.Second
)

// TestChaos_ThreeReplicasThreeNodes runs the 1,000-change mixed two-way
// workload of TestDev_NoEchoAmplification (incidents and change requests,
// each change on one side: the app publishing to app.<entity>.upsert and
// republishing every third version it is handed, a person editing in the
// simulator whose business rules post webhooks) against three `bridge
// serve` replicas on a three-node JetStream cluster with R3 streams. The
// webhooks reach the replicas through a load balancer that spreads them and
// retries the next replica on a transport error or a 503. One round in
// the middle, while its changes are in flight, the replica owning the sync
// (apply, writeback) is killed with SIGKILL and the NATS node leading
// SN_EVENTS is shut down; both come back on the same port and store a few
// seconds later.
//
// What must hold, as with one bridge: every webhook answered 202 is in
// SN_EVENTS once per version, every version the app gets is applied once,
// every app change is written to ServiceNow exactly once (0 dead letters),
// nothing loops (the app gets exactly the people's changes and the writes
// not claimed as its own, except that writes the killed owner made without
// finishing may reach it once), both sides are equal at the end, no
// durable consumer has anything pending or unacknowledged, and exactly one
// replica owns the sync. The fail-over gap is logged.
//
// About 1 minute under -race on 2 cores. NOWBRIDGE_FAULTS_SOAK=10m keeps
// the rounds going that long, killing the owner and a stream leader every
// eighth round.
func TestChaos_ThreeReplicasThreeNodes(t *testing.T) {
	began := time.Now()
	r := newChaosRun(t)
	r.startReplicas()
	r.createRecords()

	soak := loadFor(t, 0)
	rounds := (chaosChanges + len(r.recs) - 1) / len(r.recs)
	chaosEvery := rounds + 1 // once, a third of the way in
	if soak > 0 {
		chaosEvery = 8
	}
	for round := 0; ; round++ {
		chaos := round == rounds/3 || soak > 0 && round%chaosEvery == chaosEvery-1
		r.round(round, chaos)
		if soak > 0 && time.Since(began) < soak {
			continue
		}
		if r.changes >= chaosChanges && r.kills > 0 {
			break
		}
	}

	// Quiet means quiet: nothing more may happen.
	writes := r.sn.written(func(snWrite) bool { return true })
	applied, published := r.app.counts()
	time.Sleep(500 * time.Millisecond)
	if err := r.app.drain(r.sn, 30*time.Second); err != nil {
		t.Fatalf("after the last round: %v", err)
	}
	w2 := r.sn.written(func(snWrite) bool { return true })
	a2, p2 := r.app.counts()
	if w2 != writes || a2 != applied || p2 != published {
		t.Errorf("after the last round, with nothing changing: %d more ServiceNow writes, %d more apply messages, %d more app messages: a loop",
			w2-writes, a2-applied, p2-published)
	}

	r.checkWebhooksStoredOnce()
	r.checkAppliedOnce()
	r.checkAppChangesHandled()
	r.checkSidesEqual()
	r.checkNothingPending()
	if owners, report := r.settledOwners(); len(owners) != 1 {
		t.Errorf("at the end %d replicas report bridge_sync_owner=1, want exactly one:%s", len(owners), report)
	}
	if r.unclaimed*10 > float64(r.appChanges) {
		t.Errorf("%g of %d app writes not claimed as the app's own: the echo claim hardly worked", r.unclaimed, r.appChanges)
	}
	t.Logf("%d changes over %d records in %d rounds (%d app, %d human), %d kills: %d ServiceNow writes, %d apply messages (%g for writes not claimed, %d extra after kills), %d app messages (echoes included); webhooks: %s; a round without a kill took %s (median), %s at most; wall time %s",
		r.changes, len(r.recs), r.rounds, r.appChanges, r.humanChanges, r.kills, w2, a2, r.unclaimed, r.extraApplied, p2, r.lb,
		percentile(r.took, 0.5).Round(10*time.Millisecond), percentile(r.took, 1).Round(10*time.Millisecond), time.Since(began).Round(100*time.Millisecond))
}

// chaosRun is the chaos test's system and what it did to it.
type chaosRun struct {
	t        *testing.T
	ctx      context.Context
	cl       *natsCluster
	sn       *snFront
	lb       *webhookLB
	env      map[string]string
	replicas []*bridge
	app      *chaosApp
	mapping  *mapping.Set
	rng      *rand.Rand
	recs     []chaosRecord
	bySysID  map[string]int   // table/sys_id -> index in recs
	reported map[*bridge]bool // replicas that stopped by themselves, reported

	rounds, changes, appChanges, humanChanges, kills int
	human                                            []humanVersion
	unclaimed                                        float64         // writes not claimed, as far as the replicas alive at each round's end counted
	extraApplied                                     int             // apply messages after kills beyond the people's changes and the writes not claimed
	took                                             []time.Duration // each round without a kill, from its first change until everything was done
}

// chaosRecord is one record of the workload, the same on both sides.
type chaosRecord struct {
	*chaosTable
	key, ext, sysID string
}

// humanVersion is a version a person made in ServiceNow.
type humanVersion struct {
	table, sysID string
	version      int64
}

func newChaosRun(t *testing.T) *chaosRun {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	r := &chaosRun{t: t, ctx: ctx, cl: runNATSCluster(t), sn: newSNFront(t), lb: newWebhookLB(t),
		rng: rand.New(rand.NewPCG(7, 11)), bySysID: map[string]int{}, reported: map[*bridge]bool{}}
	fields := map[string][]string{}
	var tables []string
	for _, tb := range chaosTables {
		fields[tb.table] = snsim.DefaultWebhookFields[tb.table]
		tables = append(tables, tb.table)
	}
	if err := r.sn.sim.SetWebhooks(snsim.WebhookTarget{URL: r.lb.URL + inbound.Path, Secrets: []webhook.Secret{secretOld}}); err != nil {
		t.Fatal(err)
	}
	if err := r.sn.sim.SetWebhookOptions(snsim.WebhookOptions{Fields: fields}); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.mapping, err = mapping.Load(nil, tables, nil); err != nil {
		t.Fatal(err)
	}
	r.env = r.sn.env()
	maps.Copy(r.env, map[string]string{
		"BRIDGE_NATS_URL":                 r.cl.URL,
		"BRIDGE_STREAM_REPLICAS":          "3",
		"BRIDGE_TABLES":                   strings.Join(tables, ","),
		"BRIDGE_SYNC_LEASE_TTL":           chaosLeaseTTL.String(),
		"BRIDGE_WRITEBACK_ACK_WAIT":       chaosAckWait.String(),
		"BRIDGE_WRITEBACK_HANDOVER_GRACE": "20ms", // as TestDev_NoEchoAmplification: the echo claim is tested, not skipped
		// A webhook whose stream is electing a leader is answered 503 in
		// 2 s, and the load balancer tries the next replica well within
		// the business rule's 10 s.
		"BRIDGE_PUBLISH_TIMEOUT": "2s",
	})
	return r
}

// startReplicas starts three bridges: the first alone (it creates the
// streams), then the other two at once.
func (r *chaosRun) startReplicas() {
	r.t.Helper()
	start := time.Now()
	r.replicas = []*bridge{startBridge(r.t, "", r.env)}
	more := []*bridge{launchBridge(r.t, "", r.env), launchBridge(r.t, "", r.env)}
	for _, b := range more {
		b.awaitServing()
	}
	r.replicas = append(r.replicas, more...)
	var urls []string
	for _, b := range r.replicas {
		urls = append(urls, b.URL)
	}
	r.lb.setTargets(urls...)
	r.app = startChaosApp(r.ctx, r.t, r.cl.URL)
	r.t.Logf("3 NATS nodes and 3 bridges (race %v) serving in %s", raceEnabled, time.Since(start).Round(100*time.Millisecond))
}

// createRecords has the app create every record: one POST each, linked
// by correlation_id.
func (r *chaosRun) createRecords() {
	t := r.t
	un := r.unclaimedNow()
	for i := range chaosTables {
		tb := &chaosTables[i]
		for n := range chaosPerTable {
			ext := fmt.Sprintf("%s-%04d", tb.prefix, n)
			rec := chaosRecord{chaosTable: tb, key: tb.entity + "/" + ext, ext: ext}
			r.app.mu.Lock()
			r.app.records[rec.key] = maps.Clone(tb.initial)
			r.app.records[rec.key]["title"] = tb.entity + " " + ext
			r.app.mu.Unlock()
			r.app.publish(rec.key)
			r.recs = append(r.recs, rec)
		}
	}
	if err := r.app.drain(r.sn, 60*time.Second); err != nil {
		t.Fatalf("the app's creates: %v", err)
	}
	for i := range r.recs {
		rec := &r.recs[i]
		found := r.sn.byCorrelationIn(rec.table)[rec.ext]
		if len(found) != 1 {
			t.Fatalf("%s: %d %s records with its correlation_id, want exactly 1", rec.key, len(found), rec.table)
		}
		if n := r.sn.written(func(w snWrite) bool {
			return w.Method == "POST" && w.Table == rec.table && w.Fields["correlation_id"] == rec.ext
		}); n != 1 {
			t.Errorf("%s: %d POSTs committed, want exactly 1", rec.key, n)
		}
		rec.sysID = found[0]["sys_id"]
		r.bySysID[rec.table+"/"+rec.sysID] = i
	}
	unclaimed := r.unclaimedSince(un)
	r.unclaimed += unclaimed
	if applied, _ := r.app.counts(); float64(applied) != unclaimed {
		t.Errorf("after the creates the app got %d apply messages for its records, want %g (the creates not claimed as its own)", applied, unclaimed)
	}
}

// round changes every record once, each on one side, and waits until
// nothing is in flight; with chaos it kills the sync owner and stops the
// NATS node leading SN_EVENTS halfway through, and starts both again
// chaosDownFor later.
func (r *chaosRun) round(round int, chaos bool) {
	t := r.t
	r.rounds++
	began := time.Now()
	r.sn.mu.Lock()
	firstWrite := len(r.sn.writes)
	r.sn.mu.Unlock()
	applied0, _ := r.app.counts()
	un := r.unclaimedNow()
	appEdited := map[int]bool{}
	var log []string
	change := func(i int) {
		rec := r.recs[i]
		if r.rng.IntN(2) == 0 {
			r.app.mu.Lock()
			rec.appEdit(r.rng, r.app.records[rec.key])
			log = append(log, fmt.Sprintf("app %s %v", rec.key, r.app.records[rec.key]))
			r.app.mu.Unlock()
			r.app.publish(rec.key)
			appEdited[i] = true
			r.appChanges++
		} else {
			cur, _ := r.sn.sim.Get(rec.table, rec.sysID)
			f := rec.personEdit(r.rng, cur)
			got, err := r.sn.sim.Update(rec.table, rec.sysID, f, "beth.anglin")
			if err != nil {
				t.Fatal(err)
			}
			mc, err := strconv.ParseInt(got["sys_mod_count"], 10, 64)
			if err != nil {
				t.Fatalf("%s: sys_mod_count %q", rec.key, got["sys_mod_count"])
			}
			r.human = append(r.human, humanVersion{rec.table, rec.sysID, mc})
			log = append(log, fmt.Sprintf("human %s %v -> v%d", rec.key, f, mc))
			r.humanChanges++
		}
		r.changes++
	}
	order := r.rng.Perm(len(r.recs))
	humanBefore := r.humanChanges
	var killedAt time.Time
	var killed *bridge
	drainFor := 30 * time.Second
	if !chaos {
		for _, i := range order {
			change(i)
		}
	} else {
		half := len(order) / 2
		for _, i := range order[:half] {
			change(i)
		}
		time.Sleep(150 * time.Millisecond) // the first half in flight
		killed, killedAt = r.killOwnerAndLeader(round)
		for _, i := range order[half:] {
			change(i)
		}
		time.Sleep(time.Until(killedAt.Add(chaosDownFor)))
		r.restart(killed)
		// The app changes the killed owner held come back after the
		// writeback's ack wait, the SN events it held after the apply's.
		drainFor = 90 * time.Second
	}
	err := r.app.drain(r.sn, drainFor)
	r.checkNoneExited(round)
	if err != nil {
		t.Fatalf("round %d: %v\nits changes: %s\nreplicas:%s", round, err, clip(log, 60), r.ownerReport())
	}
	if chaos {
		t.Logf("round %d: everything done %s after the kill", round, time.Since(killedAt).Round(10*time.Millisecond))
	} else {
		r.took = append(r.took, time.Since(began))
	}

	// Every app change is exactly one ServiceNow write; nothing else is.
	r.sn.mu.Lock()
	writes := slices.Clone(r.sn.writes[firstWrite:])
	r.sn.mu.Unlock()
	perRecord := map[int]int{}
	byRecord := map[int][]snWrite{}
	for _, w := range writes {
		if !w.committed() {
			continue
		}
		i, ok := r.bySysID[w.Table+"/"+w.SysID]
		if w.Method == "POST" || !ok {
			t.Errorf("round %d: a %s to %s %s %v, which no change of the round asked for", round, w.Method, w.Table, w.SysID, w.Fields)
			continue
		}
		perRecord[i]++
		byRecord[i] = append(byRecord[i], w)
	}
	var wrong []string
	for i, rec := range r.recs {
		want := 0
		if appEdited[i] {
			want = 1
		}
		if got := perRecord[i]; got != want {
			wrong = append(wrong, fmt.Sprintf("%s written %d times, want %d (the app changed it: %v)%s", rec.key, got, want, appEdited[i], r.describe(rec, byRecord[i], began, killedAt)))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("round %d: %d records not written to ServiceNow once per app change: %s\nthe round's changes: %s", round, len(wrong), clip(wrong, 10), clip(log, 200))
	}

	// No echo: the app gets the people's changes and the writes not
	// claimed as its own, nothing else. A write the killed owner made
	// without finishing is not claimed either, and may reach the app once.
	humans := r.humanChanges - humanBefore
	unclaimed := r.unclaimedSince(un)
	r.unclaimed += unclaimed
	applied1, _ := r.app.counts()
	applied := applied1 - applied0
	want := humans + int(unclaimed)
	switch {
	case !chaos && applied != want:
		t.Errorf("round %d: the app got %d apply messages, want %d (%d people's changes + %g writes not claimed as the app's own)\nits changes: %s\nits apply messages: %s",
			round, applied, want, humans, unclaimed, clip(log, 60), clip(r.app.since(applied0), 60))
	case chaos && (applied < want || applied > want+len(appEdited)):
		t.Errorf("round %d (a kill): the app got %d apply messages, want %d (%d people's changes + %g writes not claimed as the app's own) plus at most one for each of the round's %d app changes\nits changes: %s\nits apply messages: %s",
			round, applied, want, humans, unclaimed, len(appEdited), clip(log, 60), clip(r.app.since(applied0), 60))
	case chaos:
		r.extraApplied += applied - want
	}
	if chaos {
		r.logFailover(killedAt)
	}
}

// describe lists a record's writes of a round (when, by which token, the
// answer, what was sent) and its change in the round.
func (r *chaosRun) describe(rec chaosRecord, writes []snWrite, began, killedAt time.Time) string {
	out := ""
	for _, w := range writes {
		at := "+" + w.At.Sub(began).Round(time.Millisecond).String() + " into the round"
		if !killedAt.IsZero() {
			at += ", " + w.At.Sub(killedAt).Round(time.Millisecond).String() + " from the kill"
		}
		out += fmt.Sprintf("\n\t\t%s %s by token …%s answered %d: %v", w.Method, at, w.Token, w.Status, w.Fields)
	}
	r.app.mu.Lock()
	defer r.app.mu.Unlock()
	for _, m := range r.app.received {
		if m.key == rec.key && !m.stored.Before(began) {
			out += fmt.Sprintf("\n\t\tapplied %s %v", m.id, m.fields)
		}
	}
	return out
}

// killOwnerAndLeader kills the replica owning the sync with SIGKILL and
// shuts down the NATS node leading SN_EVENTS.
func (r *chaosRun) killOwnerAndLeader(round int) (*bridge, time.Time) {
	t := r.t
	t.Helper()
	owner := r.awaitOwner()
	leader := r.cl.leaderOf(r.app.js, events.StreamSN)
	b := r.replicas[owner]
	b.signal(syscall.SIGKILL)
	killedAt := time.Now()
	r.cl.shutdown(leader)
	if code := b.wait(10 * time.Second); code != -int(syscall.SIGKILL) {
		t.Fatalf("the owner exited with %d, want killed", code)
	}
	r.kills++
	t.Logf("round %d: killed replica %d (the sync owner) and stopped NATS node %d (SN_EVENTS' leader)", round, owner, leader)
	return b, killedAt
}

// restart starts every stopped NATS node and the killed bridge again, on
// the same port and store.
func (r *chaosRun) restart(killed *bridge) {
	t := r.t
	t.Helper()
	for i, n := range r.cl.nodes {
		if !n.Running() {
			r.cl.restart(i)
		}
	}
	i := slices.Index(r.replicas, killed)
	env := maps.Clone(r.env)
	env["BRIDGE_LISTEN"] = strings.TrimPrefix(killed.URL, "http://")
	// As an orchestrator would: a replica that exits at start (its streams
	// could not be checked while the restarted node rejoins) is started
	// again a second later. A crash is never the way to refuse a start.
	for attempt := 1; ; attempt++ {
		b := launchBridge(t, killed.DataDir, env)
		err := b.serving(60 * time.Second)
		if err == nil {
			if b.URL != killed.URL {
				t.Fatalf("the restarted replica listens on %s, want %s", b.URL, killed.URL)
			}
			r.replicas[i] = b
			return
		}
		out := b.log.tail(30)
		if strings.Contains(out, "panic:") {
			t.Errorf("the restarted replica crashed at start instead of saying why it cannot start:\n%s", out)
		}
		select {
		case <-b.exited:
		default:
			t.Fatalf("the restarted replica did not start: %v\n%s", err, out)
		}
		if attempt == 3 {
			t.Fatalf("the restarted replica did not start in %d attempts: %v\n%s", attempt, err, out)
		}
		t.Logf("the restarted replica exited at start (attempt %d): %v; starting it again in 1 s\n%s", attempt, err, b.log.tail(3))
		time.Sleep(time.Second)
	}
}

// logFailover logs how long the sync had no owner after the kill: until a
// replica logged that it acquired it, until the app got the first message
// it applied and until ServiceNow got its first write.
func (r *chaosRun) logFailover(killedAt time.Time) {
	t := r.t
	var acquired time.Time
	who := -1
	for i, b := range r.replicas {
		l, ok := b.log.find(func(l logLine) bool {
			return strings.HasPrefix(l.Msg, "sync ownership acquired") && l.Time.After(killedAt)
		})
		if ok && (acquired.IsZero() || l.Time.Before(acquired)) {
			acquired, who = l.Time, i
		}
	}
	if acquired.IsZero() {
		t.Errorf("no replica logged 'sync ownership acquired' after the owner was killed (the round drained, so someone did the work):%s", r.ownerReport())
		return
	}
	gap := acquired.Sub(killedAt)
	msg := fmt.Sprintf("fail-over: replica %d acquired the sync %s after the kill (lease TTL %s)", who, gap.Round(10*time.Millisecond), chaosLeaseTTL)
	r.app.mu.Lock()
	var firstApply time.Time
	for _, m := range r.app.received {
		if !m.stored.Before(acquired) && (firstApply.IsZero() || m.stored.Before(firstApply)) {
			firstApply = m.stored
		}
	}
	r.app.mu.Unlock()
	if !firstApply.IsZero() {
		msg += fmt.Sprintf(", its first apply message %s after", firstApply.Sub(killedAt).Round(10*time.Millisecond))
	}
	r.sn.mu.Lock()
	for _, w := range r.sn.writes {
		if !w.At.Before(acquired) {
			msg += fmt.Sprintf(", its first ServiceNow write %s after", w.At.Sub(killedAt).Round(10*time.Millisecond))
			break
		}
	}
	r.sn.mu.Unlock()
	t.Log(msg)
	// The lease expires TTL after its last renewal (at most TTL/4 before
	// the kill) and a standby tries every TTL/10: within the TTL and a
	// poll. A second more for a race-built replica on a busy machine,
	// whose bridge_state stream may be electing a leader too, having lost
	// a node at the same moment.
	if limit := chaosLeaseTTL + 2*time.Second; gap > limit {
		t.Errorf("the sync had no owner for %s after the owner was killed, want within %s (lease TTL %s)", gap, limit, chaosLeaseTTL)
	}
}

// checkNoneExited: no replica stopped by itself (a kill replaces the
// killed one before the round drains).
func (r *chaosRun) checkNoneExited(round int) {
	for i, b := range r.replicas {
		select {
		case <-b.exited:
		default:
			continue
		}
		if r.reported[b] {
			continue
		}
		r.reported[b] = true
		why, _ := b.log.find(func(l logLine) bool { return l.Level == "ERROR" || strings.HasPrefix(l.raw, "panic:") })
		r.t.Errorf("round %d: replica %d stopped by itself (nothing killed it): %s\n%s", round, i, why.raw, b.log.tail(5))
	}
}

// owners are the replicas reporting bridge_sync_owner=1, and what each
// reported.
func (r *chaosRun) owners() (owners []int, report string) {
	for i, b := range r.replicas {
		select {
		case <-b.exited:
			report += fmt.Sprintf(" replica %d: down;", i)
			continue
		default:
		}
		v, n := b.metricSum("bridge_sync_owner")
		if n == 0 {
			report += fmt.Sprintf(" replica %d: no bridge_sync_owner on /metrics;", i)
			continue
		}
		report += fmt.Sprintf(" replica %d: bridge_sync_owner %g;", i, v)
		if v == 1 {
			owners = append(owners, i)
		}
	}
	return owners, report
}

func (r *chaosRun) ownerReport() string {
	_, report := r.owners()
	return report
}

// awaitOwner is the one replica owning the sync.
func (r *chaosRun) awaitOwner() int {
	r.t.Helper()
	owners, report := r.settledOwners()
	if len(owners) != 1 {
		r.t.Fatalf("%d replicas report bridge_sync_owner=1, want exactly one:%s", len(owners), report)
	}
	return owners[0]
}

// settledOwners are the replicas owning the sync once exactly one does, or
// after twice the lease's TTL.
func (r *chaosRun) settledOwners() (owners []int, report string) {
	deadline := time.Now().Add(2 * chaosLeaseTTL)
	for {
		owners, report = r.owners()
		if len(owners) == 1 || time.Now().After(deadline) {
			return owners, report
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// unclaimedNow is bridge_writeback_unclaimed_total of each running replica.
func (r *chaosRun) unclaimedNow() map[*bridge]float64 {
	out := map[*bridge]float64{}
	for _, b := range r.replicas {
		select {
		case <-b.exited:
		default:
			out[b], _ = b.metricSum("bridge_writeback_unclaimed_total")
		}
	}
	return out
}

// unclaimedSince is how many writes the running replicas did not claim
// since then (a replica started since counts from 0; a killed one's count
// is lost).
func (r *chaosRun) unclaimedSince(then map[*bridge]float64) float64 {
	sum := 0.0
	for b, v := range r.unclaimedNow() {
		sum += v - then[b]
	}
	return sum
}

// since lists the apply messages the app got from the n-th on.
func (ca *chaosApp) since(n int) []string {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	var out []string
	for _, m := range ca.received[min(n, len(ca.received)):] {
		out = append(out, fmt.Sprintf("%s %s %v", m.key, m.id, m.fields))
	}
	return out
}

// checkWebhooksStoredOnce: every webhook answered 202 (not as an echo) is
// in SN_EVENTS exactly once, every webhook was answered 202 (ServiceNow
// does not send one again), and every person's version is stored once.
func (r *chaosRun) checkWebhooksStoredOnce() {
	t := r.t
	stored := storedIDs(t, r.cl.URL)
	bad := 0
	for id, a := range r.lb.answers() {
		switch {
		case a.Status != 202:
			t.Errorf("webhook %s: the business rule got %d after the load balancer tried every replica for 8 s; ServiceNow never sends it again", id, a.Status)
			bad++
		case a.Accepted+a.Duplicates > 0 && stored[id] != 1:
			t.Errorf("webhook %s was answered 202 (%d accepted, %d duplicates) by replica %d and is stored %d times in SN_EVENTS, want exactly once", id, a.Accepted, a.Duplicates, a.Replica, stored[id])
			bad++
		case a.Echoes > 0 && stored[id] > 1:
			t.Errorf("webhook %s was answered as an echo and is stored %d times in SN_EVENTS, want at most once", id, stored[id])
			bad++
		}
		if bad >= 10 {
			t.Fatal("and more")
		}
	}
	for id, n := range stored {
		if n > 1 {
			t.Errorf("%s is stored %d times in SN_EVENTS", id, n)
		}
	}
	for _, h := range r.human {
		if id := events.MsgID(h.table, h.sysID, h.version, events.ActionUpdate); stored[id] != 1 {
			t.Errorf("a person's change %s is stored %d times in SN_EVENTS, want exactly once (the load balancer's answer: %+v)", id, stored[id], r.lb.answers()[id])
		}
	}
}

// checkAppliedOnce: no version of a record is in BRIDGE_APPLY twice, and
// every person's version reached the app exactly once.
func (r *chaosRun) checkAppliedOnce() {
	t := r.t
	byVersion := map[string]int{}
	for id, n := range streamMsgIDs(t, r.cl.URL, events.StreamApply) {
		if i := strings.LastIndexByte(id, ':'); i > 0 {
			byVersion[id[:i]] += n // <table>:<sys_id>:<version>
		}
	}
	for v, n := range byVersion {
		if n > 1 {
			t.Errorf("version %s is in BRIDGE_APPLY %d times, want once", v, n)
		}
	}
	got := map[string]int{}
	r.app.mu.Lock()
	for _, m := range r.app.received {
		got[m.id]++
	}
	r.app.mu.Unlock()
	for _, h := range r.human {
		id := events.ApplyMsgID(h.table, h.sysID, h.version, events.ActionUpdate)
		if byVersion[strings.TrimSuffix(id, ":"+events.ActionUpdate)] != 1 || got[id] != 1 {
			t.Errorf("a person's change %s: %d times in BRIDGE_APPLY, the app got it %d times; want once each", id, byVersion[strings.TrimSuffix(id, ":"+events.ActionUpdate)], got[id])
		}
	}
}

// checkAppChangesHandled: every app change has exactly one final result,
// and nothing was dead-lettered.
func (r *chaosRun) checkAppChangesHandled() {
	t := r.t
	for _, m := range r.app.messages(events.StreamDLQ) {
		t.Errorf("dead letter %s (%s): %s", m.Subject, m.Header.Get(events.HeaderDLQOrigMsgID), m.Header.Get(events.HeaderDLQReason))
	}
	final := map[string][]string{}
	outcomes := map[string]int{}
	for ext, rs := range r.app.results() {
		for _, res := range rs {
			outcomes[res.Outcome]++
			if res.Outcome != events.OutcomeRetrying {
				id := events.AppMsgID(res.Entity, ext, res.Version, events.AppUpsert)
				final[id] = append(final[id], res.Outcome)
			}
		}
	}
	r.app.mu.Lock()
	sent := slices.Clone(r.app.sent)
	r.app.mu.Unlock()
	for _, id := range sent {
		if len(final[id]) != 1 {
			t.Errorf("app change %s has %d final results %v, want exactly one", id, len(final[id]), final[id])
		}
	}
	t.Logf("results of %d app changes: %v", len(sent), outcomes)
}

// checkSidesEqual: every record holds the same values on both sides.
func (r *chaosRun) checkSidesEqual() {
	t := r.t
	r.app.mu.Lock()
	defer r.app.mu.Unlock()
	for _, rec := range r.recs {
		tbl, ok := r.mapping.ForEntity(rec.entity)
		if !ok {
			t.Fatalf("no mapping of %s", rec.entity)
		}
		sn, _ := r.sn.sim.Get(rec.table, rec.sysID)
		fields, _, _ := tbl.ToSaaS(sn)
		for _, f := range rec.compare {
			if fields[f] != r.app.records[rec.key][f] {
				t.Errorf("%s.%s: ServiceNow %q, app %q", rec.key, f, fields[f], r.app.records[rec.key][f])
			}
		}
	}
}

// checkNothingPending: no durable consumer of any stream has a message
// pending or unacknowledged.
func (r *chaosRun) checkNothingPending() {
	t := r.t
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	names := r.app.js.StreamNames(ctx)
	durables := 0
	for name := range names.Name() {
		s, err := r.app.js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		list := s.ListConsumers(ctx)
		for ci := range list.Info() {
			if ci.Config.Durable == "" {
				continue
			}
			durables++
			if ci.NumPending > 0 || ci.NumAckPending > 0 {
				t.Errorf("durable consumer %s on %s: %d pending, %d unacknowledged, want none", ci.Name, name, ci.NumPending, ci.NumAckPending)
			}
		}
		if err := list.Err(); err != nil {
			t.Fatalf("consumers of %s: %v", name, err)
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	if durables < 2 {
		t.Errorf("%d durable consumers, want at least apply's and the writeback's", durables)
	}
}

// clip joins at most n lines of a list, saying how many it left out.
func clip(list []string, n int) string {
	if len(list) <= n {
		return "\n\t" + strings.Join(list, "\n\t")
	}
	return "\n\t" + strings.Join(list[:n], "\n\t") + fmt.Sprintf("\n\t(and %d more)", len(list)-n)
}
