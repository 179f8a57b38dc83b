package main

import (
	"encoding/json"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// dashboardFile is the Grafana dashboard shipped for the bridge's metrics.
const dashboardFile = "../../deploy/grafana/nowbridge.json"

type grafanaPanel struct {
	ID      int            `json:"id"`
	Type    string         `json:"type"`
	Title   string         `json:"title"`
	GridPos map[string]int `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's
}

// promQLNames returns the metric names a PromQL expression selects: every
// identifier that is not a function, an aggregation, a keyword or a label
// (in {...} matchers and by/without/on/ignoring/group_* lists), once
// strings, ranges, durations and numbers are taken out.
func promQLNames(expr string) []string {
	strip := func(re, s string) string { return regexp.MustCompile(re).ReplaceAllString(s, " ") }
	e := strip(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`, expr)
	e = strip(`\{[^}]*\}`, e)
	e = strip(`\[[^\]]*\]`, e)
	e = strip(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`, e)
	e = strip(`\$\w+`, e)
	e = strip(`\boffset\s+-?[0-9a-z]+`, e)
	e = strip(`\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b`, e)
	keywords := []string{"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
		"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group", "inf", "nan"}
	var out []string
	ident := regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	for _, loc := range ident.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		if strings.HasPrefix(strings.TrimLeft(e[loc[1]:], " \t\n"), "(") || slices.Contains(keywords, strings.ToLower(name)) {
			continue // a function or an aggregation
		}
		out = append(out, name)
	}
	return out
}

func TestPromQLNames_FindsOnlyMetricNames(t *testing.T) {
	cases := map[string][]string{
		`sum by (table) (rate(bridge_ingest_events_published_total{job=~"$job"}[$__rate_interval]))`:          {"bridge_ingest_events_published_total"},
		`histogram_quantile(0.99, sum by (le) (rate(bridge_ingest_publish_seconds_bucket{job=~"$job"}[5m])))`: {"bridge_ingest_publish_seconds_bucket"},
		`sum(rate(a_total{x="rate(b)"}[5m])) / clamp_min(sum(rate(c_total[5m])), 1e-9)`:                       {"a_total", "c_total"},
		`max by (instance) (bridge_sync_owner{job=~"$job"}) == 1`:                                             {"bridge_sync_owner"},
		`time() - max by (table) (reconcile_last_success_timestamp_seconds)`:                                  {"reconcile_last_success_timestamp_seconds"},
		`min(bridge_servicenow_token_expiry_timestamp_seconds > 0) - time()`:                                  {"bridge_servicenow_token_expiry_timestamp_seconds"},
		`sum without (instance) (x_total) and on (table) group_left (field) y offset 5m`:                      {"x_total", "y"},
	}
	for expr, want := range cases {
		if got := promQLNames(expr); !slices.Equal(got, want) {
			t.Errorf("promQLNames(%s) = %v, want %v", expr, got, want)
		}
	}
}

// TestGrafanaDashboard_QueriesOnlyMetricsTheBridgeExports runs the bridge
// through a workload that makes every metric show a series (a Prometheus
// vector without one is absent from /metrics), scrapes it, and checks that
// every name the dashboard's PromQL uses is exported; and that the
// dashboard covers what an operator needs and is well formed.
func TestGrafanaDashboard_QueriesOnlyMetricsTheBridgeExports(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string         `json:"uid"`
		Title      string         `json:"title"`
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardFile, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("the dashboard needs a uid and a title (got %q, %q)", dash.UID, dash.Title)
	}
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" {
		t.Errorf("variables %v, want a datasource variable and a job query", vars)
	}

	used := map[string][]string{} // metric -> panel titles
	ids := map[int]bool{}
	exprs := 0
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d is used twice", p.ID)
			}
			ids[p.ID] = true
			if p.GridPos["w"] <= 0 || p.GridPos["h"] <= 0 || p.GridPos["x"]+p.GridPos["w"] > 24 {
				t.Errorf("panel %q: gridPos %v does not fit the 24-column grid", p.Title, p.GridPos)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				exprs++
				if tg.RefID == "" {
					t.Errorf("panel %q: a query without refId", p.Title)
				}
				if !strings.Contains(tg.Expr, `job=~"$job"`) {
					t.Errorf("panel %q: %s does not filter on the job variable", p.Title, tg.Expr)
				}
				names := promQLNames(tg.Expr)
				if len(names) == 0 {
					t.Errorf("panel %q: no metric in %s", p.Title, tg.Expr)
				}
				for _, n := range names {
					used[n] = append(used[n], p.Title)
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	// What the issue asks the dashboard to show.
	for _, need := range []string{
		"bridge_ingest_events_published_total", "bridge_ingest_publish_seconds_bucket", // ingest rate and latency
		"bridge_consumer_pending",                                                  // consumer lag
		"bridge_writeback_messages_total",                                          // writeback outcomes
		"bridge_servicenow_rate_limited_total", "bridge_servicenow_requests_total", // 429 share
		"bridge_echoes_suppressed_total", // echo suppressions
		"bridge_dlq_messages",            // DLQ depth
		"bridge_sync_owner",              // sync owner
	} {
		if len(used[need]) == 0 {
			t.Errorf("the dashboard does not query %s", need)
		}
	}

	s := startConsoleStack(t)
	exported, _ := scrapeMetrics(t, "http://"+s.b.addr+"/metrics")
	// The console's sampler exports lag and dead letters every few seconds.
	deadline := time.Now().Add(slow)
	for !exported["bridge_consumer_pending"] && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		exported, _ = scrapeMetrics(t, "http://"+s.b.addr+"/metrics")
	}
	var missing []string
	for _, n := range slices.Sorted(maps.Keys(used)) {
		if !exported[n] {
			missing = append(missing, n+" (panels: "+strings.Join(used[n], ", ")+")")
		}
	}
	if len(missing) > 0 {
		t.Errorf("the dashboard queries metrics the bridge does not export:\n  %s", strings.Join(missing, "\n  "))
	}
	t.Logf("%d queries over %d metrics, every one exported by bridge serve", exprs, len(used))
}
