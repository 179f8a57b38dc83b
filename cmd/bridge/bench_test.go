package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBench_EndToEndReportsEveryFigure runs every mode briefly and checks
// the JSON report: each section present, every figure positive.
func TestBench_EndToEndReportsEveryFigure(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"bench", "end-to-end", "--duration", "1s", "--rate", "200", "--records", "50",
		"--clients", "4", "--json"}, func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bridge bench end-to-end exited %d: %s", code, stderr.String())
	}
	var rep benchReport
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("the report is not the documented JSON: %v\n%s", err, stdout.String())
	}
	if rep.Mode != "end-to-end" || rep.GOMAXPROCS <= 0 || rep.GoVersion == "" {
		t.Errorf("header = %+v", rep)
	}
	if rep.Ingest == nil || rep.Apply == nil || rep.Writeback == nil || rep.Lag == nil {
		t.Fatalf("sections missing: ingest %v apply %v writeback %v lag %v", rep.Ingest != nil, rep.Apply != nil, rep.Writeback != nil, rep.Lag != nil)
	}
	positive := func(name string, v float64) {
		t.Helper()
		if !(v > 0) {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	in := rep.Ingest
	positive("ingest.forwarder.per_second", in.Forwarder.PerSecond)
	positive("ingest.forwarder.p50_ms", in.Forwarder.P50ms)
	positive("ingest.bridge.per_second", in.Bridge.PerSecond)
	positive("ingest.bridge.p99_ms", in.Bridge.P99ms)
	positive("ingest.ratio", in.Ratio)
	if in.Bridge.Failures != 0 || in.Forwarder.Failures != 0 {
		t.Errorf("ingest failures: forwarder %d, bridge %d", in.Forwarder.Failures, in.Bridge.Failures)
	}
	for name, l := range map[string]*latencyReport{"apply": rep.Apply, "writeback": rep.Writeback} {
		if l.Sent == 0 || l.Received != l.Sent {
			t.Errorf("%s: %d sent, %d received; want all of them", name, l.Sent, l.Received)
		}
		positive(name+".per_second", l.PerSecond)
		positive(name+".bridge_ms.p50", l.Bridge.P50)
		positive(name+".bridge_ms.p99", l.Bridge.P99)
		positive(name+".simulator_ms.p50", l.Simulator.P50)
		positive(name+".total_ms.p99", l.Total.P99)
		if l.Total.P50 < l.Bridge.P50 {
			t.Errorf("%s: total p50 %v below the bridge's own %v", name, l.Total.P50, l.Bridge.P50)
		}
	}
	positive("apply_lag.ingest_per_second", rep.Lag.IngestPerSecond)
	positive("apply_lag.stored", float64(rep.Lag.Stored))
	if rep.Lag.AppliedAtEnd+rep.Lag.LagAtEnd != rep.Lag.Stored {
		t.Errorf("apply lag: applied %d + lag %d != stored %d", rep.Lag.AppliedAtEnd, rep.Lag.LagAtEnd, rep.Lag.Stored)
	}
}

func TestBench_UnknownModeIsAUsageError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"bench", "fast"}, func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "ingest, apply, writeback") {
		t.Fatalf("exit %d, stderr %q; want 2 naming the modes", code, stderr.String())
	}
}

// BenchmarkIngest is `bridge bench ingest` as a Go benchmark, for profiles:
// 32 senders posting signed ~1 KiB webhooks to the minimal forwarder and to
// the receiver, on one embedded JetStream. allocs/op count the whole
// process (senders, HTTP, JetStream server) per request.
//
//	go test -run '^$' -bench Ingest -benchmem -cpuprofile cpu.out ./cmd/bridge
func BenchmarkIngest(b *testing.B) {
	st, err := startIngestStack(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer st.close()
	for _, tc := range []struct {
		name, url string
		phase     int
	}{{"forwarder", st.forwarder, 1}, {"bridge", st.receiver, 2}} {
		b.Run(tc.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 32, MaxConnsPerHost: 32}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			var seq atomic.Int64
			seq.Store(time.Now().UnixNano())
			b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0))) // RunParallel starts parallelism × GOMAXPROCS senders
			b.ReportAllocs()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := postWebhook(context.Background(), client, tc.url, st.secret, benchEvent(tc.phase, seq.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}
