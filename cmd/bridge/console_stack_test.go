package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// consoleStack is `bridge serve` with its console, against the simulator,
// after a workload that leaves a trace of everything the console and the
// Grafana dashboard show: a webhook applied to the app, an app change
// written back and its echo suppressed, a conflict, a 429, a gap found by
// reconcile, and two app changes ServiceNow refused, dead-lettered.
type consoleStack struct {
	t          *testing.T
	sim        *snsim.Server
	b          *servedBridge
	consoleURL string
	token      string // the console's token value
	js         jetstream.JetStream
	number     string // the incident the workload went through
	sysID      string
	gapNumber  string // the incident only reconcile found
}

// consoleToken is the stack's BRIDGE_ADMIN_TOKEN entry.
const consoleToken = "ops:console-test-token-0123456789abcdef"

func startConsoleStack(t *testing.T) *consoleStack {
	t.Helper()
	s := &consoleStack{t: t, token: strings.TrimPrefix(consoleToken, "ops:")}
	secret := webhook.NewSecret([]byte("console-stack-secret-0123456789ab"))
	s.sim = snsim.New(snsim.Config{ClientID: "cid", ClientSecret: "csecret"})
	t.Cleanup(s.sim.Close)
	simSrv := httptest.NewServer(s.sim)
	t.Cleanup(simSrv.Close)

	// A change no webhook reported (setWorkflow(false)): reconcile's first
	// pass, about 10 s after the start, finds it.
	gap, err := s.sim.InsertNoWorkflow("incident", map[string]string{"short_description": "VPN drops every hour", "urgency": "3", "impact": "3"}, "fred.luddy")
	if err != nil {
		t.Fatal(err)
	}
	s.gapNumber = gap["number"]

	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS":    secret.Encoded(),
		"BRIDGE_DATA_DIR":           t.TempDir(),
		"BRIDGE_SN_INSTANCE_URL":    simSrv.URL,
		"BRIDGE_SN_CLIENT_ID":       "cid",
		"BRIDGE_SN_CLIENT_SECRET":   "csecret",
		"BRIDGE_RECONCILE_INTERVAL": "1m",
		"BRIDGE_ADMIN_LISTEN":       "127.0.0.1:0",
		"BRIDGE_ADMIN_TOKEN":        consoleToken,
	}
	s.b = startServe(t, env, "--embedded-nats-listen", "127.0.0.1:0")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bridge serve logs:\n%s", s.b.logs.String())
		}
	})
	natsURL := logField(t, s.b.logs, "embedded NATS JetStream started", "url", s.b.exited)
	s.consoleURL = "http://" + logField(t, s.b.logs, "console listening", "addr", s.b.exited)
	if err := s.sim.SetWebhooks(snsim.WebhookTarget{URL: "http://" + s.b.addr + "/webhooks/servicenow", Secrets: []webhook.Secret{secret}}); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if s.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}

	// 1. A person opens an incident: the webhook's version reaches the app.
	rec, err := s.sim.Insert("incident", map[string]string{"short_description": "Email down", "urgency": "2", "impact": "2"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	s.number, s.sysID = rec["number"], rec["sys_id"]
	s.waitIdle("apply")
	// ServiceNow sends that webhook again (a retry after a lost answer):
	// stored once, counted as a duplicate.
	body := fmt.Appendf(nil, `{"table":"incident","sys_id":%q,"action":"insert","sys_mod_count":"0","sys_updated_on":%q,"record":{"number":%q,"short_description":"Email down"}}`,
		s.sysID, rec["sys_updated_on"], s.number)
	client := &http.Client{Timeout: 10 * time.Second}
	if code, answer := s.b.sendSigned(t, client, secret, "incident:"+s.sysID+":0:insert", body); code != http.StatusAccepted || !strings.Contains(answer, `"duplicates":1`) {
		t.Fatalf("the insert's webhook sent again: %d %s, want 202 with one duplicate", code, answer)
	}
	client.CloseIdleConnections()

	// 2. The app links its ticket and retitles it: written back, and the
	//    write's webhook is suppressed as the bridge's own echo.
	s.appChange(nc, "TCK-1", 2, events.Fields{"title": "Email down for everyone", "status": "in_progress"})
	s.waitSim("the app's title written", func(r snsim.Record) bool { return r["short_description"] == "Email down for everyone" })
	s.waitMetric("an echo suppressed", "bridge_echoes_suppressed_total", 1)
	s.waitIdle("apply")

	// 3. A conflict: ServiceNow changes the title without a webhook while
	//    the app changes it too (reconcile's first pass is seconds away).
	if _, err := s.sim.UpdateNoWorkflow("incident", s.sysID, map[string]string{"short_description": "Email down in building 2"}, "beth.anglin"); err != nil {
		t.Fatal(err)
	}
	s.appChange(nc, "TCK-1", 3, events.Fields{"title": "Email down: mail relay"})
	s.waitMetric("a conflict", "conflicts_total", 1)

	// 4. A 429: the instance's API semaphores are exhausted for a moment.
	if err := s.sim.SetFaults(snsim.Faults{SemaphoreRate: 1}); err != nil {
		t.Fatal(err)
	}
	s.appChange(nc, "TCK-1", 4, events.Fields{"priority": "1", "urgency": "1", "impact": "1"})
	s.waitMetric("a 429", "bridge_servicenow_rate_limited_total", 1)
	if err := s.sim.SetFaults(snsim.Faults{}); err != nil {
		t.Fatal(err)
	}
	s.waitSim("the change after the 429 written", func(r snsim.Record) bool { return r["urgency"] == "1" })

	// 5. ServiceNow refuses writes: two app changes are dead-lettered.
	s.sim.SetACL(snsim.ACL{DenyWrites: true})
	s.appChange(nc, "TCK-1", 5, events.Fields{"status": "on_hold"})
	s.appChange(nc, "TCK-2", 1, events.Fields{"title": "Printer on floor 3 jams", "status": "new"})
	deadline := time.Now().Add(slow)
	for {
		counts, err := dlq.Count(t.Context(), s.js)
		if err == nil && counts["writeback"] >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writeback did not dead-letter the two refused changes within %v (counts %v, %v)", slow, counts, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// 6. Reconcile's first pass finds the incident no webhook reported.
	s.waitMetric("reconcile's first pass finding the gap", "reconcile_gaps_total", 1)
	return s
}

// appChange publishes the app's change of its ticket, linked to the
// stack's incident for TCK-1.
func (s *consoleStack) appChange(nc *nats.Conn, id string, version int64, fields events.Fields) {
	s.t.Helper()
	ch := events.AppChange{ExternalID: id, Version: version, UpdatedAt: time.Now().UTC(), Fields: fields}
	if id == "TCK-1" {
		ch.SysID = s.sysID
	}
	b, _ := json.Marshal(ch)
	if err := nc.Publish("app.ticket.upsert", b); err != nil {
		s.t.Fatal(err)
	}
}

// waitIdle waits until a durable consumer has nothing pending or in flight.
func (s *consoleStack) waitIdle(consumer string) {
	s.t.Helper()
	deadline := time.Now().Add(slow)
	for {
		busy := "not found"
		if c, err := s.js.Consumer(s.t.Context(), events.StreamSN, consumer); err == nil {
			if info, err := c.Info(s.t.Context()); err == nil {
				if info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream > 0 {
					return
				}
				busy = fmt.Sprintf("%d pending, %d unacknowledged, delivered up to %d", info.NumPending, info.NumAckPending, info.Delivered.Stream)
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the %s consumer did not finish within %v (%s)", consumer, slow, busy)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *consoleStack) waitSim(what string, ok func(snsim.Record) bool) {
	s.t.Helper()
	waitSim(s.t, what, func() (snsim.Record, bool) { return s.sim.Get("incident", s.sysID) }, ok, slow)
}

// waitMetric waits until the bridge's /metrics sum of name reaches at least min.
func (s *consoleStack) waitMetric(what, name string, min float64) {
	s.t.Helper()
	deadline := time.Now().Add(slow)
	for {
		_, sums := scrapeMetrics(s.t, "http://"+s.b.addr+"/metrics")
		if sums[name] >= min {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("waited %v for %s: %s is %v, want at least %v", slow, what, name, sums[name], min)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrapeMetrics reads a Prometheus text exposition: every sample name it
// holds (a histogram's _bucket, _sum and _count included, as Prometheus
// stores them) and the sum of each name's samples.
func scrapeMetrics(t *testing.T, url string) (names map[string]bool, sums map[string]float64) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %d %s", url, resp.StatusCode, b)
	}
	names, sums = map[string]bool{}, map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end < 0 {
			continue
		}
		name := line[:end]
		names[name] = true
		fields := strings.Fields(line[strings.LastIndex(line, "}")+1:])
		if strings.Contains(line, "{") && len(fields) > 0 {
			if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
				sums[name] += v
			}
		} else if f := strings.Fields(line); len(f) >= 2 {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				sums[name] += v
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return names, sums
}

// consoleClient talks to the stack's console with its token as a script
// would (bearer header).
func (s *consoleStack) get(path string) (int, string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.consoleURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
