package state

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sysA = "9d385017c611228701d22104cc95c371"

func open(t *testing.T) (*Store, *Links) {
	t.Helper()
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	st, ln, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return st, ln
}

func TestStore_RevisionCheckedPutNeverRegresses(t *testing.T) {
	st, _ := open(t)
	ctx := t.Context()
	if _, _, ok, err := st.Get(ctx, "incident", sysA); ok || err != nil {
		t.Fatalf("Get on an empty bucket = ok %v err %v", ok, err)
	}
	if err := st.Put(ctx, "incident", sysA, Record{Version: 3, Fields: map[string]string{"state": "1"}}, 0); err != nil {
		t.Fatal(err)
	}
	rec, rev, ok, err := st.Get(ctx, "incident", sysA)
	if err != nil || !ok || rec.Version != 3 || rec.Fields["state"] != "1" {
		t.Fatalf("Get = %+v ok %v err %v", rec, ok, err)
	}
	// Someone else moves it to 5 behind our back.
	if err := st.Put(ctx, "incident", sysA, Record{Version: 5}, rev); err != nil {
		t.Fatal(err)
	}
	// Our write of 4 at the old revision: nothing to do, nothing regressed.
	if err := st.Put(ctx, "incident", sysA, Record{Version: 4}, rev); err != nil {
		t.Fatalf("Put of an older version at a stale revision = %v, want nil (newer stored)", err)
	}
	// Our write of 6 at the old revision: conflict, caller must re-read.
	if err := st.Put(ctx, "incident", sysA, Record{Version: 6}, rev); !errors.Is(err, ErrConflict) {
		t.Fatalf("Put of a newer version at a stale revision = %v, want ErrConflict", err)
	}
	// Create when it exists already.
	if err := st.Put(ctx, "incident", sysA, Record{Version: 9}, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("Put rev 0 over an existing entry = %v, want ErrConflict", err)
	}
	if v, known, deleted, err := st.LastVersion(ctx, "incident", sysA); v != 5 || !known || deleted || err != nil {
		t.Fatalf("LastVersion = %d %v %v %v, want 5 known", v, known, deleted, err)
	}
}

func TestStore_ConcurrentAdvanceKeepsTheMaximum(t *testing.T) {
	st, _ := open(t)
	ctx := t.Context()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for v := int64(w); v < 40; v += 4 {
				if _, err := st.Advance(ctx, "incident", sysA, Record{Version: v, Fields: map[string]string{fmt.Sprint("w", w): fmt.Sprint(v)}}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	rec, _, _, err := st.Get(ctx, "incident", sysA)
	if err != nil || rec.Version != 39 {
		t.Fatalf("after concurrent advances: version %d err %v, want 39", rec.Version, err)
	}
	if advanced, err := st.Advance(ctx, "incident", sysA, Record{Version: 12}); advanced || err != nil {
		t.Fatalf("Advance to an older version = %v %v, want false nil", advanced, err)
	}
}

func TestStore_AdvanceMergesFieldsAndDeleteOfSameVersion(t *testing.T) {
	st, _ := open(t)
	ctx := t.Context()
	mustAdvance := func(rec Record, want bool) {
		t.Helper()
		got, err := st.Advance(ctx, "incident", sysA, rec)
		if err != nil || got != want {
			t.Fatalf("Advance(%+v) = %v %v, want %v", rec, got, err, want)
		}
	}
	mustAdvance(Record{Version: 1, Fields: map[string]string{"state": "1", "priority": "3"}}, true)
	mustAdvance(Record{Version: 2, Fields: map[string]string{"state": "2"}}, true)
	mustAdvance(Record{Version: 2}, false)
	rec, _, _, _ := st.Get(ctx, "incident", sysA)
	if rec.Fields["state"] != "2" || rec.Fields["priority"] != "3" {
		t.Fatalf("fields = %v, want state 2 and priority 3 kept", rec.Fields)
	}
	// ServiceNow deletes without bumping sys_mod_count.
	if !rec.Supersedes(2, events.ActionDelete) || rec.Supersedes(2, events.ActionUpdate) {
		t.Fatal("a delete of the stored version must supersede it; an update of it must not")
	}
	mustAdvance(Record{Version: 2, Deleted: true}, true)
	mustAdvance(Record{Version: 2, Deleted: true}, false)
	if _, known, deleted, _ := st.LastVersion(ctx, "incident", sysA); !known || !deleted {
		t.Fatal("LastVersion: want deleted")
	}
	if err := st.Forget(ctx, "incident", sysA); err != nil {
		t.Fatal(err)
	}
	if _, known, _, _ := st.LastVersion(ctx, "incident", sysA); known {
		t.Fatal("after Forget the record must be unknown")
	}
	if _, _, _, err := st.Get(ctx, "incident", "not-a-sys-id"); err == nil {
		t.Fatal("invalid sys_id: want an error")
	}
}

func TestLinks_BothWaysWithArbitraryIDs(t *testing.T) {
	_, ln := open(t)
	ctx := t.Context()
	const sysB = "0123456789abcdef0123456789abcdef"
	for _, id := range []string{"TCK-1042", "a b/c.d*>é", "=="} {
		if err := ln.Link(ctx, "ticket", id, "incident", sysA); err != nil {
			t.Fatalf("Link(%q): %v", id, err)
		}
		table, sysID, ok, err := ln.SysID(ctx, "ticket", id)
		if err != nil || !ok || table != "incident" || sysID != sysA {
			t.Fatalf("SysID(%q) = %s %s %v %v", id, table, sysID, ok, err)
		}
		entity, ext, ok, err := ln.ExternalID(ctx, "incident", sysA)
		if err != nil || !ok || entity != "ticket" || ext != id {
			t.Fatalf("ExternalID = %s %q %v %v, want ticket %q", entity, ext, ok, err, id)
		}
	}
	// The record was re-linked twice: the earlier ids no longer point at it.
	if _, _, ok, _ := ln.SysID(ctx, "ticket", "TCK-1042"); ok {
		t.Fatal("TCK-1042 still linked after its record was linked to another id")
	}
	// Re-link the id to another record: the old record loses its link.
	if err := ln.Link(ctx, "ticket", "==", "incident", sysB); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := ln.ExternalID(ctx, "incident", sysA); ok {
		t.Fatal("old record still linked after its id moved")
	}
	if err := ln.Unlink(ctx, "ticket", "=="); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := ln.ExternalID(ctx, "incident", sysB); ok {
		t.Fatal("record still linked after Unlink")
	}
	if err := ln.Link(ctx, "ticket", "", "incident", sysA); err == nil {
		t.Fatal("empty external id: want an error")
	}
}
