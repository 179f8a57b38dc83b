package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestDev_DemoRunsBothDirectionsAndExitsZero runs `bridge dev --demo` the
// way a newcomer does: the whole binary in-process, nothing installed.
func TestDev_DemoRunsBothDirectionsAndExitsZero(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"dev", "--demo", "--data-dir", t.TempDir()}, func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("bridge dev --demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{
		"nats --server", "sub 'bridge.apply.>'", "pub app.ticket.upsert", "/oauth_token.do", "/api/now/table/incident/",
		"<- bridge.apply.ticket.update", "its webhook was an echo", "bridge.apply: quiet", "no write to ServiceNow", "Demo done",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
