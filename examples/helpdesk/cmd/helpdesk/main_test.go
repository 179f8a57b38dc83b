package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/sdk/wire"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRun_ServesThePageUntilStopped(t *testing.T) {
	ns := natstest.RunServer(t)
	nc, js := natstest.Connect(t, ns)
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, sc := range []jetstream.StreamConfig{
		{Name: wire.StreamApp, Subjects: []string{wire.AppSubjects}},
		{Name: wire.StreamApply, Subjects: []string{wire.ApplySubjects}},
		{Name: wire.StreamResults, Subjects: []string{wire.ResultsSubjects}},
	} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr syncBuffer
	db := filepath.Join(t.TempDir(), "hd.db")
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--nats-url", ns.ClientURL(), "--db", db, "--listen", "127.0.0.1:0"}, &stdout, &stderr)
	}()
	re := regexp.MustCompile(`Helpdesk: (http://127\.0\.0\.1:\d+) \(tickets in ` + regexp.QuoteMeta(db))
	var base string
	for deadline := time.Now().Add(10 * time.Second); base == ""; {
		if m := re.FindStringSubmatch(stdout.String()); m != nil {
			base = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no address printed within 10s; stdout %q stderr %q", stdout.String(), stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `id="new-ticket"`) {
		t.Fatalf("GET /: %d, want the page with the new-ticket form:\n%s", resp.StatusCode, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after stop, want nil; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return within 20s of the stop")
	}
}

func TestRun_BusyAddressSaysWhatToDo(t *testing.T) {
	ns := natstest.RunServer(t)
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	var stdout, stderr syncBuffer
	err = run(context.Background(), []string{"--nats-url", ns.ClientURL(), "--db", filepath.Join(t.TempDir(), "hd.db"), "--listen", hold.Addr().String()}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("run on a busy address: %v, want an error naming --listen", err)
	}
}
