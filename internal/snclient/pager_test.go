package snclient

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// scan drains a pager page by page, calling between after every page.
func scan(t *testing.T, p interface {
	NextPage(context.Context) (*Page, error)
	Done() bool
}, between func()) []Record {
	t.Helper()
	var out []Record
	for i := 0; !p.Done(); i++ {
		if i > 100000 {
			t.Fatal("pager does not end")
		}
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Records...)
		if between != nil {
			between()
		}
	}
	return out
}

func TestKeyset_20kRecords50PerSecondEachExactlyOnce(t *testing.T) {
	f := newFakeSN(t)
	c := newTestClient(t, f.config())
	// 20k with ServiceNow-sized pages; smaller tables with pages aligned
	// to the 50-per-second runs, misaligned, and of one row.
	for _, tc := range []struct{ rows, size int }{{20000, 1000}, {3000, 50}, {3000, 37}, {200, 1}} {
		size := tc.size
		f.set(func(f *fakeSN) { f.tables["incident"] = incidentRows(tc.rows) })
		t.Run(strconv.Itoa(tc.rows)+" rows, page "+strconv.Itoa(size), func(t *testing.T) {
			p := c.Keyset("incident", KeysetOptions{PageSize: size, Fields: []string{"number"}})
			got := scan(t, p, nil)
			seen := map[string]int{}
			var prev Cursor
			for i, r := range got {
				seen[r.SysID()]++
				at, _ := r.UpdatedOn()
				k := Cursor{at, r.SysID()}
				if i > 0 && !prev.less(k) {
					t.Fatalf("row %d (%v) not after row %d (%v)", i, k, i-1, prev)
				}
				prev = k
			}
			if len(got) != tc.rows || len(seen) != tc.rows {
				t.Fatalf("got %d rows, %d distinct; want %d each exactly once", len(got), len(seen), tc.rows)
			}
			if p.Cursor() != prev {
				t.Errorf("Cursor() = %v, want the last row %v", p.Cursor(), prev)
			}
			t.Logf("page %d: %d requests", size, p.Requests())
		})
	}
}

func TestKeyset_UpdatesDuringScan(t *testing.T) {
	f := newFakeSN(t)
	rows := incidentRows(20000)
	f.tables["incident"] = rows
	c := newTestClient(t, f.config())
	rng := rand.New(rand.NewPCG(1, 2))
	updated := map[string]int{} // sys_id → updates during the scan
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	p := c.Keyset("incident", KeysetOptions{PageSize: 500})
	got := scan(t, p, func() {
		// After every page, update 30 random records: ahead of the
		// cursor, behind it, and in the very second being finished. They
		// move to "now", which advances one second per page with 5 of
		// them sharing it.
		f.set(func(f *fakeSN) {
			for i := range 30 {
				r := f.tables["incident"][rng.IntN(len(f.tables["incident"]))]
				n, _ := strconv.Atoi(r["sys_mod_count"])
				r["sys_mod_count"] = strconv.Itoa(n + 1)
				r["sys_updated_on"] = now.Add(time.Duration(i/5) * time.Second).Format(TimeLayout)
				updated[r["sys_id"]]++
			}
			now = now.Add(6 * time.Second)
		})
	})
	type version struct{ id, mod string }
	seen := map[string]int{}
	versions := map[version]int{}
	for _, r := range got {
		seen[r.SysID()]++
		versions[version{r.SysID(), r.Get("sys_mod_count")}]++
	}
	for v, n := range versions {
		if n > 1 {
			t.Errorf("version %v returned %d times", v, n)
		}
	}
	for _, r := range rows {
		id := r["sys_id"]
		switch n := seen[id]; {
		case updated[id] == 0 && n != 1:
			t.Errorf("record %s never updated during the scan was returned %d times, want exactly once", id, n)
		case updated[id] > 0 && (n < 1 || n > 1+updated[id]):
			t.Errorf("record %s updated %d times was returned %d times, want 1..%d", id, updated[id], n, 1+updated[id])
		}
	}
	t.Logf("%d updated records, %d rows returned for 20000 records, %d requests", len(updated), len(got), p.Requests())
}

func TestKeyset_ACLShortAndEmptyPagesDoNotEndTheScan(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(5000)
	// Scattered hidden rows make short pages; a run of 1200 consecutive
	// hidden rows (more than two pages) makes empty pages with more after.
	hiddenRow := func(r map[string]string) bool {
		n, _ := strconv.Atoi(r["number"][3:])
		i := n - 10001
		return i%7 == 3 || (i >= 2000 && i < 3200)
	}
	f.hidden = hiddenRow
	for _, v := range []TableAPIVersion{TableAPIv1, TableAPIv2} {
		t.Run(string(v), func(t *testing.T) {
			cfg := f.config()
			cfg.TableAPI = v
			c := newTestClient(t, cfg)
			want := 0
			for _, r := range f.tables["incident"] {
				if !hiddenRow(r) {
					want++
				}
			}
			for name, p := range map[string]interface {
				NextPage(context.Context) (*Page, error)
				Done() bool
				Warnings() []*ACLWarning
			}{
				"keyset": c.Keyset("incident", KeysetOptions{PageSize: 500}),
				"offset": c.Offset("incident", ListOptions{Limit: 500}),
			} {
				got := scan(t, p, nil)
				seen := map[string]bool{}
				for _, r := range got {
					if seen[r.SysID()] {
						t.Errorf("%s: %s returned twice", name, r.SysID())
					}
					seen[r.SysID()] = true
				}
				if len(seen) != want {
					t.Errorf("%s: %d visible rows returned, want %d: the scan stopped on a short or empty page", name, len(seen), want)
				}
				if len(p.Warnings()) == 0 || !errors.Is(p.Warnings()[0], ErrACLHidden) {
					t.Errorf("%s: no ACL warning", name)
				}
			}
		})
	}
}

func TestKeyset_ResumeAfterCursorAndFilter(t *testing.T) {
	f := newFakeSN(t)
	rows := incidentRows(300)
	for i, r := range rows {
		if i%2 == 0 {
			r["active"] = "false"
		}
	}
	f.tables["incident"] = rows
	c := newTestClient(t, f.config())
	// Resume in the middle of a second: rows of that second after the id,
	// then everything later.
	mid := rows[125]
	at, _ := time.Parse(TimeLayout, mid["sys_updated_on"])
	p := c.Keyset("incident", KeysetOptions{PageSize: 7, Filter: And(Field("active").EQ(true)), After: Cursor{at, mid["sys_id"]}})
	got := scan(t, p, nil)
	want := 0
	for _, r := range rows {
		if r["active"] == "true" && (r["sys_updated_on"] > mid["sys_updated_on"] || (r["sys_updated_on"] == mid["sys_updated_on"] && r["sys_id"] > mid["sys_id"])) {
			want++
		}
	}
	if len(got) != want {
		t.Errorf("resumed scan returned %d rows, want %d", len(got), want)
	}
	for _, r := range got {
		if r.Get("active") != "true" {
			t.Errorf("filter ignored: %v", r)
		}
	}
	for _, bad := range []KeysetOptions{
		{Filter: Query{}.OrderBy("number")},
		{Filter: NQ(And(Field("a").EQ(1)), And(Field("b").EQ(1)))},
		{Display: DisplayText},
	} {
		if _, err := c.Keyset("incident", bad).NextPage(context.Background()); !errors.Is(err, ErrInvalidQuery) {
			t.Errorf("options %+v: err = %v, want ErrInvalidQuery", bad, err)
		}
	}
}

func TestOffset_FollowsLinkNext(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(1234)
	c := newTestClient(t, f.config())
	p := c.Offset("incident", ListOptions{Limit: 100})
	n := 0
	for r, err := range p.Records(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		_ = r
		n++
	}
	if n != 1234 || p.Requests() != 13 {
		t.Errorf("offset scan: %d rows in %d requests, want 1234 in 13", n, p.Requests())
	}
}

func TestKeyset_RecordsIteratorStopsEarly(t *testing.T) {
	f := newFakeSN(t)
	f.tables["incident"] = incidentRows(100)
	c := newTestClient(t, f.config())
	p := c.Keyset("incident", KeysetOptions{PageSize: 10})
	n := 0
	for _, err := range p.Records(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 15 {
			break
		}
	}
	// Resuming continues after the last page fetched.
	rest := 0
	for _, err := range p.Records(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		rest++
	}
	if rest != 80 {
		t.Errorf("after breaking at 15 (2 pages fetched), the rest = %d, want 80", rest)
	}
}
