package main

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/snsim"
)

// getPage fetches one of the helpdesk's pages.
func getPage(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", u, resp.StatusCode, b)
	}
	return string(b)
}

// waitPageShows polls a helpdesk page until it matches re.
func waitPageShows(t *testing.T, u string, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		body := getPage(t, u)
		if m := re.FindStringSubmatch(body); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s to show %s; it shows:\n%s", timeout, u, re, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An incident created in ServiceNow appears in the helpdesk of bridge dev
// --app, is linked (its correlation_id becomes the helpdesk's id, once),
// and an edit in the helpdesk then reaches it.
func TestDevApp_IncidentCreatedInServiceNowIsImportedAndLinked(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logs := &lockedBuffer{}
	st, wait, err := startDev(ctx, logs, devOptions{listen: "127.0.0.1:0", simListen: "127.0.0.1:0", natsListen: "127.0.0.1:0",
		app: true, appListen: "127.0.0.1:0", dataDir: t.TempDir(), tables: []string{"incident"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("dev stopped with %v", err)
		}
		if t.Failed() {
			t.Logf("dev logs:\n%s", logs.String())
		}
	}()
	rec, err := st.sim.Insert("incident", map[string]string{"short_description": "Phoned in: badge reader dead", "urgency": "2", "impact": "2"}, "beth.anglin")
	if err != nil {
		t.Fatal(err)
	}
	sysID, number := rec["sys_id"], rec["number"]
	row := waitPageShows(t, st.appURL+"/fragments/tickets",
		regexp.MustCompile(`<tr data-ticket="([^"]+)">\s*<td><a[^>]*>[^<]*</a></td>\s*<td class="title">Phoned in: badge reader dead</td>[\s\S]*?`+number), slow)
	id := row[1]
	waitSim(t, "the incident linked to the helpdesk's ticket", func() (snsim.Record, bool) { return st.sim.Get("incident", sysID) },
		func(r snsim.Record) bool { return r["correlation_id"] == id }, slow)
	waitPageShows(t, st.appURL+"/tickets/"+id+"/fragment", regexp.MustCompile(`data-sync="synced"`), slow)

	form := url.Values{"base_title": {"Phoned in: badge reader dead"}, "title": {"Badge reader at door 2 dead"},
		"base_description": {""}, "description": {""}, "base_status": {"new"}, "status": {"in_progress"},
		"base_urgency": {"2"}, "urgency": {"2"}, "base_impact": {"2"}, "impact": {"2"}}
	resp, err := http.PostForm(st.appURL+"/tickets/"+id, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitSim(t, "the helpdesk's edit", func() (snsim.Record, bool) { return st.sim.Get("incident", sysID) },
		func(r snsim.Record) bool {
			return r["short_description"] == "Badge reader at door 2 dead" && r["state"] == "2"
		}, slow)
	waitPageShows(t, st.appURL+"/tickets/"+id+"/fragment", regexp.MustCompile(`data-sync="synced"`), slow)
	if n := strings.Count(getPage(t, st.appURL+"/fragments/tickets"), "<tr data-ticket="); n != 1 {
		t.Fatalf("%d tickets, want the one imported", n)
	}
}
