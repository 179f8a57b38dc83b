// Command loadgen measures the ingest path end to end: signed webhook
// requests per second through the inbound receiver into an embedded
// JetStream, next to the raw JetStream publish rate of the same events from
// the same process, at the same concurrency, in one run.
//
//	go run ./cmd/loadgen -clients 64 -duration 10s
//
// Everything listens on random loopback ports and stores under a temporary
// directory that is removed at the end.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/inbound"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

func main() {
	clients := flag.Int("clients", 64, "concurrent clients in each phase")
	duration := flag.Duration("duration", 10*time.Second, "length of each phase")
	flag.Parse()
	if err := run(*clients, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

type result struct {
	name      string
	n         int64
	elapsed   time.Duration
	latencies []time.Duration
}

func (r result) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r result) String() string {
	slices.Sort(r.latencies)
	q := func(p float64) time.Duration {
		if len(r.latencies) == 0 {
			return 0
		}
		return r.latencies[int(p*float64(len(r.latencies)-1))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("%-28s %8d events in %5.1fs = %8.0f /s   p50 %8s   p99 %8s", r.name, r.n, r.elapsed.Seconds(), r.rate(), q(0.50), q(0.99))
}

func run(clients int, duration time.Duration) error {
	dir, err := os.MkdirTemp("", "nowbridge-loadgen-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := broker.StartEmbedded(broker.EmbeddedConfig{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		return err
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	ctx := context.Background()

	// The receiver's connection, as in `bridge serve`.
	nc, err := broker.Connect(ctx, srv.ClientURL(), "loadgen-receiver", nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		return err
	}
	secret := webhook.NewSecret([]byte("loadgen-secret-0123456789abcdefg"))
	rcv, err := inbound.New(inbound.Config{Conn: nc, Secrets: []webhook.Secret{secret}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- rcv.Serve(sctx, ln, 10*time.Second) }()
	defer func() { stop(); <-served }()

	// The raw publisher's own connection, in the same process.
	rawNC, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return err
	}
	defer rawNC.Close()
	rawJS, err := jetstream.New(rawNC)
	if err != nil {
		return err
	}

	sample, _ := events.EncodeWebhookBody(newEvent(0, 0))
	fmt.Printf("ingest load: %d clients, %s per phase, ~%d-byte events, GOMAXPROCS %d, %s\n",
		clients, duration, len(sample), runtime.GOMAXPROCS(0), runtime.Version())

	raw := phase("raw JetStream publish", clients, duration, func(seq int64) error {
		ev := newEvent(1, seq)
		ev.Source = events.SourceWebhook
		data, err := json.Marshal(ev) // the receiver's stored form
		if err != nil {
			return err
		}
		msg := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{}}
		msg.Header.Set(events.HeaderMsgID, ev.MsgID())
		msg.Header.Set(events.HeaderSource, events.SourceWebhook)
		ack, err := rawJS.PublishMsg(ctx, msg)
		if err == nil && ack.Duplicate {
			err = fmt.Errorf("unexpected duplicate %s", ev.MsgID())
		}
		return err
	})
	if raw.n == 0 {
		return fmt.Errorf("no raw publish succeeded")
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	url := "http://" + ln.Addr().String() + inbound.Path
	hook := phase("signed webhook -> 202", clients, duration, func(seq int64) error {
		ev := newEvent(2, seq)
		body, err := events.EncodeWebhookBody(ev)
		if err != nil {
			return err
		}
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		webhook.SetHeaders(req.Header, secret, ev.MsgID(), time.Now(), body)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || !bytes.Contains(answer, []byte(`"accepted":1`)) {
			return fmt.Errorf("answer %d %s", resp.StatusCode, answer)
		}
		return nil
	})

	fmt.Println(raw)
	fmt.Println(hook)
	fmt.Printf("ratio webhook/raw: %.2f\n", hook.rate()/raw.rate())
	return nil
}

// phase runs do from clients goroutines for d and counts the successes.
func phase(name string, clients int, d time.Duration, do func(seq int64) error) result {
	var seq, failures atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, clients)
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := do(seq.Add(1)); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	r := result{name: name, elapsed: time.Since(start)}
	for _, l := range lat {
		r.n += int64(len(l))
		r.latencies = append(r.latencies, l...)
	}
	if f := failures.Load(); f > 0 {
		fmt.Fprintf(os.Stderr, "%s: %d failures, first: %v\n", name, f, firstErr.Load())
	}
	return r
}

// newEvent is a ~1 KiB incident update; phase and seq make its id unique.
func newEvent(phase int, seq int64) *events.SNEvent {
	return &events.SNEvent{
		Instance:     "dev12345",
		Table:        "incident",
		SysID:        fmt.Sprintf("%08x%024x", phase, seq),
		Action:       events.ActionUpdate,
		SysModCount:  4,
		SysUpdatedOn: "2026-11-28 10:00:00",
		SysUpdatedBy: "beth.anglin",
		Changed:      []string{"comments", "state"},
		Record: events.Fields{
			"number": fmt.Sprintf("INC%07d", seq%10_000_000), "short_description": "Email down", "state": "2",
			"description": "Users on floor 3 report that Outlook cannot connect since 09:40; webmail works.",
			"caller_id":   "681ccaf9c0a8016400b98a06818d57c7", "assignment_group": "287ebd7da9fe198100f92cc8d1d2154e",
			"category": "network", "subcategory": "email", "impact": "2", "urgency": "2", "priority": "3",
			"opened_at": "2026-11-28 09:41:12", "opened_by": "681b365ec0a80164000fb0b05854a0cd",
			"sys_created_on": "2026-11-28 09:41:12", "sys_created_by": "beth.anglin", "sys_updated_on": "2026-11-28 10:00:00",
			"correlation_id": "TCK-1042", "comments": "2026-11-28 10:00:00 - Beth Anglin (Additional comments)\nLooking into it",
			"work_notes": "", "close_code": "", "close_notes": "", "contact_type": "email", "location": "", "cmdb_ci": "",
		},
	}
}
