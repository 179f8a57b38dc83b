package replay

import (
	"fmt"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
)

func TestReplay_GuardSkipsWhatIsAppliedForceReappliesAllIncludingDeletes(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 11})
	runner := env.RunApply()
	var ids []string
	for i := range 30 {
		rec, err := env.Sim.Insert(recoverytest.Table, map[string]string{"short_description": fmt.Sprintf("Disk %d full", i)}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	for i, id := range ids[:20] {
		if _, err := env.Sim.Update(recoverytest.Table, id, map[string]string{"short_description": fmt.Sprintf("Disk %d cleaned", i)}, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids[25:] {
		if err := env.Sim.Delete(recoverytest.Table, id, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	env.Settle()
	delivered, _ := env.SaaS.Deliveries()
	if delivered != 55 {
		t.Fatalf("the app got %d deliveries before the replay, want 55 (30 inserts, 20 updates, 5 deletes)", delivered)
	}
	h := Apply{R: runner}
	sel := Selection{Stream: events.StreamSN, Name: recoverytest.Table, Since: time.Now().Add(-time.Hour)}
	ctx := t.Context()

	dry, err := Run(ctx, env.JS, sel, h, Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Selected != 55 || dry.Skip != 55 || dry.Apply != 0 {
		t.Fatalf("dry run = %d selected, %d would apply, %d would skip; want all 55 skipped by the guard", dry.Selected, dry.Apply, dry.Skip)
	}
	sum, err := Run(ctx, env.JS, sel, h, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := env.SaaS.Deliveries(); sum.Applied != 0 || sum.Skipped != 55 || n != 55 {
		t.Fatalf("replay = %d applied, %d skipped, the app got %d deliveries; want nothing re-applied", sum.Applied, sum.Skipped, n)
	}

	// The app lost its data: --force sends every version again, deletes too.
	sum, err = Run(ctx, env.JS, sel, h, Options{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	n, repeated := env.SaaS.Deliveries()
	if sum.Applied != 55 || n != 110 || len(repeated) != 55 {
		t.Fatalf("--force = %d applied, the app got %d deliveries (%d repeated); want all 55 again", sum.Applied, n, len(repeated))
	}
	deletes := 0
	for _, it := range sum.Items {
		if it.Subject == events.SNSubject(recoverytest.Table, events.ActionDelete) && it.Outcome != "" {
			deletes++
		}
	}
	if deletes != 5 {
		t.Fatalf("--force replayed %d deletes, want 5", deletes)
	}
	if diff := env.Mismatches(ids[25:]); len(diff) > 0 {
		t.Fatalf("after the forced replay the app differs from ServiceNow: %v", diff)
	}
}
