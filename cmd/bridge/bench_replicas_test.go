package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets `bridge bench replicas` run this test binary as its
// replicas: started with benchReplicaEnv set, it is `bridge` (run with its
// arguments, "serve"), not the tests.
func TestMain(m *testing.M) {
	if os.Getenv(benchReplicaEnv) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestBenchReplicas_SideBySideAndFailover runs `bridge bench replicas`
// briefly (two turns per configuration, one rate, one kill with a 2 s lease)
// and checks the report: both configurations measured in both directions
// with every change accounted for, webhooks spread over three replicas, one
// owner throughout, and a fail-over that takes at least part of the lease
// TTL (a killed owner does not release it) and less than its worst case.
func TestBenchReplicas_SideBySideAndFailover(t *testing.T) {
	var stdout, stderr bytes.Buffer
	began := time.Now()
	code := run(t.Context(), []string{"bench", "replicas", "--duration", "1s", "--rates", "100", "--records", "30",
		"--failover-ttls", "2s", "--failover-settle", "3s", "--json", "--quiet"},
		func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bridge bench replicas exited %d: %s", code, stderr.String())
	}
	var rep benchReport
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("the report is not the documented JSON: %v\n%s", err, stdout.String())
	}
	r := rep.Replicas
	if rep.Mode != "replicas" || r == nil || rep.Apply != nil || rep.Ingest != nil {
		t.Fatalf("want only the replicas section, got mode %q: %s", rep.Mode, stdout.String())
	}
	if r.NATSNodes != 3 || r.StreamReplicas != 3 || r.Turns != 2 {
		t.Errorf("nodes %d, stream replicas %d, turns %d; want 3, 3, 2", r.NATSNodes, r.StreamReplicas, r.Turns)
	}
	for _, set := range []replicaSetReport{r.One, r.Three} {
		if len(set.Apply) != 1 || len(set.Writeback) != 1 {
			t.Fatalf("%d replica(s): %d apply and %d writeback figures, want one each (one rate)", set.Replicas, len(set.Apply), len(set.Writeback))
		}
		for name, l := range map[string]*latencyReport{"apply": set.Apply[0], "writeback": set.Writeback[0]} {
			if l.Sent == 0 || l.Received != l.Sent {
				t.Errorf("%d replica(s), %s: %d sent, %d received; want every one", set.Replicas, name, l.Sent, l.Received)
			}
			if !(l.PerSecond > 0) || !(l.Total.P50 > 0) || l.Total.P99 < l.Total.P50 {
				t.Errorf("%d replica(s), %s: %.1f/s, p50 %.2f ms, p99 %.2f ms; want positive, p99 ≥ p50", set.Replicas, name, l.PerSecond, l.Total.P50, l.Total.P99)
			}
		}
		if set.Failed != 0 || set.Webhooks == 0 {
			t.Errorf("%d replica(s): %d webhooks through the front, %d failed; want some, none failed", set.Replicas, set.Webhooks, set.Failed)
		}
	}
	if len(r.Three.PerReplica) != 3 {
		t.Errorf("3 replicas: webhooks per replica %v, want three counts", r.Three.PerReplica)
	}
	for i, n := range r.Three.PerReplica {
		if n*5 < r.Three.Webhooks { // round-robin: about a third each
			t.Errorf("3 replicas: replica %d answered %d of %d webhooks; round-robin should give it about a third", i, n, r.Three.Webhooks)
		}
	}
	if r.OwnerChanges != 0 {
		t.Errorf("the sync owner moved %d times while the standbys came and went; the first replica should own it throughout", r.OwnerChanges)
	}
	if len(r.Ratios) != 2 {
		t.Errorf("ratios %+v, want apply and writeback at 100/s", r.Ratios)
	}
	for _, q := range r.Ratios {
		if !(q.Throughput > 0) || !(q.P99 > 0) {
			t.Errorf("ratio %+v: want positive", q)
		}
	}
	if len(r.Failover) != 1 || len(r.Failover[0].Kills) != 1 {
		t.Fatalf("fail-over %+v, want one kill with a 2s lease", r.Failover)
	}
	k := r.Failover[0].Kills[0]
	// The lease is renewed every quarter TTL, so a dead owner's expires
	// 1.5-2 s after the kill; a standby polls every 0.2 s. A busy 2-core
	// machine may delay it by seconds, never make it earlier.
	if k.AcquiredMS < 1000 || k.AcquiredMS > 15000 {
		t.Errorf("ownership moved %.0f ms after the owner's death with a 2s lease; want from about 1.5 s (the lease outlives its holder) to a few seconds", k.AcquiredMS)
	}
	if k.FirstApplyMS < k.AcquiredMS {
		t.Errorf("first bridge.apply %.0f ms after the death, before the new owner took over at %.0f ms", k.FirstApplyMS, k.AcquiredMS)
	}
	if k.Webhooks == 0 || k.Failed != 0 {
		t.Errorf("during the fail-over %d webhooks, %d failed; every one should be accepted by a live replica", k.Webhooks, k.Failed)
	}
	if (k.Missing == 0) != (k.AllAppliedMS > 0 || k.PendingAtKill == 0) {
		t.Errorf("fail-over: %d pending at the kill, %d missing, all applied after %.0f ms: inconsistent", k.PendingAtKill, k.Missing, k.AllAppliedMS)
	}
	t.Logf("bench replicas in %s: 3/1 ratios %+v; fail-over %+v", time.Since(began).Round(time.Second), r.Ratios, k)
}
