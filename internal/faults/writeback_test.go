package faults

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// The writeback side: ServiceNow answering 429, 5xx, dropped connections,
// slow answers and answers lost after the write was committed, in storms
// (with a revoked token in the middle), while the app publishes creates and
// updates. Every change must be written exactly once -- one POST committed
// per new ticket and no second record, one new ServiceNow version per
// update (a PATCH whose answer was lost is retried with the same values,
// which ServiceNow takes as no change) -- or be dead-lettered with a reason.
func TestWriteback_StormsWriteEveryChangeOnce(t *testing.T) {
	sn := newSNFront(t)
	b := startBridge(t, "", sn.env())
	a := connectApp(t, b.NATSURL)

	const tickets = 40
	const versions = 3 // a create, then two updates
	title := func(i int, v int64) string { return fmt.Sprintf("storm TCK-W%d v%d", i, v) }
	ext := func(i int) string { return fmt.Sprintf("TCK-W%d", i) }

	sn.sim.SetBurstLimit(50)
	storm := snsim.Faults{ErrorRate: 0.12, CancelRate: 0.05, DropRate: 0.05, SemaphoreRate: 0.1, LatencyJitter: 30 * time.Millisecond}
	calm := snsim.Faults{LatencyJitter: 5 * time.Millisecond}
	// Six storms of 1.5 s with 0.5 s of calm between them, the token
	// revoked in the second calm; then calm until every change is done. The
	// storms end: a breaker trial during an endless storm can fail again and
	// again (30 s each), which says nothing about the writeback.
	const stormCycles = 6
	stop, stopped := make(chan struct{}), make(chan struct{})
	stormsEnd := make(chan time.Time, 1)
	go func() {
		defer close(stopped)
		defer func() {
			_ = sn.sim.SetFaults(snsim.Faults{})
			sn.setLoseAnswers(0)
		}()
		for cycle := range stormCycles {
			for _, phase := range []struct {
				f    snsim.Faults
				lose float64
				d    time.Duration
			}{{storm, 0.1, 1500 * time.Millisecond}, {calm, 0, 500 * time.Millisecond}} {
				if err := sn.sim.SetFaults(phase.f); err != nil {
					t.Error(err)
					return
				}
				sn.setLoseAnswers(phase.lose)
				if cycle == 1 && phase.lose == 0 {
					sn.sim.RevokeTokens() // the next call gets a 401 and a new token
				}
				select {
				case <-stop:
					return
				case <-time.After(phase.d):
				}
			}
		}
		stormsEnd <- time.Now()
	}()
	start := time.Now()
	for v := int64(1); v <= versions; v++ {
		for i := range tickets {
			a.publish(ext(i), v, map[string]string{"title": title(i, v), "status": "new"})
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The storms end 12 s in. A breaker opened by their last failures
	// pauses the writeback for 30 s, its trial then meets a calm instance;
	// a change that failed six times waits up to 16 s before its next try;
	// the rest is seconds of work, even for a race-built bridge on two busy
	// cores.
	a.waitWritebackIdle(90 * time.Second)
	close(stop)
	<-stopped
	took := time.Since(start)

	dead := map[string]string{} // app message id -> reason
	for _, m := range a.messages(events.StreamDLQ) {
		reason := m.Header.Get(events.HeaderDLQReason)
		if reason == "" {
			t.Errorf("dead letter %s has no %s header", m.Subject, events.HeaderDLQReason)
		}
		dead[m.Header.Get(events.HeaderDLQOrigMsgID)] = reason
	}
	records := sn.byCorrelation()
	for i := range tickets {
		if got := len(records[ext(i)]); got != 1 {
			t.Errorf("%s: %d incidents with its correlation_id, want exactly 1", ext(i), got)
		}
		if n := sn.written(func(w snWrite) bool { return w.Method == "POST" && w.Fields["correlation_id"] == ext(i) }); n != 1 {
			t.Errorf("%s: %d POSTs committed, want exactly 1", ext(i), n)
		}
		if len(records[ext(i)]) != 1 {
			continue
		}
		rec := records[ext(i)][0]
		deadVersions := 0
		for v := int64(1); v <= versions; v++ {
			want := title(i, v)
			n := sn.written(func(w snWrite) bool {
				return w.Fields["short_description"] == want && (w.Method == "POST" || w.SysID == rec["sys_id"])
			})
			if reason, dl := dead[events.AppMsgID("ticket", ext(i), v, events.AppUpsert)]; dl {
				deadVersions++
				t.Logf("%s v%d dead-lettered: %s", ext(i), v, reason)
			} else if n == 0 {
				t.Errorf("%s v%d: never written and not dead-lettered", ext(i), v)
			}
		}
		// One new version per update: none lost, none written twice.
		if got, want := rec["sys_mod_count"], fmt.Sprint(versions-1-deadVersions); got != want {
			t.Errorf("%s: sys_mod_count %s, want %s (one version per update written)", ext(i), got, want)
		}
		if got, want := rec["short_description"], title(i, versions); got != want && deadVersions == 0 {
			t.Errorf("%s: short_description %q, want the last version's %q", ext(i), got, want)
		}
	}
	st := sn.answers()
	lostPOSTs := 0
	sn.mu.Lock()
	for _, w := range sn.writes {
		if w.Method == "POST" && w.Status == answerLost {
			lostPOSTs++
		}
	}
	sn.mu.Unlock()
	t.Logf("%d creates committed with their answer lost, each found again by correlation_id (%d 'link restored' lines)",
		lostPOSTs, b.log.count(func(l logLine) bool { return l.Msg == "link restored from the link field" }))
	opened := b.log.count(func(l logLine) bool {
		return l.Msg == "servicenow circuit breaker" && strings.Contains(l.raw, `"to":"open"`)
	})
	during := "during the storms"
	select {
	case end := <-stormsEnd:
		during = fmt.Sprintf("%s after the storms ended", start.Add(took).Sub(end).Round(100*time.Millisecond))
	default:
	}
	t.Logf("%d changes in %s (done %s): Table API answers %v (0: dropped unhandled, -1: committed, answer lost), %d dead letters, %d tokens issued, breaker opened %d times",
		tickets*versions, took.Round(time.Millisecond), during, st, len(dead), sn.sim.TokensIssued(), opened)
	if st[429] == 0 || st[503] == 0 || st[0] == 0 || st[answerLost] == 0 {
		t.Errorf("the storm did not happen: %d × 429, %d × 503, %d dropped, %d answers lost", st[429], st[503], st[0], st[answerLost])
	}
	if sn.sim.TokensIssued() < 2 {
		t.Errorf("%d tokens issued, want a new one after the revocation", sn.sim.TokensIssued())
	}
}

// The bridge killed (kill -9 of the real binary) after ServiceNow has
// committed a create and an update and before the bridge heard either
// answer -- so neither the link (bridge_links), the writeback bookmark nor
// the dedupe cache knows of them -- then restarted on the same data dir:
// JetStream redelivers both changes (after the writeback's ack wait), and
// neither is written again. The create is found by its correlation_id
// before any POST, the update finds ServiceNow already holding its values.
//
// The first bridge runs with the default ack wait (1m), the restarted one
// with BRIDGE_WRITEBACK_ACK_WAIT=5s: the durable consumer is updated at
// start, and the two changes handed out under the old wait come back by
// the new one -- seconds after the restart, not a minute.
func TestWriteback_KilledMidWriteNotDuplicated(t *testing.T) {
	sn := newSNFront(t)
	b := startBridge(t, "", sn.env())
	a := connectApp(t, b.NATSURL)
	if got := writebackAckWait(t, a); got != time.Minute {
		t.Fatalf("the writeback consumer's ack wait is %s with the default settings, want 1m (BRIDGE_WRITEBACK_ACK_WAIT's default)", got)
	}

	// TCK-K2 exists and is linked before the kill.
	a.publish("TCK-K2", 1, map[string]string{"title": "k2 before", "status": "new"})
	a.waitWritebackIdle(30 * time.Second)
	k2 := sn.byCorrelation()["TCK-K2"]
	if len(k2) != 1 {
		t.Fatalf("TCK-K2: %d incidents, want 1", len(k2))
	}
	k2ID := k2[0]["sys_id"]

	// Both writes are committed, then the bridge dies before either answer.
	committed := make(chan snWrite, 2)
	killed := make(chan struct{})
	target := func(w snWrite) bool {
		return (w.Method == "POST" && w.Fields["correlation_id"] == "TCK-K1") ||
			(w.Method == "PATCH" && w.SysID == k2ID && w.Fields["short_description"] == "k2 after")
	}
	sn.setKill(func(w snWrite, done bool) bool {
		if !target(w) {
			return false
		}
		if done {
			committed <- w
			<-killed
		}
		return true
	})
	a.publish("TCK-K1", 1, map[string]string{"title": "k1 created", "status": "new"})
	a.publish("TCK-K2", 2, map[string]string{"title": "k2 after", "status": "in_progress"})
	for range 2 {
		select {
		case <-committed:
		case <-time.After(30 * time.Second):
			t.Fatalf("the writes did not reach ServiceNow within 30s:\n%s", b.log.tail(20))
		}
	}
	b.signal(syscall.SIGKILL)
	killedAt := time.Now()
	if code := b.wait(10 * time.Second); code != -int(syscall.SIGKILL) {
		t.Fatalf("exit status %d, want killed", code)
	}
	sn.setKill(nil)
	close(killed)

	const ackWait = 5 * time.Second
	env := sn.env()
	env["BRIDGE_WRITEBACK_ACK_WAIT"] = ackWait.String()
	b = startBridge(t, b.DataDir, env)
	restarted := time.Now()
	a = connectApp(t, b.NATSURL)
	// Redelivered ackWait after their delivery before the kill, then
	// written (or found written): well within 45s on a loaded 2-core
	// machine, and sooner than the old 1m wait could have.
	a.waitWritebackIdle(45 * time.Second)
	t.Logf("the changes in flight at the kill were handled %s after the kill, %s after the restarted bridge was serving (ack wait %s)",
		time.Since(killedAt).Round(100*time.Millisecond), time.Since(restarted).Round(100*time.Millisecond), ackWait)
	if got := writebackAckWait(t, a); got != ackWait {
		t.Errorf("the writeback consumer's ack wait is %s after a restart with BRIDGE_WRITEBACK_ACK_WAIT=%s, want the consumer updated to it", got, ackWait)
	}

	k1 := sn.byCorrelation()["TCK-K1"]
	if len(k1) != 1 {
		t.Fatalf("TCK-K1: %d incidents after the kill and restart, want exactly 1", len(k1))
	}
	if n := sn.written(func(w snWrite) bool { return w.Method == "POST" && w.Fields["correlation_id"] == "TCK-K1" }); n != 1 {
		t.Errorf("TCK-K1 was POSTed %d times with success, want once", n)
	}
	if n := sn.written(func(w snWrite) bool { return w.SysID == k2ID && w.Fields["short_description"] == "k2 after" }); n != 1 {
		t.Errorf("TCK-K2's update was PATCHed %d times with success, want once", n)
	}
	if rec, _ := sn.sim.Get("incident", k2ID); rec["short_description"] != "k2 after" || rec["state"] != "2" {
		t.Errorf("TCK-K2 holds %q state %s, want the update", rec["short_description"], rec["state"])
	}
	if d := a.messages(events.StreamDLQ); len(d) != 0 {
		t.Errorf("%d dead letters, want none: %s", len(d), d[0].Header.Get(events.HeaderDLQReason))
	}
	// The app still learns which record its ticket became.
	res := a.results()["TCK-K1"]
	if len(res) == 0 {
		t.Fatal("no result for TCK-K1")
	}
	last := res[len(res)-1]
	if last.SysID != k1[0]["sys_id"] || last.Number != k1[0]["number"] {
		t.Errorf("TCK-K1's result names %s %s, want the created %s %s", last.SysID, last.Number, k1[0]["sys_id"], k1[0]["number"])
	}
	t.Logf("TCK-K1's result after the restart: %s (%s)", last.Outcome, last.Number)
	if n := b.log.count(func(l logLine) bool { return l.Msg == "link restored from the link field" }); n != 1 {
		t.Errorf("%d 'link restored from the link field' lines after the restart, want 1 (the create found by correlation_id)", n)
	}
}

// writebackAckWait is the writeback consumer's ack wait as JetStream holds it.
func writebackAckWait(t *testing.T, a *app) time.Duration {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := a.js.Consumer(ctx, events.StreamApp, "writeback")
		cancel()
		if err == nil {
			return c.CachedInfo().Config.AckWait
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writeback consumer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
