package trace

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/events"
)

var (
	benchMsgs    = flag.Int("trace.msgs", 1_000_000, "messages BenchmarkTimeline1M stores in BRIDGE_TRACE, and as many in SN_EVENTS")
	benchVersion = flag.Int("trace.versions", 50, "entries per record in BenchmarkTimeline1M (records = msgs / versions)")
)

// BenchmarkTimeline1M fills BRIDGE_TRACE and SN_EVENTS with -trace.msgs
// messages each (default 1,000,000): -trace.versions versions of each of
// msgs/versions incidents, interleaved as traffic stores them (version 1
// of every record, then version 2, ...), each an SN_EVENTS event and its
// apply entry naming it. It then times a naive reading of one record's
// story, an ordered consumer over the whole of BRIDGE_TRACE keeping the
// record's entries, and measures Timeline of that record (by its number:
// index, subject-filtered batched direct gets, a direct get per event):
// "x_faster_than_scan" is their ratio in the same run.
//
//	go test -run '^$' -bench Timeline1M -benchtime 20x ./internal/trace
func BenchmarkTimeline1M(b *testing.B) {
	e := newEnv(b)
	records := max(*benchMsgs / *benchVersion, 1)
	start := time.Now()
	fillBench(b, e, records, *benchVersion)
	b.Logf("stored %d events in SN_EVENTS and %d entries in BRIDGE_TRACE over %d records in %s",
		records**benchVersion, records**benchVersion, records, time.Since(start).Round(time.Second))
	if st, err := e.js.Stream(context.Background(), events.StreamTrace); err == nil {
		info := st.CachedInfo().State
		b.Logf("BRIDGE_TRACE: %d messages, %d bytes (%d per message, subjects and headers included)", info.Msgs, info.Bytes, info.Bytes/max(info.Msgs, 1))
	}
	target := records / 2
	number := benchNumber(target)
	subject := RecordSubject("incident", benchSysID(target))

	var scans []time.Duration
	for range 3 {
		t0 := time.Now()
		if n := naiveScan(b, e, subject); n != *benchVersion {
			b.Fatalf("the scan found %d entries of %s, want %d", n, number, *benchVersion)
		}
		scans = append(scans, time.Since(t0))
	}
	slices.Sort(scans)
	scan := scans[1]
	b.Logf("naive scan of BRIDGE_TRACE for one record: %v (median of 3: %v)", scan, scans)

	store := NewStore(e.js, e.states, e.links)
	b.Run("timeline", func(b *testing.B) {
		b.ReportAllocs()
		t0 := time.Now()
		for range b.N {
			tl, err := store.Timeline(context.Background(), number)
			if err != nil {
				b.Fatal(err)
			}
			if len(tl.Steps) != 2**benchVersion || tl.Steps[len(tl.Steps)-1].Message == nil {
				b.Fatalf("timeline of %s has %d steps, want %d with their messages", number, len(tl.Steps), 2**benchVersion)
			}
		}
		per := time.Since(t0) / time.Duration(b.N)
		b.ReportMetric(float64(scan.Milliseconds()), "scan_ms")
		b.ReportMetric(float64(scan)/float64(per), "x_faster_than_scan")
	})
}

func benchSysID(i int) string { return fmt.Sprintf("%032x", i+1) }
func benchNumber(i int) string {
	return fmt.Sprintf("INC%07d", i+1)
}

// fillBench stores versions events of each record in SN_EVENTS, each with
// its apply entry in BRIDGE_TRACE, and each record's number index entry.
func fillBench(b *testing.B, e *env, records, versions int) {
	b.Helper()
	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		b.Fatal(err)
	}
	// An SN_EVENTS body of the usual size (about 600 bytes).
	event := func(i, v int) []byte {
		return fmt.Appendf(nil, `{"instance":"dev00000","table":"incident","sys_id":"%s","action":"update","sys_mod_count":"%d",`+
			`"sys_updated_on":"2026-11-28 10:00:00","sys_updated_by":"beth.anglin","changed":["state","comments"],`+
			`"record":{"number":"%s","short_description":"Email down for the whole floor","description":"Users on the third floor cannot send or receive mail since 9:00",`+
			`"state":"2","priority":"3","urgency":"2","impact":"2","correlation_id":"TCK-%d","comments":"","work_notes":""},"source":"webhook"}`,
			benchSysID(i), v, benchNumber(i), i+1)
	}
	var wg sync.WaitGroup
	var once sync.Once
	var failed error
	var stopped atomic.Bool
	fail := func(err error) {
		once.Do(func() {
			failed = err // read after wg.Wait
			stopped.Store(true)
		})
	}
	const workers, batch = 2, 512
	wait := jetstream.WithStallWait(time.Minute) // the server sets the pace
	type pending struct {
		i, v int
		f    jetstream.PubAckFuture
	}
	for w := range workers {
		wg.Go(func() {
			var futures []pending
			// Each batch of events is stored, then their entries name
			// their sequences.
			flush := func() {
				for _, p := range futures {
					var seq uint64
					select {
					case ack := <-p.f.Ok():
						seq = ack.Sequence
					case err := <-p.f.Err():
						fail(err)
						return
					}
					entry := Entry{
						Time: time.Now(), Stage: StageApply, Source: SourceWebhook, Table: "incident", SysID: benchSysID(p.i), Number: benchNumber(p.i),
						Entity: "ticket", ExternalID: fmt.Sprint("TCK-", p.i+1), Action: "update", Version: int64(p.v), Decision: Applied,
						Stored: time.Now(), Refs: []Ref{{Stream: events.StreamSN, Seq: seq}},
					}
					if _, err := js.PublishMsgAsync(&nats.Msg{Subject: entry.Subject(), Data: entry.appendJSON(nil)}, wait); err != nil {
						fail(err)
						return
					}
					if p.v == 0 {
						idx := fmt.Appendf(nil, `{"table":"incident","sys_id":%q}`, benchSysID(p.i))
						if _, err := js.PublishMsgAsync(&nats.Msg{Subject: NumberSubject(benchNumber(p.i)), Data: idx}, wait); err != nil {
							fail(err)
							return
						}
					}
				}
				futures = futures[:0]
			}
			for v := range versions {
				for i := w; i < records; i += workers {
					if stopped.Load() {
						return
					}
					f, err := js.PublishMsgAsync(&nats.Msg{Subject: "sn.incident.update", Data: event(i, v)}, wait)
					if err != nil {
						fail(err)
						return
					}
					futures = append(futures, pending{i: i, v: v, f: f})
					if len(futures) == batch {
						flush()
					}
				}
			}
			flush()
		})
	}
	wg.Wait()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("trace entries not acknowledged within a minute")
	}
	if failed != nil {
		b.Fatal(failed)
	}
}

// naiveScan reads the whole of BRIDGE_TRACE with a pull consumer of its
// own (no acks) and counts the entries on subject: what reading a record's
// story costs without a subject per record. The consumer is deleted after,
// so nothing it had asked for is still on its way while Timeline is timed.
func naiveScan(b *testing.B, e *env, subject string) int {
	b.Helper()
	ctx := context.Background()
	st, err := e.js.Stream(ctx, events.StreamTrace)
	if err != nil {
		b.Fatal(err)
	}
	last := st.CachedInfo().State.LastSeq
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		InactiveThreshold: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.DeleteConsumer(ctx, cons.CachedInfo().Name) }()
	found := 0
	for {
		batch, err := cons.Fetch(4096, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		for msg := range batch.Messages() {
			if msg.Subject() == subject {
				if _, err := decodeEntry(msg.Data()); err != nil {
					b.Fatal(err)
				}
				found++
			}
			meta, err := msg.Metadata()
			if err != nil {
				b.Fatal(err)
			}
			if meta.Sequence.Stream >= last {
				return found
			}
		}
		if err := batch.Error(); err != nil {
			b.Fatal(err)
		}
	}
}
