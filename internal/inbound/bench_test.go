package inbound

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/events"
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
