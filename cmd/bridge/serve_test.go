package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// lockedBuffer collects the output of a command running in another goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// logField waits for a JSON log line with msg and returns its field key.
func logField(t *testing.T, logs *lockedBuffer, msg, key string, exited <-chan int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == msg {
				if v, ok := line[key].(string); ok {
					return v
				}
			}
		}
		select {
		case code := <-exited:
			t.Fatalf("bridge serve exited with %d before logging %q:\n%s", code, msg, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no %q log line with %s within 20s:\n%s", msg, key, logs.String())
	return ""
}

// servedBridge is `bridge serve` running in this process for a test.
type servedBridge struct {
	ctx    context.Context // cancelled by stop
	logs   *lockedBuffer   // its stderr (JSON logs)
	exited chan int        // its exit code
	addr   string          // its HTTP listener
	stop   context.CancelFunc
}

// startServe runs `bridge serve --listen 127.0.0.1:0 args...` with env as
// its whole environment, and waits until the receiver listens.
func startServe(t *testing.T, env map[string]string, args ...string) *servedBridge {
	t.Helper()
	b := &servedBridge{logs: &lockedBuffer{}, exited: make(chan int, 1)}
	b.ctx, b.stop = context.WithCancel(context.Background())
	t.Cleanup(b.stop)
	argv := append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)
	go func() {
		b.exited <- run(b.ctx, argv, func(k string) string { return env[k] }, strings.NewReader(""), io.Discard, b.logs)
	}()
	b.addr = logField(t, b.logs, "webhook receiver listening", "addr", b.exited)
	return b
}

// shutdown cancels serve and fails unless it exits 0 within 30s.
func (b *servedBridge) shutdown(t *testing.T) {
	t.Helper()
	b.stop()
	select {
	case code := <-b.exited:
		if code != 0 {
			t.Fatalf("bridge serve exited %d after cancel, want 0:\n%s", code, b.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("bridge serve did not stop within 30s of cancel")
	}
}

// sendSigned POSTs body to the receiver as a business rule would.
func (b *servedBridge) sendSigned(t *testing.T, client *http.Client, secret webhook.Secret, msgID string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+b.addr+"/webhooks/servicenow", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	webhook.SetHeaders(req.Header, secret, msgID, time.Now(), body)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(answer)
}

func TestServe_EmbeddedReceivesSignedWebhookAndShutsDownCleanly(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	secret := webhook.NewSecret([]byte("serve-test-secret-0123456789abcd"))
	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS": secret.Encoded(),
		"BRIDGE_DATA_DIR":        t.TempDir(),
	}
	b := startServe(t, env, "--embedded-nats-listen", "127.0.0.1:0")
	ctx, logs, addr := b.ctx, b.logs, b.addr
	natsURL := logField(t, logs, "embedded NATS JetStream started", "url", b.exited)
	if !strings.Contains(logs.String(), "writeback and reconcile are off") {
		t.Errorf("serve without ServiceNow settings should warn that writeback and reconcile are off:\n%s", logs.String())
	}

	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	body := []byte(`{"table":"incident","sys_id":"9d385017c611228701d22104cc95c371","action":"update","sys_mod_count":"4",` +
		`"sys_updated_on":"2026-11-28 10:00:00","record":{"number":"INC0010001","state":"2"}}`)
	code, answer := b.sendSigned(t, client, secret, "incident:9d385017c611228701d22104cc95c371:4:update", body)
	if code != 202 || answer != "{\"accepted\":1,\"duplicates\":0,\"echoes\":0}\n" {
		t.Fatalf("signed webhook: %d %s, want 202 accepted 1", code, answer)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d, want 200", path, resp.StatusCode)
		}
	}

	// The event is in the embedded server's SN_EVENTS, reachable by other clients.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	var m *jetstream.RawStreamMsg
	st, err := js.Stream(ctx, events.StreamSN)
	if err == nil {
		m, err = st.GetLastMsgForSubject(ctx, "sn.incident.update")
	}
	nc.Close()
	if err != nil || m.Header.Get(events.HeaderMsgID) != "incident:9d385017c611228701d22104cc95c371:4:update" {
		t.Fatalf("SN_EVENTS last sn.incident.update: %v %v", m, err)
	}

	b.shutdown(t)
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("the HTTP port still accepts connections after shutdown")
	}
	for _, want := range []string{"webhook receiver stopped", "embedded NATS JetStream stopped"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q", want)
		}
	}
	if strings.Contains(logs.String(), secret.KeyBase64()) {
		t.Error("the webhook secret appears in the logs")
	}
}

func TestServe_BadSettingsStopStartUpWithOneLine(t *testing.T) {
	secret := webhook.NewSecret([]byte("serve-test-secret-0123456789abcd")).Encoded()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stderr string
	}{
		{"no webhook secret", map[string]string{}, nil, 1, "BRIDGE_WEBHOOK_SECRETS: required"},
		{"malformed webhook secret", map[string]string{"BRIDGE_WEBHOOK_SECRETS": "whsec_!!not-base64-hunter2"}, nil, 1, "BRIDGE_WEBHOOK_SECRETS: secret #1"},
		{"bad log format", map[string]string{"BRIDGE_WEBHOOK_SECRETS": secret, "BRIDGE_LOG_FORMAT": "xml"}, nil, 1, "BRIDGE_LOG_FORMAT: must be json or text"},
		{"bad duration flag", map[string]string{"BRIDGE_WEBHOOK_SECRETS": secret}, []string{"--publish-timeout", "soon"}, 1, "--publish-timeout: not a duration"},
		{"listen port busy", map[string]string{"BRIDGE_WEBHOOK_SECRETS": secret}, []string{"--listen", busy.Addr().String()}, 1, "BRIDGE_LISTEN " + busy.Addr().String()},
		{"unknown flag", map[string]string{}, []string{"--no-such-flag"}, 2, "unknown flag"},
		{"stray argument", map[string]string{}, []string{"extra"}, 2, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"serve", "--data-dir", t.TempDir(), "--embedded-nats-listen", "127.0.0.1:0"}, c.args...)
			code, _, stderr := runTool(t, c.env, "", args...)
			if code != c.code || !strings.Contains(stderr, c.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, c.code, c.stderr)
			}
			if lines := strings.Count(strings.TrimSpace(stderr), "\n"); c.code == 1 && lines != 0 {
				t.Errorf("stderr has %d lines, want one clear line: %q", lines+1, stderr)
			}
			if strings.Contains(stderr, "hunter2") || strings.Contains(stderr, secret) {
				t.Errorf("stderr reveals a secret: %q", stderr)
			}
		})
	}
}
