package nowbridge_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/sdk/nowbridge"
)

// results collects what a ResultHandler saw.
type results struct {
	mu  sync.Mutex
	got []nowbridge.Result
}

func (r *results) handler(_ context.Context, res *nowbridge.Result) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, *res)
	return nil
}

// wait returns the final result answering version v of externalID.
func (r *results) wait(t *testing.T, externalID string, v int64) nowbridge.Result {
	t.Helper()
	var found *nowbridge.Result
	waitFor(t, 10*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for i := range r.got {
			if g := r.got[i]; g.ExternalID == externalID && g.Version == v && g.Final() {
				found = &g
				return true
			}
		}
		return false
	}, func() string {
		r.mu.Lock()
		defer r.mu.Unlock()
		return fmt.Sprintf("no final result for %s version %d; got %+v", externalID, v, r.got)
	})
	return *found
}

// publishResult stores a result as the bridge's writeback does: on
// bridge.result.<entity>.<outcome> under its msg id. It reports whether the
// stream took it as a duplicate.
func (e *env) publishResult(r nowbridge.Result) bool {
	e.t.Helper()
	msg := &nats.Msg{Subject: events.ResultSubject(r.Entity, r.Outcome), Data: mustJSON(e.t, r), Header: nats.Header{}}
	msg.Header.Set(events.HeaderMsgID, events.ResultMsgID(r.Entity, r.ExternalID, r.Version, r.Outcome))
	ack, err := e.js.PublishMsg(context.Background(), msg, jetstream.WithExpectStream(events.StreamResults))
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Duplicate
}

func result(id string, version int64, outcome string) nowbridge.Result {
	r := nowbridge.Result{ExternalID: id, Version: version, Entity: "ticket", Action: "upsert", Outcome: outcome, Table: "incident", At: time.Now().UTC()}
	if outcome != nowbridge.OutcomeRetrying {
		r.SysID, r.Number = sysID(1), "INC0010001"
		r.URL = events.RecordURL("https://dev12345.service-now.com", "incident", r.SysID)
	}
	if outcome == nowbridge.OutcomeRejected || outcome == nowbridge.OutcomeRetrying {
		r.Error = &nowbridge.ResultError{Status: 403, Message: "Operation Failed", Detail: "Data Policy Exception", Hint: "fix it", DeadLettered: outcome == nowbridge.OutcomeRejected}
	}
	return r
}

// A durable Results consumer hands over each record's results in order,
// retries a failing handler without letting a later result of the same
// record overtake, and resumes after a restart where it stopped.
func TestResults_DurableInOrderPerRecordAcrossRestarts(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		id := fmt.Sprintf("TCK-%d", i)
		e.publishResult(result(id, 1, nowbridge.OutcomeRetrying))
		e.publishResult(result(id, 1, nowbridge.OutcomeCreated))
		e.publishResult(result(id, 2, nowbridge.OutcomeRejected))
	}
	if dup := e.publishResult(result("TCK-0", 1, nowbridge.OutcomeCreated)); !dup {
		t.Fatal("the same result published again was stored twice")
	}
	var (
		seen   = map[string][]string{}
		failed = false
		res    results
	)
	h := func(ctx context.Context, r *nowbridge.Result) error {
		if r.ExternalID == "TCK-2" && r.Outcome == nowbridge.OutcomeRetrying && !failed {
			failed = true // handlers of one record never run at once: no lock needed for TCK-2
			return errors.New("database busy")
		}
		return res.handler(ctx, r)
	}
	opts := nowbridge.ResultsOptions{Durable: "app-results", RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond}
	stop := e.run(func(ctx context.Context) error { return e.client.Results(ctx, h, opts) })
	e.waitAcked(events.StreamResults, "app-results", 10*time.Second)
	stop()

	res.mu.Lock()
	for _, r := range res.got {
		seen[r.ExternalID] = append(seen[r.ExternalID], fmt.Sprintf("%d:%s", r.Version, r.Outcome))
	}
	got := res.got
	res.got = nil
	res.mu.Unlock()
	if len(got) != 15 {
		t.Fatalf("handler took %d results, want 15", len(got))
	}
	for i := range 5 {
		id := fmt.Sprintf("TCK-%d", i)
		if want := []string{"1:retrying", "1:created", "2:rejected"}; fmt.Sprint(seen[id]) != fmt.Sprint(want) {
			t.Errorf("%s results in order %v, want %v", id, seen[id], want)
		}
	}
	for _, r := range got {
		if r.Outcome == nowbridge.OutcomeRejected && (r.Error == nil || r.Error.Message != "Operation Failed" || !r.Error.DeadLettered || r.Number != "INC0010001" || r.URL == "") {
			t.Errorf("rejected result decoded as %+v (error %+v)", r, r.Error)
		}
	}

	e.publishResult(result("TCK-9", 1, nowbridge.OutcomeCreated))
	e.run(func(ctx context.Context) error { return e.client.Results(ctx, h, opts) })
	e.waitAcked(events.StreamResults, "app-results", 10*time.Second)
	res.mu.Lock()
	defer res.mu.Unlock()
	if len(res.got) != 1 || res.got[0].ExternalID != "TCK-9" {
		t.Errorf("after the restart the handler took %+v; want only the new TCK-9 result", res.got)
	}
}

// Without a durable name Results follows an ordered consumer: from now on,
// or from Since.
func TestResults_OrderedConsumerFollowsLiveOrSince(t *testing.T) {
	e := newEnv(t)
	e.publishResult(result("OLD-1", 1, nowbridge.OutcomeCreated))
	time.Sleep(20 * time.Millisecond)
	since := time.Now()
	time.Sleep(20 * time.Millisecond)
	e.publishResult(result("MID-1", 1, nowbridge.OutcomeUpdated))

	var live, fromSince results
	calls := 0
	e.run(func(ctx context.Context) error {
		return e.client.Results(ctx, live.handler, nowbridge.ResultsOptions{})
	})
	e.run(func(ctx context.Context) error {
		return e.client.Results(ctx, func(ctx context.Context, r *nowbridge.Result) error {
			calls++
			if calls == 1 {
				return errors.New("retried in place") // an ordered consumer cannot nak
			}
			return fromSince.handler(ctx, r)
		}, nowbridge.ResultsOptions{Since: since, RetryBase: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	})
	time.Sleep(300 * time.Millisecond) // the live consumer is listening
	e.publishResult(result("NEW-1", 1, nowbridge.OutcomeCreated))

	got := fromSince.wait(t, "NEW-1", 1)
	if got.Outcome != nowbridge.OutcomeCreated {
		t.Errorf("NEW-1: %+v", got)
	}
	live.wait(t, "NEW-1", 1)
	fromSince.mu.Lock()
	if len(fromSince.got) != 2 || fromSince.got[0].ExternalID != "MID-1" {
		t.Errorf("from Since the handler took %+v; want MID-1 (retried once) then NEW-1", fromSince.got)
	}
	fromSince.mu.Unlock()
	live.mu.Lock()
	if len(live.got) != 1 {
		t.Errorf("the live consumer took %+v; want only NEW-1", live.got)
	}
	live.mu.Unlock()
}
