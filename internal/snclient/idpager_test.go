package snclient

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

// idScan drains an IDPager, calling between after every page, and returns
// the ids in the order returned and the largest X-Total-Count seen.
func idScan(t *testing.T, p *IDPager, between func()) ([]string, int) {
	t.Helper()
	var out []string
	total := -1
	for i := 0; !p.Done(); i++ {
		if i > 100000 {
			t.Fatal("sys_id pager does not end")
		}
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			total = page.Total
		}
		for _, r := range page.Records {
			if len(r) != 1 {
				t.Fatalf("a sys_id page row carries %d fields (%v); want sys_id alone", len(r), r)
			}
			out = append(out, r.SysID())
		}
		if between != nil {
			between()
		}
	}
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	return out, total
}

// skipValidation keeps field learning out of these tests: the sys_id scan
// names sys_id alone, which every table has.
func skipValidation(c *Config) { c.SkipFieldValidation = true }

func TestIDs_EveryRecordOnceInSysIDOrderWhileRecordsChange(t *testing.T) {
	sim, c := newSim(t, 5000, snsim.Config{}, skipValidation)
	ids := sim.IDs("incident")
	rng := rand.New(rand.NewPCG(3, 4))
	deleted, updated := map[string]bool{}, map[string]bool{}
	var created []string
	p := c.IDs("incident", IDOptions{PageSize: 250})
	got, total := idScan(t, p, func() {
		// Between pages people update, delete and create records.
		for range 10 {
			id := ids[rng.IntN(len(ids))]
			if deleted[id] {
				continue
			}
			if rng.IntN(2) == 0 {
				if err := sim.Delete("incident", id, "beth.anglin"); err != nil {
					t.Fatal(err)
				}
				deleted[id] = true
				continue
			}
			if _, err := sim.Update("incident", id, map[string]string{"short_description": "moved"}, "beth.anglin"); err != nil {
				t.Fatal(err)
			}
			updated[id] = true
		}
		rec, err := sim.Insert("incident", map[string]string{"short_description": "new during the scan"}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		created = append(created, rec["sys_id"])
	})
	if total != 5000 {
		t.Errorf("first page X-Total-Count = %d, want 5000", total)
	}
	if !slices.IsSorted(got) {
		t.Error("sys_ids not returned in ascending order")
	}
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	for _, id := range ids {
		switch n := seen[id]; {
		case !deleted[id] && n != 1:
			t.Errorf("record %s (updated during the scan: %v) returned %d times; want exactly once", id, updated[id], n)
		case deleted[id] && n > 1:
			t.Errorf("record %s deleted during the scan returned %d times", id, n)
		}
	}
	for _, id := range created {
		if seen[id] > 1 {
			t.Errorf("record %s created during the scan returned %d times", id, seen[id])
		}
	}
	if want := 5000/250 + 1; p.Requests() > want+1 {
		t.Errorf("%d requests for 5000 ids in pages of 250; want about %d", p.Requests(), want)
	}
	t.Logf("%d ids in %d requests; %d deleted, %d updated, %d created during the scan", len(got), p.Requests(), len(deleted), len(updated), len(created))
}

func TestIDs_HiddenRowsAreCountedNotReturnedAndDoNotEndTheScan(t *testing.T) {
	sim, c := newSim(t, 3000, snsim.Config{}, skipValidation)
	hide := snsim.HideFraction(0.5)
	var visible []string
	for _, id := range sim.IDs("incident") {
		if r, _ := sim.Get("incident", id); !hide("incident", r) {
			visible = append(visible, id)
		}
	}
	slices.Sort(visible)

	sim.SetACL(snsim.ACL{HideRow: hide})
	p := c.IDs("incident", IDOptions{PageSize: 100})
	got, total := idScan(t, p, nil)
	if !slices.Equal(got, visible) || total != 3000 {
		t.Fatalf("half hidden: %d ids returned (X-Total-Count %d); want the %d visible ones in order, counted 3000", len(got), total, len(visible))
	}
	if len(p.Warnings()) == 0 {
		t.Error("no ACL warning for pages that came back short")
	}

	// Every row hidden: the count still says 3000, the scan walks the
	// hidden run by offset and ends with nothing.
	sim.SetACL(snsim.ACL{HideRow: func(string, snsim.Record) bool { return true }})
	p = c.IDs("incident", IDOptions{PageSize: 500})
	got, total = idScan(t, p, nil)
	if len(got) != 0 || total != 3000 || p.Requests() != 6 {
		t.Fatalf("all hidden: %d ids, X-Total-Count %d, %d requests; want none, 3000 and 6 (one per hidden page)", len(got), total, p.Requests())
	}
}

func TestIDs_ResumeFilterAndRefusals(t *testing.T) {
	sim, c := newSim(t, 400, snsim.Config{}, skipValidation)
	ids := sim.IDs("incident")
	slices.Sort(ids)
	got, _ := idScan(t, c.IDs("incident", IDOptions{After: ids[99], PageSize: 64}), nil)
	if !slices.Equal(got, ids[100:]) {
		t.Fatalf("resumed after the 100th id: %d ids, want the last 300", len(got))
	}
	some := ids[10:15]
	vals := make([]any, len(some))
	for i, id := range some {
		vals[i] = id
	}
	got, total := idScan(t, c.IDs("incident", IDOptions{Filter: And(Field("sys_id").In(vals...))}), nil)
	if !slices.Equal(got, some) || total != len(some) {
		t.Fatalf("sys_idIN filter: %v (count %d), want %v", got, total, some)
	}
	for name, p := range map[string]*IDPager{
		"ordered filter": c.IDs("incident", IDOptions{Filter: Query{}.OrderBy("number")}),
		"bad resume":     c.IDs("incident", IDOptions{After: "INC0010001"}),
	} {
		if _, err := p.NextPage(context.Background()); !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("%s: %v, want ErrInvalidQuery", name, err)
		}
	}
}
