package reconcile

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
)

const human = "beth.anglin"

func newSimReconciler(t *testing.T, env *recoverytest.Env, pager Pager, pageSize int) *Reconciler {
	t.Helper()
	if pager == nil {
		pager = &SNPager{Client: env.SN}
	}
	r, err := New(env.JS, env.Store.KV(), pager, env.Store, Config{
		Tables: []string{recoverytest.Table}, Fields: env.Mapping.Fields, PageSize: pageSize, Instance: "dev00000",
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func streamCount(t *testing.T, env *recoverytest.Env, stream string) uint64 {
	t.Helper()
	st, err := env.JS.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestReconcile_AfterLostWebhooksTheAppMatchesServiceNowAndASecondPassFindsNothing(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{DropRate: 0.2, Seed: 7})
	env.RunApply()
	rng := rand.New(rand.NewPCG(7, 7))

	// 2,000 changes by people in ServiceNow: 300 inserts, 1,650 updates,
	// 50 deletes; the business rule loses a fifth of their webhooks.
	var ids []string
	for i := range 300 {
		rec, err := env.Sim.Insert(recoverytest.Table, map[string]string{"short_description": fmt.Sprintf("Printer %d jammed", i), "impact": "2", "urgency": "2"}, human)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	for i := range 1650 {
		id := ids[rng.IntN(len(ids))]
		if _, err := env.Sim.Update(recoverytest.Table, id, map[string]string{"short_description": fmt.Sprintf("Printer jammed, update %d", i), "urgency": fmt.Sprint(1 + rng.IntN(3))}, human); err != nil {
			t.Fatal(err)
		}
	}
	var deleted []string
	for _, id := range ids[:50] {
		if err := env.Sim.Delete(recoverytest.Table, id, human); err != nil {
			t.Fatal(err)
		}
		deleted = append(deleted, id)
	}
	env.Settle()
	stats := env.Sim.WebhookStats()
	before := env.Mismatches(deleted)
	if stats.Dropped < 300 || len(before) == 0 {
		t.Fatalf("the test lost %d webhooks and the app differs in %d records; it needs lost webhooks to mean anything", stats.Dropped, len(before))
	}
	t.Logf("%d webhooks dropped of %d; the app differs from ServiceNow in %d places before reconcile", stats.Dropped, stats.Fired, len(before))

	// sys_audit_delete is hidden (least privilege): the deletes whose
	// webhook was lost are found by the presence scan, due at once on the
	// first pass.
	lostDeletes := 0
	for _, id := range deleted {
		if _, _, gone, err := env.Store.LastVersion(t.Context(), recoverytest.Table, id); err != nil {
			t.Fatal(err)
		} else if !gone {
			lostDeletes++
		}
	}
	r := newPresenceReconciler(t, env, nil, 24*time.Hour)
	sum, err := r.Pass(t.Context(), recoverytest.Table, PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pass 1: %+v", sum)
	if sum.Gaps == 0 || sum.Scanned != 250 || sum.DeleteScan != "presence" || sum.Deletes != lostDeletes || lostDeletes == 0 {
		t.Fatalf("pass 1 = %+v; want gaps, 250 records scanned and the %d lost deletes found by presence", sum, lostDeletes)
	}
	env.Settle()
	if diff := env.Mismatches(deleted); len(diff) > 0 {
		t.Fatalf("after one reconcile pass the app still differs from ServiceNow in %d places:\n%s", len(diff), strings.Join(diff[:min(len(diff), 20)], "\n"))
	}
	if _, repeated := env.SaaS.Deliveries(); len(repeated) > 0 {
		t.Fatalf("versions delivered to the app more than once: %v", repeated)
	}

	sum, err = r.Pass(t.Context(), recoverytest.Table, PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Gaps != 0 || sum.Deletes != 0 || sum.InFlight != 0 || sum.Presence != nil || !strings.HasPrefix(sum.DeleteScan, "hidden: sys_audit_delete") {
		t.Fatalf("pass 2 = %+v; want 0 gaps, 0 deletes, the presence scan not due and the hidden fast path said", sum)
	}
	last, _, err := (Store{KV: env.Store.KV()}).LastPass(t.Context(), recoverytest.Table)
	if err != nil || last.Gaps != 0 || last.Scanned == 0 {
		t.Fatalf("stored summary = %+v, %v", last, err)
	}
}

func TestReconcile_LateCommitInsideOverlapFoundOutsideMissed(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 3})
	env.RunApply()
	var ids []string
	for i := range 20 {
		rec, err := env.Sim.Insert(recoverytest.Table, map[string]string{"short_description": fmt.Sprintf("VPN %d", i)}, human)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	env.Settle()
	r := newSimReconciler(t, env, nil, 100)
	if _, err := r.Pass(t.Context(), recoverytest.Table, PassOptions{}); err != nil {
		t.Fatal(err)
	}
	wm, _, _ := (Store{KV: env.Store.KV()}).Watermark(t.Context(), recoverytest.Table)

	// Two long transactions commit now, stamped before the watermark, and
	// their webhooks never come (written like an import: no business rule).
	inside, outside := ids[3], ids[4]
	for id, back := range map[string]time.Duration{inside: time.Minute, outside: 10 * time.Minute} {
		if _, err := env.Sim.UpdateNoWorkflow(recoverytest.Table, id, map[string]string{"short_description": "committed late"}, human); err != nil {
			t.Fatal(err)
		}
		if err := env.Sim.SetUpdatedOn(recoverytest.Table, id, wm.Records.Add(-back)); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := r.Pass(t.Context(), recoverytest.Table, PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env.Settle()
	if got, _ := env.SaaS.Last(inside); sum.Gaps != 1 || got.Fields["title"] != "committed late" {
		t.Fatalf("late commit 1 min before the watermark (overlap 2 min): pass %+v, app has %+v; want it found", sum, got)
	}
	// The documented limit: a commit later than the overlap after its own
	// timestamp is not seen by incremental passes...
	if got, _ := env.SaaS.Last(outside); got.Fields["title"] == "committed late" {
		t.Fatalf("late commit 10 min before the watermark was found; the overlap limit in docs/operations.md is wrong")
	}
	// ...and a pass with --since reaching back far enough finds it.
	sum, err = r.Pass(t.Context(), recoverytest.Table, PassOptions{Since: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	env.Settle()
	if got, _ := env.SaaS.Last(outside); sum.Gaps != 1 || got.Fields["title"] != "committed late" {
		t.Fatalf("--since 1h: pass %+v, app has %+v; want the old late commit found", sum, got)
	}
}

// killingPager stops the pass after n pages, the way a killed process
// would: what the pages published stays, nothing after it happens.
type killingPager struct {
	Pager
	n      int
	cancel context.CancelFunc
}

func (k *killingPager) Scan(ctx context.Context, q Query, fn func([]events.Fields, int) error) error {
	pages := 0
	return k.Pager.Scan(ctx, q, func(rows []events.Fields, total int) error {
		if err := fn(rows, total); err != nil {
			return err
		}
		if pages++; pages == k.n {
			k.cancel()
			return context.Canceled
		}
		return nil
	})
}

func TestReconcile_KilledMidPassResumesFromTheWatermarkWithoutDuplicates(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 5})
	// An import: 600 records, 50 per second, no business rules at all.
	if err := env.Sim.Seed(600); err != nil {
		t.Fatal(err)
	}
	env.RunApply()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	dying := newSimReconciler(t, env, &killingPager{Pager: &SNPager{Client: env.SN}, n: 3, cancel: cancel}, 100)
	if _, err := dying.Pass(ctx, recoverytest.Table, PassOptions{}); err == nil {
		t.Fatal("the killed pass reported success")
	}
	wm, ok, err := (Store{KV: env.Store.KV()}).Watermark(t.Context(), recoverytest.Table)
	if err != nil || !ok {
		t.Fatalf("no watermark after 3 published pages: %v", err)
	}
	published := streamCount(t, env, "SN_EVENTS")
	if published == 0 || published >= 600 {
		t.Fatalf("the killed pass published %d events; want some, not all", published)
	}

	restarted := newSimReconciler(t, env, nil, 100)
	sum, err := restarted.Pass(t.Context(), recoverytest.Table, PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := wm.Records.Add(-2 * time.Minute); !sum.From.Equal(want) {
		t.Fatalf("restart read from %v, want the watermark %v minus the overlap", sum.From, wm.Records)
	}
	env.Settle()
	if diff := env.Mismatches(nil); len(diff) > 0 {
		t.Fatalf("after the resumed pass the app differs in %d places: %v", len(diff), diff[:min(5, len(diff))])
	}
	if n := streamCount(t, env, "SN_EVENTS"); n != 600 {
		t.Fatalf("SN_EVENTS holds %d events for 600 record versions", n)
	}
	total, repeated := env.SaaS.Deliveries()
	if total != 600 || len(repeated) > 0 {
		t.Fatalf("the app received %d deliveries (repeated: %v); want each of the 600 versions once", total, repeated)
	}
}
