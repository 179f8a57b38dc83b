package snsim

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestScan_SysIDIndexFollowsWrites checks that the sys_id index stays the
// table's rows in sys_id order through inserts, updates and deletes, and
// that sys_id-ordered pages read from it match evaluating every row.
func TestScan_SysIDIndexFollowsWrites(t *testing.T) {
	s := New(Config{Seed: 5})
	defer s.Close()
	if err := s.Seed(500); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 300 {
		ids := s.IDs("incident")
		id := ids[rng.IntN(len(ids))]
		var err error
		switch i % 3 {
		case 0:
			_, err = s.Insert("incident", map[string]string{"short_description": "new"}, "beth.anglin")
		case 1:
			_, err = s.Update("incident", id, map[string]string{"short_description": "changed"}, "beth.anglin")
		case 2:
			err = s.DeleteNoWorkflow("incident", id, "beth.anglin")
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	tb := s.tables["incident"]
	want := slices.Collect(func(yield func(*row) bool) {
		for _, r := range tb.rows {
			if !yield(r) {
				return
			}
		}
	})
	slices.SortFunc(want, func(a, b *row) int { return strings.Compare(a.id(tb), b.id(tb)) })
	if !slices.Equal(tb.ids, want) {
		t.Fatalf("sys_id index holds %d rows, the table %d (or the order or the row versions differ)", len(tb.ids), len(want))
	}
	for _, pivot := range []int{0, 1, 250, len(want) - 1} {
		q, err := ParseQuery("sys_id>" + want[pivot].id(tb) + "^ORDERBYsys_id")
		if err != nil {
			t.Fatal(err)
		}
		got := tb.scan(bind(q, tb.s, false), 0, 40, true)
		exp := want[pivot+1 : min(pivot+41, len(want))]
		if got.total != len(want)-pivot-1 || !slices.Equal(got.rows, exp) || got.visited > 41 {
			t.Errorf("pivot %d: total %d (want %d), %d rows (want %d), %d rows walked; want the next 40 by sys_id from the index", pivot, got.total, len(want)-pivot-1, len(got.rows), len(exp), got.visited)
		}
	}
}
