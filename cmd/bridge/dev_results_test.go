package main

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
)

// On `bridge dev` an app-created ticket gets its created result, with the
// incident's number and link, within a second (issue 12's done criterion),
// and the walk-through says where results are.
func TestDev_AppCreateGetsItsNumberAndLinkWithinASecond(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	st, wait, err := startDev(ctx, &lockedBuffer{}, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0",
		dataDir: t.TempDir(), tables: []string{"incident"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("dev stack: %v", err)
		}
	}()
	var walk bytes.Buffer
	printWalkthrough(&walk, st)
	if !strings.Contains(walk.String(), "sub 'bridge.result.>'") {
		t.Errorf("the walk-through does not say where results are:\n%s", walk.String())
	}

	results := make(chan *nats.Msg, 64)
	sub, err := st.nc.ChanSubscribe("bridge.result.>", results)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := st.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var took []time.Duration
	for _, id := range []string{"TCK-5001", "TCK-5002", "TCK-5003"} {
		body, _ := json.Marshal(events.AppChange{ExternalID: id, Version: 1, UpdatedAt: time.Now().UTC(),
			Fields: events.Fields{"title": "Badge reader dead at door " + id, "status": "new", "impact": "2", "urgency": "2"}})
		sent := time.Now()
		if err := st.nc.Publish("app.ticket.upsert", body); err != nil {
			t.Fatal(err)
		}
		var r events.Result
		select {
		case m := <-results:
			took = append(took, time.Since(sent))
			if err := json.Unmarshal(m.Data, &r); err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no result for %s within 10s", id)
		}
		rec, ok := st.sim.Get("incident", r.SysID)
		if r.ExternalID != id || r.Outcome != events.OutcomeCreated || !ok || r.Number != rec["number"] ||
			r.URL != st.simURL+"/nav_to.do?uri=incident.do?sys_id="+r.SysID {
			t.Fatalf("result %+v, want %s created with the incident's number and link", r, id)
		}
	}
	t.Logf("created results %v after the app's publish (the first includes the token and learning the table)", took)
	if slices.Max(took) > time.Second {
		t.Errorf("a created result took %v, want each within a second", slices.Max(took))
	}
}
