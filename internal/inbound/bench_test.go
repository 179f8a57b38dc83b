package inbound

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// oneKiBEvent is a realistic incident update webhook body of about 1 KiB.
func oneKiBEvent(tb testing.TB) []byte {
	tb.Helper()
	ev := event(1, 4)
	rec := ev["record"].(map[string]any)
	for k, v := range map[string]string{
		"description": "Users on floor 3 report that Outlook cannot connect since 09:40; webmail works.",
		"caller_id":   "681ccaf9c0a8016400b98a06818d57c7", "assignment_group": "287ebd7da9fe198100f92cc8d1d2154e",
		"category": "network", "subcategory": "email", "impact": "2", "urgency": "2", "priority": "3",
		"opened_at": "2026-11-28 09:41:12", "opened_by": "681b365ec0a80164000fb0b05854a0cd",
		"sys_created_on": "2026-11-28 09:41:12", "sys_created_by": "beth.anglin", "sys_updated_on": "2026-11-28 10:00:00",
		"correlation_id": "TCK-1042", "comments": "2026-11-28 10:00:00 - Beth Anglin (Additional comments)\nLooking into it",
		"work_notes": "", "close_code": "", "close_notes": "", "contact_type": "email", "location": "", "cmdb_ci": "",
	} {
		rec[k] = v
	}
	b, _ := json.Marshal(ev)
	if len(b) < 900 || len(b) > 1200 {
		tb.Fatalf("benchmark body is %d bytes, want about 1 KiB", len(b))
	}
	return b
}

// BenchmarkVerifyDecodeValidate is the receiver's CPU work per webhook
// before publishing: signature check, JSON decode, validation.
//
//	go test -run='^$' -bench=VerifyDecodeValidate -benchmem ./internal/inbound
func BenchmarkVerifyDecodeValidate(b *testing.B) {
	body := oneKiBEvent(b)
	now := time.Now()
	id := "incident:" + sysID(1) + ":4:update"
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := webhook.Sign(secretA, id, now.Unix(), body)
	v := &webhook.Verifier{Secrets: []webhook.Secret{secretA}, Now: func() time.Time { return now }}
	val := events.NewValidator([]string{"incident"})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Verify(id, ts, sig, body); err != nil {
			b.Fatal(err)
		}
		wh, err := val.DecodeWebhook(body) // as the receiver decodes
		if err != nil || len(wh.Events) != 1 {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyDecodeValidate_Batch100 is the same for a body of 100 events.
func BenchmarkVerifyDecodeValidate_Batch100(b *testing.B) {
	one := oneKiBEvent(b)
	body := []byte("[" + strings.TrimSuffix(strings.Repeat(string(one)+",", 100), ",") + "]")
	now := time.Now()
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := webhook.Sign(secretA, "batch", now.Unix(), body)
	v := &webhook.Verifier{Secrets: []webhook.Secret{secretA}, Now: func() time.Time { return now }}
	val := events.NewValidator([]string{"incident"})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Verify("batch", ts, sig, body); err != nil {
			b.Fatal(err)
		}
		if evs, err := val.DecodeBody(body); err != nil || len(evs) != 100 {
			b.Fatal(err)
		}
	}
}

// BenchmarkReceiver_Batch100 posts bodies of 100 events to a receiver on a
// real JetStream, 8 at a time: the path a burst of business-rule events
// takes, with up to ackWindow acks outstanding at once (store.go).
//
//	go test -run='^$' -bench=Receiver_Batch100 -benchmem ./internal/inbound
func BenchmarkReceiver_Batch100(b *testing.B) {
	s := natstest.RunServer(b)
	nc, js := natstest.Connect(b, s)
	if err := broker.EnsureAll(b.Context(), js, events.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	rcv, err := New(Config{Conn: nc, Secrets: []webhook.Secret{secretA}})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(rcv.Handler())
	defer srv.Close()
	var seq atomic.Int64
	b.SetParallelism(4) // 8 senders on 2 CPUs
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			base := int(seq.Add(100))
			batch := make([]any, 100)
			for i := range batch {
				batch[i] = event(base+i, 1)
			}
			body, _ := json.Marshal(batch)
			req, _ := http.NewRequest(http.MethodPost, srv.URL+Path, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			webhook.SetHeaders(req.Header, secretA, "batch-"+strconv.Itoa(base), time.Now(), body)
			resp, err := srv.Client().Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Errorf("answer %d", resp.StatusCode)
				return
			}
		}
	})
}
