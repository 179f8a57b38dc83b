package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nowbridge/nowbridge/internal/webhook"
)

// The container HEALTHCHECK: `bridge healthcheck` with the serve's own
// environment finds its /readyz, and fails once the bridge is gone.
func TestHealthcheck_ReadyServeExitsZeroAndStoppedServeOne(t *testing.T) {
	secret := webhook.NewSecret([]byte("healthcheck-test-secret-0123456"))
	env := map[string]string{
		"BRIDGE_WEBHOOK_SECRETS": secret.Encoded(),
		"BRIDGE_DATA_DIR":        t.TempDir(),
	}
	b := startServe(t, env, "--embedded-nats-listen", "127.0.0.1:0")
	_, port, _ := strings.Cut(b.addr, ":")

	// As in the image: the same environment as serve, a wildcard listen address.
	hcEnv := map[string]string{"BRIDGE_LISTEN": ":" + port}
	code, out, stderr := runTool(t, hcEnv, "", "healthcheck")
	if want := "http://127.0.0.1:" + port + "/readyz: 200 OK"; code != 0 || strings.TrimSpace(out) != want {
		t.Fatalf("healthcheck against a ready serve: exit %d, stdout %q, stderr %q; want 0 and %q", code, out, stderr, want)
	}
	code, out, stderr = runTool(t, nil, "", "healthcheck", "--url", "http://"+b.addr+"/healthz")
	if code != 0 || !strings.Contains(out, "200 OK") {
		t.Fatalf("healthcheck --url .../healthz: exit %d, stdout %q, stderr %q; want 0 and 200 OK", code, out, stderr)
	}

	b.shutdown(t)
	code, _, stderr = runTool(t, hcEnv, "", "healthcheck")
	if code != 1 || !strings.Contains(stderr, "is bridge serve running") {
		t.Fatalf("healthcheck after serve stopped: exit %d, stderr %q; want 1 and advice to check bridge serve", code, stderr)
	}
}

// A 503 from /readyz (NATS down, draining) fails the check and says why.
func TestHealthcheck_NotReadyExitsOneWithTheDetail(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"not ready","detail":"nats: connection closed"}` + "\n"))
	}))
	defer srv.Close()
	hostport := strings.TrimPrefix(srv.URL, "http://")
	code, out, stderr := runTool(t, map[string]string{"BRIDGE_LISTEN": hostport}, "", "healthcheck")
	if code != 1 || !strings.Contains(stderr, "503 Service Unavailable") || !strings.Contains(stderr, "nats: connection closed") || out != "" {
		t.Fatalf("healthcheck against /readyz 503: exit %d, stdout %q, stderr %q; want 1 with the status and the detail on stderr", code, out, stderr)
	}
	if strings.Count(stderr, "\n") != 1 {
		t.Errorf("healthcheck error should be one line, got %q", stderr)
	}
}

// A bridge that accepts but never answers fails the check within --timeout.
func TestHealthcheck_NoAnswerWithinTimeoutExitsOne(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	start := time.Now()
	code, _, stderr := runTool(t, nil, "", "healthcheck", "--url", srv.URL+"/readyz", "--timeout", "200ms")
	took := time.Since(start)
	if code != 1 || !strings.Contains(stderr, "no answer within 200ms") {
		t.Fatalf("healthcheck against a silent server: exit %d, stderr %q; want 1 and \"no answer within 200ms\"", code, stderr)
	}
	if took > 2*time.Second {
		t.Errorf("healthcheck took %s with --timeout 200ms", took)
	}
}

func TestHealthcheck_BadFlagsAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"healthcheck", "--url", "127.0.0.1:8080/readyz"},
		{"healthcheck", "--url", "ftp://127.0.0.1/readyz"},
		{"healthcheck", "--timeout", "0s"},
		{"healthcheck", "extra"},
	} {
		if code, _, stderr := runTool(t, nil, "", args...); code != 2 {
			t.Errorf("%v: exit %d (stderr %q), want 2 (wrong usage)", args, code, stderr)
		}
	}
	code, _, stderr := runTool(t, map[string]string{"BRIDGE_LISTEN": "8080"}, "", "healthcheck")
	if code != 1 || !strings.Contains(stderr, "BRIDGE_LISTEN") {
		t.Errorf("healthcheck with BRIDGE_LISTEN=8080: exit %d, stderr %q; want 1 naming BRIDGE_LISTEN", code, stderr)
	}
}

func TestReadyzURL_WildcardHostsAreLoopback(t *testing.T) {
	for _, c := range []struct{ listen, want string }{
		{":8080", "http://127.0.0.1:8080/readyz"},
		{"0.0.0.0:9000", "http://127.0.0.1:9000/readyz"},
		{"[::]:8080", "http://127.0.0.1:8080/readyz"},
		{"[::1]:8080", "http://[::1]:8080/readyz"},
		{"10.1.2.3:8080", "http://10.1.2.3:8080/readyz"},
		{"bridge.internal:8080", "http://bridge.internal:8080/readyz"},
	} {
		if got := readyzURL(c.listen); got != c.want {
			t.Errorf("readyzURL(%q) = %q, want %q", c.listen, got, c.want)
		}
	}
}
