package inbound

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// serving is the harness's receiver running Serve on a loopback listener.
type serving struct {
	url    string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

func (h *harness) serve(shutdownTimeout time.Duration) *serving {
	h.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{url: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- h.rcv.Serve(ctx, ln, shutdownTimeout) }()
	h.t.Cleanup(func() { s.stop(h.t) })
	return s
}

// stop cancels Serve and returns what it returned.
func (s *serving) stop(t *testing.T) error {
	t.Helper()
	s.once.Do(func() {
		s.cancel()
		select {
		case s.err = <-s.done:
		case <-time.After(30 * time.Second):
			s.err = errors.New("Serve did not return within 30s of its context ending")
		}
	})
	return s.err
}

// signed builds a signed webhook request for event n.
func signed(t testing.TB, url string, n int) *http.Request {
	t.Helper()
	body, err := json.Marshal(event(n, 1))
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, url+Path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	webhook.SetHeaders(req.Header, secretA, fmt.Sprintf("incident:%s:1:update", sysID(n)), time.Now(), body)
	return req
}

// isDialError tells a refused connection (nothing was sent) from a request
// that was sent and then lost.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// storedByID counts SN_EVENTS messages by Nats-Msg-Id.
func (h *harness) storedByID() map[string]int {
	h.t.Helper()
	n := map[string]int{}
	for _, m := range h.stored() {
		n[m.Header.Get(events.HeaderMsgID)]++
	}
	return n
}

func TestServe_DrainAnswersWithConnectionCloseAndReadyz503(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.DrainGrace = 5 * time.Second })
	s := h.serve(20 * time.Second)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	do := func(req *http.Request) *http.Response {
		t.Helper()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := do(signed(t, s.url, 1)); resp.StatusCode != http.StatusAccepted || resp.Close {
		t.Fatalf("before shutdown: %d (close %v), want 202 on a kept-alive connection", resp.StatusCode, resp.Close)
	}

	start := time.Now()
	go s.stop(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, s.url+"/readyz", nil)
		resp := do(req)
		if resp.StatusCode == http.StatusServiceUnavailable {
			if !resp.Close || resp.Header.Get("Retry-After") == "" {
				t.Errorf("/readyz while draining: 503 with Connection close %v, Retry-After %q; want both", resp.Close, resp.Header.Get("Retry-After"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz still answers 200 5s after the shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A webhook during the drain is still stored, and its answer ends the
	// connection cleanly.
	if resp := do(signed(t, s.url, 2)); resp.StatusCode != http.StatusAccepted || !resp.Close {
		t.Fatalf("while draining: %d (Connection: close %v), want 202 with Connection: close", resp.StatusCode, resp.Close)
	}
	client.CloseIdleConnections()
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s: the 5s drain should end once no connection is open", d)
	}
	if got := h.storedByID(); got["incident:"+sysID(2)+":1:update"] != 1 {
		t.Errorf("the webhook answered 202 during the drain is stored %d times, want once", got["incident:"+sysID(2)+":1:update"])
	}
}

// TestServe_ShutdownUnderKeepAliveLoadResetsNothing: clients posting
// continuously over kept-alive connections while the receiver shuts down get
// an answer to every request they send, 202 or 503, and every 202 is stored
// exactly once. Before the drain, net/http's Shutdown reset requests that
// had reached a connection it still counted as idle (issue 16).
func TestServe_ShutdownUnderKeepAliveLoadResetsNothing(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.DrainGrace = 300 * time.Millisecond })
	s := h.serve(10 * time.Second)
	const workers = 12
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	var (
		mu       sync.Mutex
		acked    []int
		statuses = map[int]int{}
		lost     []string
		sent     atomic.Int64
	)
	var wg sync.WaitGroup
	stopAt := time.Now().Add(20 * time.Second) // a bound: the workers stop by then whatever happens
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(stopAt); i++ {
				n := w*1_000_000 + i
				sent.Add(1)
				resp, err := client.Do(signed(t, s.url, n))
				if err != nil {
					if !isDialError(err) {
						mu.Lock()
						lost = append(lost, err.Error())
						mu.Unlock()
					}
					return // refused: the receiver is gone
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				if resp.StatusCode == http.StatusAccepted {
					acked = append(acked, n)
				}
				mu.Unlock()
				if resp.StatusCode == http.StatusServiceUnavailable {
					if resp.Header.Get("Retry-After") == "" {
						t.Errorf("503 without Retry-After")
					}
					time.Sleep(300 * time.Millisecond) // back off, as a sender does
				}
			}
		}()
	}
	waitFor(t, "load to build up", 10*time.Second, func() bool { return sent.Load() > 300 })
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	wg.Wait()
	t.Logf("%d requests sent; answers %v; %d lost", sent.Load(), statuses, len(lost))
	if len(lost) > 0 {
		for _, line := range strings.Split(h.logs.String(), "\n") {
			if strings.Contains(line, "webhook receiver") {
				t.Log(line) // the drain's steps and their timing
			}
		}
		t.Fatalf("%d requests sent during the shutdown got no answer (want 202 or 503 for each), e.g. %q", len(lost), lost[0])
	}
	for code := range statuses {
		if code != http.StatusAccepted && code != http.StatusServiceUnavailable {
			t.Errorf("%d answers were %d; want only 202 and 503", statuses[code], code)
		}
	}
	stored := h.storedByID()
	for _, n := range acked {
		if id := fmt.Sprintf("incident:%s:1:update", sysID(n)); stored[id] != 1 {
			t.Errorf("event %s was answered 202 and is stored %d times, want once", id, stored[id])
		}
	}
}

func TestServe_ConnectionCapQueuesTheRestUntilASlotFrees(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.MaxConnections = 2
		c.ReadHeaderTimeout = 400 * time.Millisecond
		c.ReadTimeout = time.Second
	})
	s := h.serve(5 * time.Second)
	addr := strings.TrimPrefix(s.url, "http://")
	var silent []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	waitFor(t, "both silent connections to be accepted", 5*time.Second, func() bool { return testutil.ToFloat64(h.rcv.m.openConns) == 2 })

	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	start := time.Now()
	resp, err := client.Do(signed(t, s.url, 1))
	if err != nil {
		t.Fatalf("a request beyond the cap failed instead of waiting for a slot: %v", err)
	}
	resp.Body.Close()
	waited := time.Since(start)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("a request beyond the cap: %d, want 202 once a slot freed", resp.StatusCode)
	}
	if waited < 200*time.Millisecond {
		t.Errorf("a third connection was served after %s, before the header timeout freed a slot: the cap of 2 did not hold", waited)
	}
	if n := testutil.ToFloat64(h.rcv.m.connLimitWaits); n < 1 {
		t.Errorf("bridge_http_connection_limit_waits_total = %v, want at least 1", n)
	}
	for i, c := range silent {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("silent connection %d still open after the header timeout (read: %v)", i, err)
		}
	}
	client.CloseIdleConnections()
	waitFor(t, "every connection to be released", 5*time.Second, func() bool { return testutil.ToFloat64(h.rcv.m.openConns) == 0 })
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestServe_SlowHeaderAndStalledBodyAreCut: a client trickling its headers
// and one stalling its body are disconnected by the read timeouts, while
// normal requests go on being answered.
func TestServe_SlowHeaderAndStalledBodyAreCut(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.ReadHeaderTimeout = 300 * time.Millisecond
		c.ReadTimeout = 800 * time.Millisecond
	})
	s := h.serve(5 * time.Second)
	addr := strings.TrimPrefix(s.url, "http://")

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	stalled, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	start := time.Now()
	if _, err := fmt.Fprintf(stalled, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"table\":", Path); err != nil {
		t.Fatal(err)
	}
	slowDone := make(chan time.Duration, 1)
	go func() {
		_, _ = fmt.Fprintf(slow, "POST %s HTTP/1.1\r\nHost: x\r\n", Path)
		for i := 0; ; i++ {
			time.Sleep(50 * time.Millisecond)
			if _, err := fmt.Fprintf(slow, "X-Trickle-%d: %d\r\n", i, i); err != nil || time.Since(start) > 10*time.Second {
				break
			}
		}
		slowDone <- time.Since(start)
	}()

	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	for i := range 10 {
		resp, err := client.Do(signed(t, s.url, i))
		if err != nil {
			t.Fatalf("a normal request alongside the hostile clients failed: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("a normal request alongside the hostile clients: %d", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}

	_ = stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(stalled), nil)
	cut := time.Since(start)
	switch {
	case err == nil:
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("stalled body answered %d, want 400 (unreadable body) or a closed connection", resp.StatusCode)
		}
	case isTimeout(err):
		t.Fatalf("the stalled body was still held %s later", cut)
	}
	if cut < 700*time.Millisecond || cut > 5*time.Second {
		t.Errorf("stalled body cut after %s, want about the 800ms read timeout", cut)
	}
	if d := <-slowDone; d > 5*time.Second {
		t.Errorf("the header trickle went on for %s; the 300ms header timeout should have cut it", d)
	}
	client.CloseIdleConnections()
	waitFor(t, "every connection to be released", 5*time.Second, func() bool { return testutil.ToFloat64(h.rcv.m.openConns) == 0 })
}

// TestIngest_ForgedForwardedForIsNotTheClientIP: Echo's default RealIP
// believes X-Forwarded-For and X-Real-IP from anyone (GO-2026-6872). The
// receiver logs the connection's address unless the header comes through a
// configured proxy, and keeps client addresses out of its metrics.
func TestIngest_ForgedForwardedForIsNotTheClientIP(t *testing.T) {
	for _, c := range []struct {
		name    string
		trusted []netip.Prefix
		xff     string
		want    string
	}{
		{"no trusted proxy: the header is ignored", nil, "203.0.113.9", "127.0.0.1"},
		{"no trusted proxy: a chain is ignored", nil, "203.0.113.9, 198.51.100.4", "127.0.0.1"},
		{"through a trusted proxy", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, "203.0.113.9", "203.0.113.9"},
		{"through a trusted proxy, a hop it does not vouch for", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, "203.0.113.9, 198.51.100.4", "198.51.100.4"},
		{"a private address is not trusted by default", []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, "203.0.113.9", "127.0.0.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, func(cfg *Config) { cfg.TrustedProxies = c.trusted })
			body := mustJSON(t, event(1, 1))
			req, _ := http.NewRequest(http.MethodPost, h.http.URL+Path, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			webhook.SetHeaders(req.Header, secretB, "forged", time.Now(), body) // not the receiver's secret
			req.Header.Set("X-Forwarded-For", c.xff)
			req.Header.Set("X-Real-IP", "192.0.2.66")
			if r := h.do(req); r.status != http.StatusUnauthorized {
				t.Fatalf("answer %d, want 401", r.status)
			}
			var got []string
			for _, line := range strings.Split(h.logs.String(), "\n") {
				var rec struct {
					Msg      string `json:"msg"`
					ClientIP string `json:"client_ip"`
				}
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "webhook rejected" {
					got = append(got, rec.ClientIP)
				}
			}
			if len(got) != 1 || got[0] != c.want {
				t.Errorf("logged client_ip %q, want [%q]", got, c.want)
			}
			if strings.Contains(h.logs.String(), "192.0.2.66") {
				t.Error("the forged X-Real-IP reached the logs")
			}
			metrics := string(h.get("/metrics").body)
			for _, ip := range []string{"203.0.113.9", "198.51.100.4", "192.0.2.66", "127.0.0.1"} {
				if strings.Contains(metrics, ip) {
					t.Errorf("/metrics carries the client address %s", ip)
				}
			}
		})
	}
}

func TestCheckReplayWindow_ToleranceAgainstTheLiveStream(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, func(c *Config) { c.Tolerance = 5 * time.Minute })
	if err := h.rcv.CheckReplayWindow(ctx); err != nil {
		t.Fatalf("5m tolerance against the 1h window: %v", err)
	}
	long := newHarness(t, func(c *Config) { c.Tolerance = 45 * time.Minute })
	err := long.rcv.CheckReplayWindow(ctx)
	if err == nil {
		t.Fatal("a 45m tolerance was accepted against a 1h duplicate window: a replay 90m later would be stored twice")
	}
	for _, want := range []string{"BRIDGE_WEBHOOK_TOLERANCE=45m0s", "SN_EVENTS", "duplicate window of 1h0m0s", "1h30m0s", "below 30m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// The live stream counts, not the default: an operator's shorter window.
	st, err := h.js.Stream(ctx, events.StreamSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Duplicates = 8 * time.Minute
	if _, err := h.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := h.rcv.CheckReplayWindow(ctx); err == nil || !strings.Contains(err.Error(), "duplicate window of 8m0s") {
		t.Errorf("5m tolerance against an 8m window: %v, want an error naming the 8m window", err)
	}
}
