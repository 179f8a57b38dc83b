package faults

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// normalTraffic posts signed webhooks from workers over kept-alive
// connections for d and returns each request's latency and every failure.
func normalTraffic(b *bridge, client *http.Client, workers, first int, d time.Duration) (lat []time.Duration, failures []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				n := first + w<<20 + i
				start := time.Now()
				a := post(client, webhookRequest(b.URL, n, time.Now(), secretOld))
				took := time.Since(start)
				mu.Lock()
				if a.err != nil || a.status != http.StatusAccepted {
					failures = append(failures, fmt.Sprintf("%s: %d %v", msgID(n), a.status, a.err))
				} else {
					lat = append(lat, took)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return lat, failures
}

// hostile is one misbehaving client's outcome.
type hostile struct {
	kind    string
	status  int           // the answer it got, 0 for none
	after   time.Duration // until the answer or the bridge closing the connection
	written int64         // bytes it had sent by then
	err     error         // its own failure (e.g. it gave up first)
}

// countingConn counts what a hostile client managed to send.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// slowHeader sends a request line, then a header line every 200ms, never
// finishing the headers (slowloris).
func slowHeader(addr string, giveUp time.Duration) hostile {
	return rawClient("slow header", addr, giveUp, func(c net.Conn) error {
		if _, err := fmt.Fprintf(c, "POST /webhooks/servicenow HTTP/1.1\r\nHost: bridge\r\n"); err != nil {
			return err
		}
		for i := 0; ; i++ {
			time.Sleep(200 * time.Millisecond)
			if _, err := fmt.Fprintf(c, "X-Slow-%d: %d\r\n", i, i); err != nil {
				return nil // cut
			}
		}
	})
}

// stalledBody sends complete headers and 1 KiB of a declared 100 KB body,
// then nothing.
func stalledBody(addr string, giveUp time.Duration) hostile {
	return rawClient("stalled body", addr, giveUp, func(c net.Conn) error {
		_, err := fmt.Fprintf(c, "POST /webhooks/servicenow HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"+
			"Content-Length: 100000\r\n\r\n%s", strings.Repeat(" ", 1024))
		return err
	})
}

// oversize declares or streams a body far over BRIDGE_MAX_BODY_BYTES.
func oversize(addr string, chunked bool, giveUp time.Duration) hostile {
	kind := "oversize (100 MB declared)"
	if chunked {
		kind = "oversize (chunked, no length)"
	}
	return rawClient(kind, addr, giveUp, func(c net.Conn) error {
		head := "POST /webhooks/servicenow HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
		if chunked {
			head += "Transfer-Encoding: chunked\r\n\r\n"
		} else {
			head += "Content-Length: 100000000\r\n\r\n"
		}
		if _, err := io.WriteString(c, head); err != nil {
			return err
		}
		block := strings.Repeat("x", 64<<10)
		for sent := 0; sent < 100_000_000; sent += len(block) {
			chunk := block
			if chunked {
				chunk = fmt.Sprintf("%x\r\n%s\r\n", len(block), block)
			}
			if _, err := io.WriteString(c, chunk); err != nil {
				return nil // the bridge stopped reading: its answer is what counts
			}
		}
		return nil
	})
}

// rawClient dials addr, runs send alongside a reader, and reports the
// bridge's answer (or its closing the connection) and when it came.
func rawClient(kind, addr string, giveUp time.Duration, send func(net.Conn) error) hostile {
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return hostile{kind: kind, err: err}
	}
	defer c.Close()
	_ = c.SetDeadline(start.Add(giveUp))
	cc := &countingConn{Conn: c}
	go func() { _ = send(cc) }()
	h := hostile{kind: kind}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	h.after, h.written = time.Since(start), cc.n.Load()
	if err == nil {
		h.status = resp.StatusCode
		resp.Body.Close()
		return h
	}
	// Cut: the bridge closed the connection without an answer. A timeout
	// here is this client's own deadline: the bridge held it all along.
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		h.err = fmt.Errorf("still held after %s, gave up", giveUp)
	}
	return h
}

// TestHostileClients_NormalTrafficGoesOnResourcesComeBack: 100 slowloris
// clients, 100 stalled uploads and 20 oversize bodies while normal senders
// post. The normal requests all succeed without their p99 blowing up; the
// slow and stalled clients are cut by the read timeouts, the oversize ones
// answered 413 at once; afterwards the bridge's descriptors and goroutines
// are back to where they were (issue 16: each such connection held a
// descriptor and a goroutine for up to 60s, without bound).
func TestHostileClients_NormalTrafficGoesOnResourcesComeBack(t *testing.T) {
	b := startBridge(t, "", map[string]string{
		"BRIDGE_READ_HEADER_TIMEOUT": "1s",
		"BRIDGE_READ_TIMEOUT":        "2s",
		"BRIDGE_IDLE_TIMEOUT":        "5s",
	})
	addr := strings.TrimPrefix(b.URL, "http://")
	const workers = 4
	client := keepAliveClient(workers)
	defer client.CloseIdleConnections()

	normalTraffic(b, client, workers, 0, 500*time.Millisecond) // warm-up
	base, failures := normalTraffic(b, client, workers, 1<<28, loadFor(t, 1500*time.Millisecond))
	if len(failures) > 0 {
		t.Fatalf("normal traffic failed before any hostile client: %s", failures[0])
	}
	client.CloseIdleConnections()
	time.Sleep(300 * time.Millisecond)
	fds0, gr0 := b.metric("process_open_fds"), b.metric("go_goroutines")

	const slow, stalled, big = 100, 100, 10
	giveUp := 15 * time.Second
	results := make(chan hostile, slow+stalled+2*big)
	var hw sync.WaitGroup
	spawn := func(n int, f func() hostile) {
		for range n {
			hw.Add(1)
			go func() { defer hw.Done(); results <- f() }()
		}
	}
	spawn(slow, func() hostile { return slowHeader(addr, giveUp) })
	spawn(stalled, func() hostile { return stalledBody(addr, giveUp) })
	spawn(big, func() hostile { return oversize(addr, false, giveUp) })
	spawn(big, func() hostile { return oversize(addr, true, giveUp) })
	time.Sleep(300 * time.Millisecond) // let them connect
	fdsPeak, grPeak := b.metric("process_open_fds"), b.metric("go_goroutines")
	during, failures := normalTraffic(b, client, workers, 2<<28, 2500*time.Millisecond)
	hw.Wait()
	close(results)

	worst := map[string]time.Duration{}
	statuses := map[string]map[int]int{}
	held := map[string]int{}
	sent := map[string]int64{} // the most an oversize client sent before its answer
	for h := range results {
		if h.err != nil {
			if held[h.kind] == 0 {
				t.Errorf("%s client: %v", h.kind, h.err)
			}
			held[h.kind]++
			continue
		}
		worst[h.kind] = max(worst[h.kind], h.after)
		sent[h.kind] = max(sent[h.kind], h.written)
		if statuses[h.kind] == nil {
			statuses[h.kind] = map[int]int{}
		}
		statuses[h.kind][h.status]++
	}
	client.CloseIdleConnections()
	var fds, gr float64
	deadline := time.Now().Add(15 * time.Second)
	for {
		fds, gr = b.metric("process_open_fds"), b.metric("go_goroutines")
		// A little slack for descriptors: the store opens new files as
		// the streams grow.
		if (fds <= fds0+10 && gr <= gr0+8) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	bp50, bp99 := percentile(base, 0.5), percentile(base, 0.99)
	hp50, hp99 := percentile(during, 0.5), percentile(during, 0.99)
	t.Logf("normal requests: alone %d, p50 %s p99 %s; beside the hostile clients %d, p50 %s p99 %s",
		len(base), bp50, bp99, len(during), hp50, hp99)
	t.Logf("hostile clients, answers and the longest wait: %v %v; held until they gave up: %v; most bytes sent before the answer: %v",
		statuses, worst, held, sent)
	t.Logf("descriptors %v -> %v with the hostile clients -> %v after; goroutines %v -> %v -> %v", fds0, fdsPeak, fds, gr0, grPeak, gr)

	if len(failures) > 0 {
		t.Errorf("%d normal requests failed beside the hostile clients, e.g. %s", len(failures), failures[0])
	}
	if limit := max(10*bp99, time.Second); hp99 > limit {
		t.Errorf("normal p99 %s beside the hostile clients, over %s (10x the %s alone, at least 1s)", hp99, limit, bp99)
	}
	if fdsPeak < fds0+float64(slow+stalled)/2 {
		t.Errorf("descriptors %v with %d hostile connections open, from %v: the hostile clients did not connect", fdsPeak, slow+stalled, fds0)
	}
	if w := worst["slow header"]; w > 3*time.Second || statuses["slow header"][0] != slow {
		t.Errorf("slowloris clients: %v, the last cut after %s; want every one cut, without an answer, about the 1s header timeout", statuses["slow header"], w)
	}
	if w := worst["stalled body"]; w > 4*time.Second || statuses["stalled body"][0]+statuses["stalled body"][400] != stalled {
		t.Errorf("stalled uploads: %v, the last cut after %s; want every one cut (or answered 400) about the 2s read timeout", statuses["stalled body"], w)
	}
	// 413 at once from the declared length; a chunked body is read up to
	// the 1 MiB limit first, which a loaded -race bridge may not manage
	// within the test's 2s read timeout (then: 400 or cut). Neither reads
	// what follows: each client got its answer long before sending 100 MB.
	declared, chunked := "oversize (100 MB declared)", "oversize (chunked, no length)"
	if w := worst[declared]; w > 5*time.Second || statuses[declared][http.StatusRequestEntityTooLarge] != big {
		t.Errorf("%s: %v, the last after %s; want every one answered 413 within seconds", declared, statuses[declared], w)
	}
	if w := worst[chunked]; w > 5*time.Second || statuses[chunked][http.StatusRequestEntityTooLarge] < big/2 {
		t.Errorf("%s: %v, the last after %s; want them answered 413 (or cut by the read timeout), most with 413", chunked, statuses[chunked], w)
	}
	for _, kind := range []string{declared, chunked} {
		if sent[kind] > 50_000_000 {
			t.Errorf("%s: a client sent %d bytes before its answer: the bridge read far past its 1 MiB limit", kind, sent[kind])
		}
	}
	if fds > fds0+10 || gr > gr0+8 {
		t.Errorf("15s after the hostile clients: %v descriptors (from %v) and %v goroutines (from %v); want them back", fds, fds0, gr, gr0)
	}
}
