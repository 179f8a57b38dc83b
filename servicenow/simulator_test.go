package servicenow_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
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

// TestContract_SimulatorSendsWhatTheScriptSends drives the simulator's
// business-rule emulation through an insert, a commented update and a
// delete of a record full of awkward characters, then runs the real script
// on the same record state (same values, changed fields, journal entry,
// clock and secret): every body, webhook-id and signature must be
// byte-identical.
func TestContract_SimulatorSendsWhatTheScriptSends(t *testing.T) {
	nodePath(t)
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
		WebhookOptions: snsim.WebhookOptions{Fields: map[string][]string{"incident": strings.Split(servicenow.DefaultIncidentFields, ",")}},
	})
	defer sim.Close()

	rec, err := sim.Insert("incident", map[string]string{
		"short_description": "Printer \"HP-4\" says: C:\\temp <b>&</b> \u2028 \U0001F680",
		"description":       "line one\nline two\r\n\ttab \x01 \x7f \u2029 é 漢字",
		"urgency":           "1", "impact": "2",
	}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	id := rec["sys_id"]
	if _, err := sim.Update("incident", id, map[string]string{"state": "2", "comments": "Looking into it \"now\"\nsecond line"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	if err := sim.Delete("incident", id, "admin"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sim.WaitWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("the simulator sent %d webhooks, want 3 (insert, update, delete)", len(got))
	}

	val := events.NewValidator([]string{"incident"})
	var scs []scenario
	for i, c := range got {
		evs, err := val.DecodeBody([]byte(c.body))
		if err != nil {
			t.Fatalf("webhook %d: the ingest validator rejects the simulator's body: %v\n%s", i, err, c.body)
		}
		ts, err := strconv.ParseInt(c.headers.Get(webhook.HeaderTimestamp), 10, 64)
		if err != nil {
			t.Fatalf("webhook %d: webhook-timestamp %q", i, c.headers.Get(webhook.HeaderTimestamp))
		}
		sc := scenarioFor(evs[0], vf.Secret, ts)
		sc.Name = evs[0].Action
		scs = append(scs, sc)
	}
	if acts := []string{scs[0].Name, scs[1].Name, scs[2].Name}; !slices.Equal(acts, []string{"insert", "update", "delete"}) {
		t.Fatalf("actions %v, want insert, update, delete", acts)
	}
	if !strings.Contains(got[1].body, `"changed":["comments","state"]`) || !strings.Contains(got[1].body, `Looking into it \"now\"\nsecond line`) {
		t.Errorf("the update's webhook lacks the comment or the changed list: %s", got[1].body)
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
