package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/mapping"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/snclient"
	"github.com/nowbridge/nowbridge/internal/snsim"
	"github.com/nowbridge/nowbridge/internal/state"
)

// BenchmarkDeleteScan measures the presence scan of a table whose every
// record bridge_state knows (one in 2,000 deleted in ServiceNow without a
// webhook, so each scan confirms and publishes them), side by side in the
// same iterations with the passes it is compared to:
//
//	full         a full watermark pass (every record, the mapping's
//	             fields, by (sys_updated_on, sys_id)), deletes off
//	incremental  the pass BRIDGE_RECONCILE_INTERVAL runs when nothing
//	             changed: 5 minutes back, nothing found, deletes off (the
//	             in-process simulator's records end an hour ago; one in
//	             its own process must be seeded that way for this figure)
//	presence     the presence scan: list bridge_state's ids, read every
//	             sys_id (pages of 10,000), confirm the candidates, publish
//	             their deletes
//	presence1k   the same with pages of 1,000 (the records' page size)
//
// Each reports ms, ServiceNow requests and KB of response bodies per
// scan; ratio_* divides the presence scan's time by the others'. Seeding
// takes a while, so 200k records only with NOWBRIDGE_BENCH_LARGE=1:
//
//	NOWBRIDGE_BENCH_LARGE=1 go test -run '^$' -bench DeleteScan -benchtime 3x ./internal/reconcile
//
// As for BenchmarkReconcilePass, NOWBRIDGE_BENCH_SIM_URL and
// NOWBRIDGE_BENCH_SIM_N name a simulator in its own process instead.
func BenchmarkDeleteScan(b *testing.B) {
	if url := os.Getenv("NOWBRIDGE_BENCH_SIM_URL"); url != "" {
		n, err := strconv.Atoi(os.Getenv("NOWBRIDGE_BENCH_SIM_N"))
		if err != nil {
			b.Fatal("NOWBRIDGE_BENCH_SIM_N: the number of records the simulator was seeded with")
		}
		f := newDeleteScanFixture(b, nil, url, n)
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) { benchDeleteScan(b, f) })
		return
	}
	sizes := []int{20_000}
	if os.Getenv("NOWBRIDGE_BENCH_LARGE") != "" {
		sizes = append(sizes, 200_000)
	}
	for _, n := range sizes {
		// Records changed up to an hour ago: the incremental pass finds
		// nothing, as between bursts of activity.
		sim := snsim.New(snsim.Config{ClientID: "bridge", ClientSecret: "s3cret", Seed: 1, Logger: slog.New(slog.DiscardHandler)})
		if err := sim.SeedWith(n, snsim.SeedOptions{End: time.Now().Add(-time.Hour)}); err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(sim)
		b.Cleanup(func() { srv.Close(); sim.Close() })
		f := newDeleteScanFixture(b, sim, srv.URL, n)
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) { benchDeleteScan(b, f) })
	}
}

// countingTransport counts requests and response body bytes.
type countingTransport struct {
	base     http.RoundTripper
	requests atomic.Int64
	bytes    atomic.Int64
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if req.URL.Path != "/oauth_token.do" {
		c.requests.Add(1)
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.bytes}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// cost is what one measured step took.
type cost struct {
	d        time.Duration
	requests int64
	bytes    int64
}

func (c *cost) add(o cost) { c.d += o.d; c.requests += o.requests; c.bytes += o.bytes }

// deleteScanFixture is one instance prepared once per size: the benchmark
// function runs more than once (b.N grows), the deletes happen once.
type deleteScanFixture struct {
	url      string
	n        int               // records before the deletes
	versions map[string]string // every record before the deletes: "updated_on|mod_count"
	deleted  int
}

func newDeleteScanFixture(b *testing.B, sim *snsim.Server, url string, n int) *deleteScanFixture {
	ctx := b.Context()
	sn, err := snclient.New(snclient.Config{InstanceURL: url, ClientID: "bridge", ClientSecret: "s3cret", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	f := &deleteScanFixture{url: url, n: n, versions: map[string]string{}}
	err = (&SNPager{Client: sn}).Scan(ctx, Query{Table: "incident", Fields: []string{"sys_mod_count"}, PageSize: 5000},
		func(rows []events.Fields, _ int) error {
			for _, r := range rows {
				f.versions[r["sys_id"]] = r["sys_updated_on"] + "|" + r["sys_mod_count"]
			}
			return nil
		})
	if err != nil {
		b.Fatal(err)
	}
	if len(f.versions) != n {
		b.Fatalf("the simulator holds %d records, want %d", len(f.versions), n)
	}
	// One in 2,000 deleted without a webhook.
	for id := range f.versions {
		if f.deleted == max(n/2000, 1) {
			break
		}
		if sim != nil {
			err = sim.DeleteNoWorkflow("incident", id, "admin")
		} else {
			err = sn.Delete(ctx, "incident", id)
		}
		if err != nil {
			b.Fatal(err)
		}
		f.deleted++
	}
	return f
}

func benchDeleteScan(b *testing.B, f *deleteScanFixture) {
	ctx := b.Context()
	n, deleted := f.n, f.deleted
	s := natstest.RunServer(b)
	_, js := natstest.Connect(b, s)
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	store, _, err := state.Open(ctx, js)
	if err != nil {
		b.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	ct := &countingTransport{base: tr}
	sn, err := snclient.New(snclient.Config{InstanceURL: f.url, ClientID: "bridge", ClientSecret: "s3cret",
		HTTPClient: &http.Client{Transport: ct}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	// bridge_state knows every record, the deleted ones too, at its
	// version before the deletes (untimed).
	if err := seedState(ctx, js, f.versions); err != nil {
		b.Fatal(err)
	}

	m := mapping.Default(slog.New(slog.DiscardHandler))
	newRec := func(cfg Config) *Reconciler {
		cfg.Tables, cfg.Fields, cfg.PageSize = []string{"incident"}, m.Fields, 1000
		r, err := New(js, store.KV(), &SNPager{Client: sn}, store, cfg)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	passes := newRec(Config{SkipDeletes: true})
	scans := newRec(Config{})
	scans1k := newRec(Config{IDPageSize: 1000})
	measure := func(f func() error) cost {
		r0, b0, t0 := ct.requests.Load(), ct.bytes.Load(), time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return cost{time.Since(t0), ct.requests.Load() - r0, ct.bytes.Load() - b0}
	}
	presence := func(r *Reconciler) func() error {
		return func() error {
			var sum Summary
			ps, err := r.presence(ctx, "incident", nil, PassOptions{}, &sum)
			if err == nil && (ps.Deleted != deleted || ps.Scanned != n-deleted) {
				err = fmt.Errorf("presence scan %+v; want %d of %d records found deleted", ps, deleted, n)
			}
			return err
		}
	}
	var full, incr, pres, pres1k, snapshot cost
	b.ResetTimer()
	for range b.N {
		full.add(measure(func() error {
			sum, err := passes.Pass(ctx, "incident", PassOptions{Full: true})
			if err == nil && sum.Scanned != n-deleted {
				err = fmt.Errorf("full pass scanned %d, want %d", sum.Scanned, n-deleted)
			}
			return err
		}))
		incr.add(measure(func() error {
			_, err := passes.Pass(ctx, "incident", PassOptions{Since: time.Now().Add(-5 * time.Minute)})
			return err
		}))
		pres.add(measure(presence(scans)))
		pres1k.add(measure(presence(scans1k)))
		snapshot.add(measure(func() error {
			ids, err := store.RecordIDs(ctx, "incident")
			if err == nil && len(ids) != n {
				err = fmt.Errorf("bridge_state lists %d ids, want %d", len(ids), n)
			}
			return err
		}))
	}
	b.StopTimer()
	per := func(c cost, name string) {
		b.ReportMetric(float64(c.d.Milliseconds())/float64(b.N), name+"_ms/op")
		b.ReportMetric(float64(c.requests)/float64(b.N), name+"_requests/op")
		b.ReportMetric(float64(c.bytes)/1024/float64(b.N), name+"_KB/op")
	}
	per(full, "full")
	per(incr, "incremental")
	per(pres, "presence")
	per(pres1k, "presence1k")
	b.ReportMetric(float64(snapshot.d.Milliseconds())/float64(b.N), "snapshot_ms/op")
	b.ReportMetric(float64(pres.d)/float64(full.d), "ratio_presence/full")
	b.ReportMetric(float64(pres.d)/float64(incr.d), "ratio_presence/incremental")
}

// seedState writes a bridge_state record per id ("updated_on|mod_count")
// as the apply pipeline would have, many writes in flight at once.
func seedState(ctx context.Context, js jetstream.JetStream, versions map[string]string) error {
	i := 0
	for id, v := range versions {
		at, mc, _ := strings.Cut(v, "|")
		ver, err := strconv.ParseInt(mc, 10, 64)
		if err != nil {
			return err
		}
		body, err := json.Marshal(state.Record{Version: ver, UpdatedOn: at})
		if err != nil {
			return err
		}
		if _, err := js.PublishAsync("$KV."+events.BucketState+"."+state.RecordKey("incident", id), body); err != nil {
			return err
		}
		if i++; i%5000 == 0 {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("bridge_state writes not acknowledged within a minute")
	}
}
