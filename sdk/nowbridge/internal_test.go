package nowbridge

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Assigned versions grow even when the clock steps back (NTP) or stands
// still (many changes in one microsecond).
func TestVersion_AssignedGrowsWhateverTheClock(t *testing.T) {
	c := &Client{recent: newLRU[published](10), now: func() time.Time { return time.UnixMicro(1_000) }}
	var last int64
	for i, clock := range []int64{1_000, 1_000, 500, 2_000, 1_999} {
		c.now = func() time.Time { return time.UnixMicro(clock) }
		v, err := c.version("ticket", "T-1", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if v <= last || v < clock {
			t.Fatalf("step %d (clock %d µs): version %d after %d", i, clock, v, last)
		}
		last = v
	}
}

// The client remembers a bounded number of records; a supplied version is
// checked against the remembered one.
func TestVersion_SuppliedCheckedAgainstTheRecentRecords(t *testing.T) {
	c := &Client{recent: newLRU[published](2), now: time.Now}
	if _, err := c.version("ticket", "A", 5, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.version("ticket", "A", 4, 1); !errors.Is(err, ErrVersionNotNewer) || !strings.Contains(err.Error(), `"A" version 4 is lower than 5`) {
		t.Fatalf("4 after 5: %v", err)
	}
	if _, err := c.version("ticket", "A", 5, 2); !errors.Is(err, ErrVersionNotNewer) {
		t.Fatalf("5 again with other content: %v", err)
	}
	if v, err := c.version("ticket", "A", 5, 1); err != nil || v != 5 {
		t.Fatalf("5 again unchanged: %d, %v", v, err)
	}
	_, _ = c.version("ticket", "B", 1, 1)
	_, _ = c.version("ticket", "C", 1, 1) // A is forgotten: capacity 2
	if _, err := c.version("ticket", "A", 4, 1); err != nil {
		t.Fatalf("a forgotten record is not checked (the bridge answers stale): %v", err)
	}
	if c.recent.len() != 2 {
		t.Errorf("remembers %d records, want 2", c.recent.len())
	}
}

func TestLRU_EvictsTheLeastRecentlyUsed(t *testing.T) {
	l := newLRU[int](2)
	l.put("a", 1)
	l.put("b", 2)
	l.get("a") // a is now more recent than b
	l.put("c", 3)
	if _, ok := l.get("b"); ok {
		t.Error("b survived; it was the least recently used")
	}
	if v, ok := l.get("a"); !ok || v != 1 {
		t.Errorf("a = %d, %v", v, ok)
	}
	l.put("a", 9)
	if v, _ := l.get("a"); v != 9 || l.len() != 2 {
		t.Errorf("a = %d, len %d after an update", v, l.len())
	}
}

func TestKVKey(t *testing.T) {
	cases := map[string]string{
		"incident/9d385017c611228701d22104cc95c371": "incident/9d385017c611228701d22104cc95c371",
		"ticket/TCK-1042": "ticket/TCK-1042",
		"ticket/TCK 1042": "b64.dGlja2V0L1RDSyAxMDQy",
		"ticket/a.b":      "b64.dGlja2V0L2EuYg",
		"b64.x":           "b64.YjY0Lng",
	}
	for in, want := range cases {
		if got := kvKey(in); got != want {
			t.Errorf("kvKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTruncate_KeepsCharactersWhole(t *testing.T) {
	if got := truncate("héllo", 2); got != "h" {
		t.Errorf("truncate(héllo, 2) = %q, want h", got)
	}
	if got := truncate("abc", 5); got != "abc" {
		t.Errorf("truncate(abc, 5) = %q", got)
	}
}
