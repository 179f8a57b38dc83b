package state

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

func TestStore_RecordIDsListsOneTableWithoutReadingValues(t *testing.T) {
	st, _ := open(t)
	ctx := t.Context()
	var want []string
	for i := range 300 {
		id := fmt.Sprintf("%032x", i+1)
		want = append(want, id)
		if _, err := st.Advance(ctx, "incident", id, Record{Version: 1, Deleted: i%10 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	// Other tables (one a prefix of the other) and other key kinds stay out.
	for _, table := range []string{"incident_task", "problem"} {
		if _, err := st.Advance(ctx, table, fmt.Sprintf("%032x", 9999), Record{Version: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.KV().Put(ctx, "reconcile.watermark.incident", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// A forgotten record is no longer known.
	if err := st.Forget(ctx, "incident", want[5]); err != nil {
		t.Fatal(err)
	}
	want = slices.Delete(want, 5, 6)

	got, err := st.RecordIDs(ctx, "incident")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("RecordIDs(incident) = %d ids, want the %d incident records (deleted ones included, the forgotten one not)", len(got), len(want))
	}
	if got, err := st.RecordIDs(ctx, "change_request"); err != nil || len(got) != 0 {
		t.Fatalf("RecordIDs of a table without records = %v, %v; want none", got, err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if got, err := st.RecordIDs(cancelled, "incident"); err == nil {
		t.Fatalf("RecordIDs with a cancelled context returned %d ids and no error; a partial list must not pass for the whole", len(got))
	}
	if _, err := st.RecordIDs(ctx, "Bad Table"); err == nil {
		t.Fatal("RecordIDs accepted an invalid table name")
	}
}
