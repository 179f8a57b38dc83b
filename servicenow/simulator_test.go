package servicenow_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
	"github.com/nowbridge/nowbridge/servicenow"
)

type captured struct {
	headers http.Header
	body    string
}

// simulatorCase is one table's life in the simulator: an insert, updates
// (one adding a comment) and a delete.
type simulatorCase struct {
	table   string
	insert  map[string]string
	updates []map[string]string
	changed string // the changed list the commented update's body must hold
}

var simulatorCases = []simulatorCase{
	{table: "incident",
		insert: map[string]string{
			"short_description": "Printer \"HP-4\" says: C:\\temp <b>&</b> \u2028 \U0001F680",
			"description":       "line one\nline two\r\n\ttab \x01 \x7f \u2029 é 漢字",
			"urgency":           "1", "impact": "2",
		},
		updates: []map[string]string{{"state": "2", "comments": "Looking into it \"now\"\nsecond line"}},
		changed: `"changed":["comments","state"]`},
	{table: "change_request",
		insert: map[string]string{"short_description": "Replace core switch \"SW-1\" <b>&</b> \u2028 漢字", "type": "emergency", "category": "network", "risk": "2"},
		updates: []map[string]string{
			{"state": "-1", "comments": "Implementing \"now\"\nsecond line"},
			{"state": "3", "close_code": "successful_issues", "close_notes": "Done; one port re-patched"},
		},
		changed: `"changed":["comments","state"]`},
	{table: "problem",
		insert: map[string]string{"short_description": "Mail gateway restarts \U0001F680", "impact": "1", "urgency": "1"},
		updates: []map[string]string{
			{"state": "104", "work_notes": "Root cause found"},
			{"state": "106", "resolution_code": "fix_applied", "cause_notes": "Firmware leak", "fix_notes": "Firmware upgraded"},
		},
		changed: `"changed":["state","work_notes"]`},
	{table: "sc_req_item",
		insert:  map[string]string{"short_description": "Laptop é", "quantity": "2", "stage": "request_approved"},
		updates: []map[string]string{{"state": "2", "stage": "fulfillment", "comments": "Ordered"}, {"state": "3", "stage": "complete"}},
		changed: `"changed":["comments","stage","state"]`},
	{table: "sn_hr_core_case",
		insert:  map[string]string{"short_description": "Parental leave \u2028 request"},
		updates: []map[string]string{{"state": "18", "work_notes": "Forms received"}, {"state": "3"}},
		changed: `"changed":["state","work_notes"]`},
}

// TestContract_SimulatorSendsWhatTheScriptSends drives the simulator's
// business-rule emulation through the life of a record of every shipped
// table (insert with awkward characters, updates with a journal entry and
// a close, delete), then runs the real script on the same record state
// (same values, changed fields, journal entry, clock and secret): every
// body, webhook-id and signature must be byte-identical, and the bridge's
// validator must accept each.
func TestContract_SimulatorSendsWhatTheScriptSends(t *testing.T) {
	nodePath(t)
	for _, c := range simulatorCases {
		t.Run(c.table, func(t *testing.T) { simulatorContract(t, c) })
	}
}

func simulatorContract(t *testing.T, c simulatorCase) {
	vf := loadVectors(t)
	secret := mustSecrets(t, vf.Secret)[0]

	var mu sync.Mutex
	var got []captured
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, captured{headers: r.Header.Clone(), body: string(b)})
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer rcv.Close()

	sim := snsim.New(snsim.Config{
		InstanceName:   "dev12345",
		Seed:           11,
		Webhooks:       []snsim.WebhookTarget{{URL: rcv.URL, Secrets: []webhook.Secret{secret}}},
		WebhookOptions: snsim.WebhookOptions{Fields: map[string][]string{c.table: servicenow.DefaultFieldList(c.table)}},
	})
	defer sim.Close()

	rec, err := sim.Insert(c.table, c.insert, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	id := rec["sys_id"]
	for _, u := range c.updates {
		if _, err := sim.Update(c.table, id, u, "beth.anglin"); err != nil {
			t.Fatal(err)
		}
	}
	if err := sim.Delete(c.table, id, "admin"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sim.WaitWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := 2 + len(c.updates)
	if len(got) != want {
		t.Fatalf("the simulator sent %d webhooks, want %d (insert, %d updates, delete)", len(got), want, len(c.updates))
	}

	val := events.NewValidator(servicenow.ShippedTables())
	var scs []scenario
	var actions []string
	for i, cp := range got {
		evs, err := val.DecodeBody([]byte(cp.body))
		if err != nil {
			t.Fatalf("webhook %d: the ingest validator rejects the simulator's body: %v\n%s", i, err, cp.body)
		}
		ts, err := strconv.ParseInt(cp.headers.Get(webhook.HeaderTimestamp), 10, 64)
		if err != nil {
			t.Fatalf("webhook %d: webhook-timestamp %q", i, cp.headers.Get(webhook.HeaderTimestamp))
		}
		sc := scenarioFor(evs[0], vf.Secret, ts)
		sc.Name = evs[0].Action
		scs = append(scs, sc)
		actions = append(actions, evs[0].Action)
	}
	if actions[0] != "insert" || actions[len(actions)-1] != "delete" {
		t.Fatalf("actions %v, want insert first and delete last", actions)
	}
	if !strings.Contains(got[1].body, c.changed) {
		t.Errorf("the first update's webhook lacks %s: %s", c.changed, got[1].body)
	}
	res := runNode(t, scs)
	for i, r := range res {
		req := onlyRequest(t, r)
		sim := got[i]
		if req.Body != sim.body {
			t.Errorf("%s: bodies differ\n script: %s\n    sim: %s", r.Name, req.Body, sim.body)
		}
		for _, h := range []string{webhook.HeaderID, webhook.HeaderTimestamp, webhook.HeaderSignature} {
			if req.Headers[h] != sim.headers.Get(h) {
				t.Errorf("%s: %s differs: script %q, simulator %q", r.Name, h, req.Headers[h], sim.headers.Get(h))
			}
		}
	}
}
