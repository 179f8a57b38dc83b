package status

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/reconcile"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCollect_ShowsStreamsReconcileAndLiveProcesses(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "sn.incident.update", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, events.DLQSubject("writeback"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, events.BucketState)
	if err != nil {
		t.Fatal(err)
	}
	fin := time.Now().UTC().Add(-time.Minute)
	if err := (reconcile.Store{KV: kv}).SavePass(ctx, reconcile.Summary{Table: "incident", Finished: fin, Gaps: 7, Scanned: 100}); err != nil {
		t.Fatal(err)
	}
	expiry := time.Now().Add(29 * time.Minute)
	rp := &Reporter{JS: js, ID: "bridge-1", Interval: 300 * time.Millisecond, Snapshot: func() Process {
		return Process{TokenExpiry: expiry, Breaker: "closed"}
	}}
	if err := rp.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := Collect(ctx, js, []string{"incident", "problem"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Streams[0].Name != events.StreamSN || rep.Streams[0].Msgs != 1 || rep.DLQTotal != 1 || rep.DLQ["writeback"] != 1 {
		t.Fatalf("streams/dlq = %+v %v", rep.Streams, rep.DLQ)
	}
	if len(rep.Reconcile) != 2 || rep.Reconcile[0].Gaps != 7 || !rep.Reconcile[1].Finished.IsZero() {
		t.Fatalf("reconcile = %+v", rep.Reconcile)
	}
	if len(rep.Processes) != 1 || rep.Processes[0].Breaker != "closed" {
		t.Fatalf("processes = %+v", rep.Processes)
	}
	var out bytes.Buffer
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SN_EVENTS", "DEAD LETTERS  1", "writeback=1", "incident", "never", "bridge-1", "closed", "in 2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status screen lacks %q:\n%s", want, out.String())
		}
	}
	// A process that stops reporting drops off after its TTL.
	deadline := time.Now().Add(10 * time.Second)
	for {
		rep, err := Collect(ctx, js, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Processes) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a silent process is still listed after its TTL")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
