package dlq_test

import (
	"github.com/nowbridge/nowbridge/internal/dlq"

	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/recoverytest"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

func TestRetry_AfterServiceNowIsHealthyAgainEmptiesTheDLQAndWritesTheChanges(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 13})
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		rec, err := env.Sim.Insert(recoverytest.Table, map[string]string{"short_description": fmt.Sprintf("Badge reader %d", i)}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	// ServiceNow refuses the integration user's writes (a role removed by
	// mistake): every app change is a permanent 403 and dead-letters.
	env.Sim.SetACL(snsim.ACL{DenyWrites: true})
	env.RunWriteback(0)
	for i, id := range ids {
		body, _ := json.Marshal(events.AppChange{ExternalID: fmt.Sprintf("TCK-%d", i), SysID: id, Version: 2, UpdatedAt: time.Now().UTC(),
			Fields: events.Fields{"title": fmt.Sprintf("Badge reader %d replaced", i)}})
		m := nats.NewMsg(events.AppSubject("ticket", events.AppUpsert))
		m.Data = body
		m.Header.Set(events.HeaderMsgID, events.AppMsgID("ticket", fmt.Sprintf("TCK-%d", i), 2, events.AppUpsert))
		if _, err := env.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	var entries []dlq.Entry
	waitFor(t, "5 dead letters", func() bool {
		var err error
		entries, err = dlq.List(ctx, env.JS, "writeback")
		return err == nil && len(entries) == 5
	})
	if entries[0].Status != 403 || entries[0].Origin != "app.ticket.upsert" {
		t.Fatalf("dead letter = %+v; want status 403 from app.ticket.upsert", entries[0])
	}

	env.Sim.SetACL(snsim.ACL{}) // the role is back
	since := time.Now().Add(-time.Second)
	res, err := dlq.RetryAll(ctx, env.JS, "writeback")
	if err != nil || len(res) != 5 {
		t.Fatalf("RetryAll = %d retried, %v", len(res), err)
	}
	// `bridge dlq retry --wait`: each retry's own result, the late update.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	pending, err := dlq.AwaitResults(wctx, env.JS, since, res)
	cancel()
	if err != nil || pending != 0 {
		t.Fatalf("AwaitResults: %d without a result, %v", pending, err)
	}
	for _, r := range res {
		if r.Result == nil || r.Result.Outcome != events.OutcomeUpdated || r.Result.Number == "" {
			t.Errorf("retry of %d: result %+v, want updated with the number", r.Seq, r.Result)
		}
	}
	waitFor(t, "the changes written to ServiceNow", func() bool {
		for i, id := range ids {
			rec, _ := env.Sim.Get(recoverytest.Table, id)
			if rec["short_description"] != fmt.Sprintf("Badge reader %d replaced", i) {
				return false
			}
		}
		return true
	})
	counts, err := dlq.Count(ctx, env.JS)
	if err != nil || counts["writeback"] != 0 {
		t.Fatalf("dead letters left after a successful retry: %v, %v", counts, err)
	}
	// The app heard each change refused, then, after the retry, its late
	// result: the record updated.
	waitFor(t, "a rejected and a late updated result for each change", func() bool {
		got := results(t, env)
		for i := range ids {
			if got[fmt.Sprintf("TCK-%d", i)] != "rejected,updated" {
				return false
			}
		}
		return true
	})
}

// results lists the outcomes BRIDGE_RESULTS holds per external id, in order.
func results(t *testing.T, env *recoverytest.Env) map[string]string {
	t.Helper()
	ctx := context.Background()
	st, err := env.JS.Stream(ctx, events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		var r events.Result
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatalf("result %d: %v", seq, err)
		}
		if out[r.ExternalID] != "" {
			out[r.ExternalID] += ","
		}
		out[r.ExternalID] += r.Outcome
	}
	return out
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRetry_ApplyDeadLettersReachTheAppOnceItAcceptsThem(t *testing.T) {
	env := recoverytest.Start(t, recoverytest.Options{Seed: 17})
	ctx := context.Background()
	env.SaaS.Fail(422) // the app rejects every version (a validation bug there)
	env.RunApply()
	var ids []string
	for i := range 4 {
		rec, err := env.Sim.Insert(recoverytest.Table, map[string]string{"short_description": fmt.Sprintf("Projector %d", i)}, "beth.anglin")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec["sys_id"])
	}
	var entries []dlq.Entry
	waitFor(t, "4 apply dead letters", func() bool {
		var err error
		entries, err = dlq.List(ctx, env.JS, "apply")
		return err == nil && len(entries) == 4
	})
	if e := entries[0]; e.Status != 422 || e.Response == "" || e.Origin != "sn.incident.insert" {
		t.Fatalf("dead letter = %+v; want the app's 422 and its response, from sn.incident.insert", e)
	}
	env.SaaS.Fail(0) // fixed
	if res, err := dlq.RetryAll(ctx, env.JS, ""); err != nil || len(res) != 4 {
		t.Fatalf("RetryAll = %d, %v", len(res), err)
	}
	env.Settle()
	if diff := env.Mismatches(nil); len(diff) > 0 {
		t.Fatalf("after the retry the app differs from ServiceNow: %v", diff)
	}
	if counts, _ := dlq.Count(ctx, env.JS); counts["apply"] != 0 {
		t.Fatalf("dead letters left: %v", counts)
	}
}
