package status

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestReporter_CountersSumEverySeriesIntoTheProcessReport(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	published := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bridge_ingest_events_published_total"}, []string{"table"})
	limited := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bridge_servicenow_rate_limited_total"}, []string{"table"})
	unrelated := prometheus.NewCounter(prometheus.CounterOpts{Name: "bridge_unrelated_total"})
	reg.MustRegister(published, limited, unrelated)
	published.WithLabelValues("incident").Add(5)
	published.WithLabelValues("problem").Add(2)
	limited.WithLabelValues("incident").Inc()
	unrelated.Add(100)

	rp := &Reporter{JS: js, ID: "bridge-1", Gatherer: reg, Snapshot: func() Process {
		return Process{Extra: map[string]string{"sync_owner": "true"}}
	}}
	if err := rp.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := Collect(ctx, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Processes) != 1 {
		t.Fatalf("processes = %+v, want the one report", rep.Processes)
	}
	c := rep.Processes[0].Counters
	if c["bridge_ingest_events_published_total"] != 7 || c["bridge_servicenow_rate_limited_total"] != 1 || c["conflicts_total"] != 0 {
		t.Errorf("counters = %v, want published 7 (both tables), rate limited 1, conflicts 0 (no series yet)", c)
	}
	if _, ok := c["bridge_unrelated_total"]; ok {
		t.Errorf("counters carry a metric not in ReportedCounters: %v", c)
	}
	line := rep.Processes[0].CounterLine()
	for _, want := range []string{"ingested 7", "429s 1 of 0 requests", "(sync owner)"} {
		if !strings.Contains(line, want) {
			t.Errorf("counter line %q lacks %q", line, want)
		}
	}
	if rep.Streams[0].LastSeq != 0 {
		t.Errorf("SN_EVENTS last seq %d on an empty stream", rep.Streams[0].LastSeq)
	}
}
