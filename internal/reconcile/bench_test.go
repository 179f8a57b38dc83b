package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
)

// BenchmarkReconcilePass measures one full pass over a seeded simulator
// table (50 records per second of sys_updated_on, pages of 1,000).
//
//	steady:   bridge_state already holds every version (an in-memory
//	          stand-in answers, so the figure is the ServiceNow scan):
//	          keyset vs offset paging.
//	backfill: nothing known yet, every record published to SN_EVENTS.
//
// 200k records only with NOWBRIDGE_BENCH_LARGE=1 (minutes on 2 cores):
//
//	NOWBRIDGE_BENCH_LARGE=1 go test -run '^$' -bench ReconcilePass -benchtime 1x ./internal/reconcile
//
// An in-process simulator puts its records on the benchmark's heap, and
// garbage collection then grows with the table, not with the pass. To keep
// the instance out of the measurement, run it as its own process and name
// it (the simulator seeds its table once):
//
//	bridge sim --listen 127.0.0.1:18081 --client-id bridge --client-secret s3cret --seed 200000 &
//	NOWBRIDGE_BENCH_SIM_URL=http://127.0.0.1:18081 NOWBRIDGE_BENCH_SIM_N=200000 go test -run '^$' -bench ReconcilePass -benchtime 1x ./internal/reconcile
func BenchmarkReconcilePass(b *testing.B) {
	if url := os.Getenv("NOWBRIDGE_BENCH_SIM_URL"); url != "" {
		n, err := strconv.Atoi(os.Getenv("NOWBRIDGE_BENCH_SIM_N"))
		if err != nil {
			b.Fatal("NOWBRIDGE_BENCH_SIM_N: the number of records the simulator was seeded with")
		}
		for _, mode := range []string{"steady/keyset", "steady/offset", "backfill/keyset"} {
			b.Run(fmt.Sprintf("%s/%dk", mode, n/1000), func(b *testing.B) {
				benchPass(b, nil, url, n, mode)
			})
		}
		return
	}
	sizes := []int{20_000}
	if os.Getenv("NOWBRIDGE_BENCH_LARGE") != "" {
		sizes = append(sizes, 200_000)
	}
	for _, n := range sizes {
		sim, url := benchSim(b, n)
		for _, mode := range []string{"steady/keyset", "steady/offset", "backfill/keyset"} {
			b.Run(fmt.Sprintf("%s/%dk", mode, n/1000), func(b *testing.B) {
				benchPass(b, sim, url, n, mode)
			})
		}
	}
}

func benchSim(b *testing.B, n int) (*snsim.Server, string) {
	b.Helper()
	sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 1, Logger: slog.New(slog.DiscardHandler)})
	if err := sim.Seed(n); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	b.Cleanup(func() { srv.Close(); sim.Close() })
	return sim, srv.URL
}

// simVersions answers from the simulator's own records: everything is up to date.
type simVersions map[string]int64

func (v simVersions) LastVersion(_ context.Context, _, sysID string) (int64, bool, bool, error) {
	mc, ok := v[sysID]
	return mc, ok, false, nil
}

func (v simVersions) RecordIDs(context.Context, string) ([]string, error) {
	return slices.Collect(maps.Keys(v)), nil
}

func benchPass(b *testing.B, sim *snsim.Server, url string, n int, mode string) {
	s := natstest.RunServer(b)
	_, js := natstest.Connect(b, s)
	ctx := b.Context()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, events.BucketState)
	if err != nil {
		b.Fatal(err)
	}
	sn, err := snclient.New(snclient.Config{InstanceURL: url, ClientID: "bridge", ClientSecret: "s3cret", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	var versions Versions = simVersions{}
	if mode != "backfill/keyset" {
		vs := simVersions{}
		if sim != nil {
			for _, id := range sim.IDs("incident") {
				rec, _ := sim.Get("incident", id)
				vs[id], _ = strconv.ParseInt(rec["sys_mod_count"], 10, 64)
			}
		} else {
			// Learn the versions from the instance itself, untimed.
			err := (&SNPager{Client: sn}).Scan(ctx, Query{Table: "incident", Fields: []string{"sys_mod_count"}, PageSize: 5000},
				func(rows []events.Fields, _ int) error {
					for _, r := range rows {
						vs[r["sys_id"]], _ = strconv.ParseInt(r["sys_mod_count"], 10, 64)
					}
					return nil
				})
			if err != nil {
				b.Fatal(err)
			}
		}
		versions = vs
	}
	pager := &SNPager{Client: sn, Offset: mode == "steady/offset"}
	m := mapping.Default(slog.New(slog.DiscardHandler))
	r, err := New(js, kv, pager, versions, Config{Tables: []string{"incident"}, Fields: m.Fields, PageSize: 1000, SkipDeletes: true})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var sum Summary
	for range b.N {
		sum, err = r.Pass(ctx, "incident", PassOptions{Full: true})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if sum.Scanned != n {
		b.Fatalf("scanned %d of %d records", sum.Scanned, n)
	}
	b.ReportMetric(float64(pager.Requests())/float64(b.N), "requests/op")
	b.ReportMetric(float64(sum.Gaps), "published/op")
	b.ReportMetric(float64(n)/(b.Elapsed().Seconds()/float64(b.N)), "records/s")
}
