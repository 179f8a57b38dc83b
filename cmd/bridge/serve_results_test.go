package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// TestServe_AppCreateIsAnsweredOnTheStreamAndWithASignedPOST runs `bridge
// serve` with BRIDGE_RESULTS_URL: a ticket the app creates gets its
// created result, with the incident's number and link, on
// bridge.result.ticket.created and as a POST signed with BRIDGE_APPLY_SECRET.
func TestServe_AppCreateIsAnsweredOnTheStreamAndWithASignedPOST(t *testing.T) {
	hookSecret := webhook.NewSecret([]byte("serve-results-hook-0123456789abc"))
	appSecret := webhook.NewSecret([]byte("serve-results-app-0123456789abcd"))
	sim := snsim.New(snsim.Config{ClientID: "cid", ClientSecret: "csecret"})
	defer sim.Close()
	simSrv := httptest.NewServer(sim)
	defer simSrv.Close()

	type post struct {
		id, outcome string
		r           events.Result
		at          time.Time
	}
	var mu sync.Mutex
	var posts []post
	var problems []string
	verifier := webhook.Verifier{Secrets: []webhook.Secret{appSecret}}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		mu.Lock()
		defer mu.Unlock()
		id := req.Header.Get(webhook.HeaderID)
		if err := verifier.Verify(id, req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body); err != nil {
			problems = append(problems, "signature: "+err.Error())
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var r events.Result
		if err := json.Unmarshal(body, &r); err != nil {
			problems = append(problems, "body: "+err.Error())
		}
		posts = append(posts, post{id: id, outcome: req.Header.Get("Bridge-Outcome"), r: r, at: time.Now()})
		w.WriteHeader(http.StatusNoContent)
	}))
	defer app.Close()

	b := startServe(t, map[string]string{
		"BRIDGE_WEBHOOK_SECRETS":    hookSecret.Encoded(),
		"BRIDGE_APPLY_SECRET":       appSecret.Encoded(),
		"BRIDGE_RESULTS_URL":        app.URL + "/nowbridge/results",
		"BRIDGE_DATA_DIR":           t.TempDir(),
		"BRIDGE_SN_INSTANCE_URL":    simSrv.URL,
		"BRIDGE_SN_CLIENT_ID":       "cid",
		"BRIDGE_SN_CLIENT_SECRET":   "csecret",
		"BRIDGE_RECONCILE_INTERVAL": "0",
	}, "--embedded-nats-listen", "127.0.0.1:0")
	natsURL := logField(t, b.logs, "embedded NATS JetStream started", "url", b.exited)
	if err := sim.SetWebhooks(snsim.WebhookTarget{URL: "http://" + b.addr + "/webhooks/servicenow", Secrets: []webhook.Secret{hookSecret}}); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	results := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe("bridge.result.>", results)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	change, _ := json.Marshal(events.AppChange{ExternalID: "TCK-900", Version: 1, UpdatedAt: time.Now().UTC(),
		Fields: events.Fields{"title": "VPN drops every hour", "status": "new", "impact": "2", "urgency": "2"}})
	sent := time.Now()
	if err := nc.Publish("app.ticket.upsert", change); err != nil {
		t.Fatal(err)
	}
	var onStream events.Result
	select {
	case m := <-results:
		if m.Subject != "bridge.result.ticket.created" || m.Header.Get(events.HeaderMsgID) != "result:ticket:TCK-900:1:created" {
			t.Fatalf("result on %s with id %q, want bridge.result.ticket.created, result:ticket:TCK-900:1:created", m.Subject, m.Header.Get(events.HeaderMsgID))
		}
		if err := json.Unmarshal(m.Data, &onStream); err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no result within 15s of the app's change:\n%s", b.logs.String())
	}
	rec, ok := sim.Get("incident", onStream.SysID)
	if !ok || onStream.Number != rec["number"] || onStream.URL != simSrv.URL+"/nav_to.do?uri=incident.do?sys_id="+rec["sys_id"] {
		t.Fatalf("result %+v, want the created incident's number %s and its link", onStream, rec["number"])
	}

	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		n := len(posts)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no results POST within 15s:\n%s", b.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	got := posts[0]
	for _, p := range problems {
		t.Error(p)
	}
	mu.Unlock()
	if got.id != "result:ticket:TCK-900:1:created" || got.outcome != "created" || got.r.Number != onStream.Number || got.r.URL != onStream.URL {
		t.Errorf("POST %+v, want the created result under its id", got)
	}
	t.Logf("the app had %s's number on the stream and by POST %v after publishing the change", got.r.Number, got.at.Sub(sent).Round(time.Millisecond))

	b.shutdown(t)
	if strings.Contains(b.logs.String(), appSecret.KeyBase64()) || strings.Contains(b.logs.String(), "csecret") {
		t.Error("a secret appears in the logs")
	}
}
