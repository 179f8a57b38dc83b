package inbound

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

// responder replaces SN_EVENTS with a core subscriber on the event subjects
// that answers each publish as answer says (nil: no answer at all), so a
// test decides what "JetStream" replies and when.
func responder(t *testing.T, h *harness, answer func(n int64, m *nats.Msg) []byte) *atomic.Int64 {
	t.Helper()
	if err := h.js.DeleteStream(context.Background(), events.StreamSN); err != nil {
		t.Fatal(err)
	}
	nc, _ := natstest.Connect(t, h.server)
	var n atomic.Int64
	sub, err := nc.Subscribe("sn.>", func(m *nats.Msg) {
		if b := answer(n.Add(1), m); b != nil {
			_ = m.Respond(b)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}

func TestStore_EveryEventOfABatchGetsItsOwnAck(t *testing.T) {
	h := newHarness(t, nil)
	// A batch larger than one slot's window: 100 events, each answered
	// with a duplicate flag of its own, in reverse order of arrival within
	// each window (acks need not come back in order).
	responder(t, h, func(_ int64, m *nats.Msg) []byte {
		var ev map[string]any
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Errorf("stored form is not JSON: %v", err)
		}
		dup := strings.HasSuffix(ev["sys_id"].(string), "1") // every event whose sys_id ends in 1
		return []byte(`{"stream":"SN_EVENTS","seq":7,"duplicate":` + map[bool]string{true: "true", false: "false"}[dup] + `}`)
	})
	batch := make([]any, 100)
	dups := 0
	for i := range batch {
		batch[i] = event(i, 1)
		if strings.HasSuffix(sysID(i), "1") {
			dups++
		}
	}
	wantAccepted(t, h.send(mustJSON(t, batch)), 100-dups, dups, 0)
}

func TestStore_RefusalsAndSilenceAnswer503(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(n int64, m *nats.Msg) []byte
		want   string // in the 503's log line
	}{
		{"an API error", func(int64, *nats.Msg) []byte {
			return []byte(`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`)
		}, "maximum messages exceeded"},
		{"an unreadable ack", func(int64, *nats.Msg) []byte { return []byte(`{"stream":`) }, "unreadable ack"},
		{"an ack naming no stream", func(int64, *nats.Msg) []byte { return []byte(`{"seq":1}`) }, "naming no stream"},
		{"no ack at all", func(int64, *nats.Msg) []byte { return nil }, "no ack for 1 of 1 events"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.PublishTimeout = 300 * time.Millisecond })
			responder(t, h, tc.answer)
			r := h.send(mustJSON(t, event(1, 1)))
			if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "3" {
				t.Fatalf("answer %d (Retry-After %q) %s, want 503 with Retry-After 3", r.status, r.header.Get("Retry-After"), r.body)
			}
			if !strings.Contains(h.logs.String(), tc.want) {
				t.Errorf("the log does not say %q:\n%s", tc.want, h.logs.String())
			}
		})
	}
}

func TestStore_NoStreamIsNamedInTheLog(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.js.DeleteStream(context.Background(), events.StreamSN); err != nil {
		t.Fatal(err)
	}
	if r := h.send(mustJSON(t, event(1, 1))); r.status != http.StatusServiceUnavailable {
		t.Fatalf("answer %d %s, want 503", r.status, r.body)
	}
	if !strings.Contains(h.logs.String(), "no stream takes this subject") {
		t.Errorf("the log does not explain the missing stream:\n%s", h.logs.String())
	}
}

// A late ack must never count for the next request: the slot that waited
// in vain is dropped, not reused.
func TestStore_LateAckDoesNotReachTheNextRequest(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PublishTimeout = 200 * time.Millisecond })
	release := make(chan struct{})
	responder(t, h, func(n int64, m *nats.Msg) []byte {
		if n == 1 {
			<-release // the first publish is answered only after its request gave up
			return []byte(`{"stream":"SN_EVENTS","seq":1,"duplicate":true}`)
		}
		return []byte(`{"stream":"SN_EVENTS","seq":2}`)
	})
	if r := h.send(mustJSON(t, event(1, 1))); r.status != http.StatusServiceUnavailable {
		t.Fatalf("first answer %d %s, want 503 (no ack in time)", r.status, r.body)
	}
	close(release)
	time.Sleep(50 * time.Millisecond) // let the late ack arrive
	for i := 2; i < 6; i++ {
		wantAccepted(t, h.send(mustJSON(t, event(i, 1))), 1, 0, 0)
	}
}

// A request awaiting its ack when NATS goes away is answered 503 at once,
// not after the publish timeout.
func TestStore_DisconnectWhileAwaitingAnswers503AtOnce(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PublishTimeout = 20 * time.Second })
	arrived := make(chan struct{}, 1)
	responder(t, h, func(int64, *nats.Msg) []byte {
		arrived <- struct{}{}
		return nil // never answers
	})
	type result struct {
		r    response
		took time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		r := h.send(mustJSON(t, event(1, 1)))
		done <- result{r, time.Since(start)}
	}()
	<-arrived
	down := time.Now()
	h.server.Shutdown()
	select {
	case res := <-done:
		if res.r.status != http.StatusServiceUnavailable || res.r.header.Get("Retry-After") == "" {
			t.Fatalf("answer %d %s, want 503 with Retry-After", res.r.status, res.r.body)
		}
		if d := time.Since(down); d > 2*time.Second {
			t.Errorf("answered %s after NATS went down, want at once", d)
		}
		if !strings.Contains(h.logs.String(), errDisconnected.Error()) {
			t.Errorf("the log does not say the connection dropped:\n%s", h.logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer 10s after NATS went down (the publish timeout is 20s)")
	}
}

func TestParseAck_StatusAnswers(t *testing.T) {
	for _, tc := range []struct {
		status, want string
	}{
		{"503", "no responders"},
		{"408", "status 408"},
		{"", "empty ack"},
	} {
		m := &nats.Msg{Header: nats.Header{}}
		if tc.status != "" {
			m.Header.Set("Status", tc.status)
		}
		if _, err := parseAck(m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("status %q: err %v, want one saying %q", tc.status, err, tc.want)
		}
	}
	ack, err := parseAck(&nats.Msg{Data: []byte(` {"stream":"SN_EVENTS", "domain":"hub","seq":42,"duplicate":true} `)})
	if err != nil || ack != (pubAck{Stream: "SN_EVENTS", Domain: "hub", Seq: 42, Duplicate: true}) {
		t.Errorf("parseAck = %+v, %v", ack, err)
	}
}

// FuzzScanAck holds the scanner to encoding/json: whenever it reads an ack,
// encoding/json reads the same one.
func FuzzScanAck(f *testing.F) {
	for _, s := range []string{
		`{"stream":"SN_EVENTS","seq":1}`,
		`{"stream":"SN_EVENTS","seq":18446744073709551615,"duplicate":true}`,
		`{"stream":"S","domain":"d","seq":0,"duplicate":false}`,
		`{"error":{"code":503,"err_code":10077,"description":"x"}}`,
		`{"stream":"a\u0062","seq":1}`,
		`{"Stream":"x","seq":1}`,
		`{"stream":"x","seq":1,"seq":2}`,
		`{"stream":"x","seq":01}`,
		`{"stream":"x","seq":1.5}`,
		` { "stream" : "x" , "seq" : 3 } `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := scanAck(b)
		if !ok {
			return
		}
		var want pubAck
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("scanAck read %q as %+v, encoding/json refuses it: %v", b, got, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("scanAck read %q as %+v, encoding/json as %+v", b, got, want)
		}
	})
}

func TestIsJSON_FastFormsAgreeWithParsing(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/json": true, "Application/JSON": true, "application/json; charset=utf-8": true,
		"application/json; charset=UTF-8": true, "application/json;charset=utf-8": true, "application/json ; charset=latin1": true,
		"text/plain": false, "application/jsonx": false, "": false, "application/json; charset": false,
	} {
		if got := isJSON(ct); got != want {
			t.Errorf("isJSON(%q) = %v, want %v", ct, got, want)
		}
	}
}

// With every slot busy a request waits for one to come back, and is
// answered 503 only if none does within slotWait.
func TestStore_RequestsWaitForAFreeSlot(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxPendingAcks, c.MaxConnections, c.PublishTimeout = ackWindow, 1, time.Second })
	if h.rcv.acks.max != 1 {
		t.Fatalf("%d slots, want 1 for this test", h.rcv.acks.max)
	}
	block := make(chan struct{})
	responder(t, h, func(n int64, m *nats.Msg) []byte {
		if strings.Contains(string(m.Data), sysID(99)) {
			<-block // the slot's holder waits until the test lets go
		}
		time.Sleep(10 * time.Millisecond)
		return []byte(`{"stream":"SN_EVENTS","seq":1}`)
	})
	// Five at once share the one slot in turn.
	results := make(chan response, 5)
	for i := range 5 {
		go func() { results <- h.send(mustJSON(t, event(i, 1))) }()
	}
	for range 5 {
		if r := <-results; r.status != http.StatusAccepted {
			t.Fatalf("answer %d %s, want 202 (waiting for the slot)", r.status, r.body)
		}
	}
	// A holder that keeps the slot: the next request gives up after slotWait.
	held := make(chan response, 1)
	go func() { held <- h.send(mustJSON(t, event(99, 1))) }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	r := h.send(mustJSON(t, event(100, 1)))
	if r.status != http.StatusServiceUnavailable || time.Since(start) < slotWait {
		t.Fatalf("answer %d after %s, want 503 after waiting %s for the slot", r.status, time.Since(start), slotWait)
	}
	if !strings.Contains(h.logs.String(), "MaxPendingAcks") {
		t.Errorf("the 503's log does not name MaxPendingAcks:\n%s", h.logs.String())
	}
	close(block)
	if r := <-held; r.status != http.StatusAccepted {
		t.Fatalf("the slot's holder: answer %d %s, want 202", r.status, r.body)
	}
}

// A drop the status watcher has recorded but the connection has already
// recovered from is not this request's: its wait is not cut short by it.
func TestAcker_StaleDownSignalIsNotWatched(t *testing.T) {
	h := newHarness(t, nil)
	a := h.rcv.acks
	if a.downSignal() == nil {
		t.Fatal("an open connection's down signal is nil, want one to watch")
	}
	a.markDown() // as the watcher does on a drop; the connection is up again
	if d := a.downSignal(); d != nil {
		t.Fatal("a closed down signal while connected is handed out: the request would answer 503 at once")
	}
	wantAccepted(t, h.send(mustJSON(t, event(1, 1))), 1, 0, 0)
}
