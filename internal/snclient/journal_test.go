package snclient

import (
	"context"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

// TestJournalEntries_ListsWhatWasAppendedSince: the entries a write appended
// are found in sys_journal_field by record, field and time, with their text;
// older entries and other fields are not.
func TestJournalEntries_ListsWhatWasAppendedSince(t *testing.T) {
	_, c := newSim(t, 0, snsim.Config{}, nil)
	ctx := context.Background()
	rec, err := c.Create(ctx, "incident", map[string]string{"short_description": "journal", "comments": "first"})
	if err != nil {
		t.Fatal(err)
	}
	id := rec["sys_id"]
	since := time.Now().UTC().Add(-time.Second)
	if _, err := c.Update(ctx, "incident", id, map[string]string{"comments": "note 42\nsecond line", "work_notes": "internal"}); err != nil {
		t.Fatal(err)
	}
	got, err := c.JournalEntries(ctx, "incident", id, "comments", since, 10)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range got {
		if v == "note 42\nsecond line" {
			found = true
		}
		if v == "internal" {
			t.Errorf("a work note listed among the comments: %q", got)
		}
	}
	if !found {
		t.Fatalf("comments since %s = %q, want the entry just written", since, got)
	}
	later, err := c.JournalEntries(ctx, "incident", id, "comments", time.Now().UTC().Add(time.Hour), 10)
	if err != nil || len(later) != 0 {
		t.Fatalf("entries since an hour ahead = %q, %v; want none", later, err)
	}
}
