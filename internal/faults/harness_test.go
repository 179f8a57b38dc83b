package faults

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
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

var (
	secretOld = webhook.NewSecret([]byte("faults-suite-old-secret-0123456789"))
	secretNew = webhook.NewSecret([]byte("faults-suite-new-secret-9876543210"))
)

// binDir holds the bridge binary, built once for the whole suite.
var (
	binDir    string
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nowbridge-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left running after the fault suite: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// bridgeBinary builds cmd/bridge (with -race when the suite runs under it),
// or takes the binary NOWBRIDGE_FAULTS_BRIDGE names (another build or
// release to hold to the same bar).
func bridgeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("NOWBRIDGE_FAULTS_BRIDGE"); p != "" {
			binPath, buildErr = filepath.Abs(p)
			return
		}
		goCmd, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("the go command is not on PATH: %w", err)
			return
		}
		binPath = filepath.Join(binDir, "bridge")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/nowbridge/nowbridge/cmd/bridge")
		start := time.Now()
		out, err := exec.Command(goCmd, args...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		t.Logf("built the bridge (race %v) in %s", raceEnabled, time.Since(start).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// bridge is one `bridge serve` process.
type bridge struct {
	t       *testing.T
	cmd     *exec.Cmd
	log     *lineLog
	URL     string // http://127.0.0.1:port
	NATSURL string // the embedded server's, when it runs one
	DataDir string
	exited  chan struct{}
	waitErr error
}

// serveCmd is `bridge serve` on loopback ports with the embedded NATS
// server in dataDir, the suite's old secret and JSON logs; env adds or
// overrides settings ("" removes one). The environment is otherwise empty.
func serveCmd(t *testing.T, dataDir string, env map[string]string) *exec.Cmd {
	t.Helper()
	settings := map[string]string{
		"BRIDGE_LISTEN":               "127.0.0.1:0",
		"BRIDGE_EMBEDDED_NATS_LISTEN": "127.0.0.1:0",
		"BRIDGE_DATA_DIR":             dataDir,
		"BRIDGE_WEBHOOK_SECRETS":      secretOld.Encoded(),
		"BRIDGE_LOG_FORMAT":           "json",
		"BRIDGE_SHUTDOWN_TIMEOUT":     "10s",
	}
	for k, v := range env {
		if v == "" {
			delete(settings, k)
		} else {
			settings[k] = v
		}
	}
	cmd := exec.Command(bridgeBinary(t), "serve")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	for k, v := range settings {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// start runs cmd with its output in b.log.
func (b *bridge) start(cmd *exec.Cmd) {
	b.t.Helper()
	b.cmd = cmd
	b.cmd.Stdout = b.log
	b.cmd.Stderr = b.log
	if err := b.cmd.Start(); err != nil {
		b.t.Fatalf("start the bridge: %v", err)
	}
	go func() {
		b.waitErr = b.cmd.Wait()
		close(b.exited)
	}()
}

// startBridge runs serveCmd (dataDir "": a new one) and returns once the
// bridge logs that it is serving. It is killed at the end of the test if it
// still runs.
func startBridge(t *testing.T, dataDir string, env map[string]string) *bridge {
	t.Helper()
	b := launchBridge(t, dataDir, env)
	b.awaitServing()
	return b
}

// launchBridge runs serveCmd (dataDir "": a new one) without waiting for
// it to serve (awaitServing does), so that several start at once. It is
// killed at the end of the test if it still runs.
func launchBridge(t *testing.T, dataDir string, env map[string]string) *bridge {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	b := &bridge{t: t, log: &lineLog{}, DataDir: dataDir, exited: make(chan struct{})}
	b.start(serveCmd(t, dataDir, env))
	t.Cleanup(func() {
		select {
		case <-b.exited:
		default:
			_ = b.cmd.Process.Kill()
			<-b.exited
		}
		if t.Failed() {
			t.Logf("bridge log (last lines):\n%s", b.log.tail(40))
		}
	})
	return b
}

// awaitServing waits until a launched bridge logs that it is serving and
// notes its addresses.
func (b *bridge) awaitServing() {
	b.t.Helper()
	if err := b.serving(60 * time.Second); err != nil {
		b.t.Fatalf("the bridge did not start: %v\n%s", err, b.log.tail(20))
	}
}

// serving waits up to d until a launched bridge logs that it is serving,
// or exits, and notes its addresses.
func (b *bridge) serving(d time.Duration) error {
	serving, err := b.log.await(b.exited, d, func(l logLine) bool { return l.Msg == "bridge serving" })
	if err != nil {
		return err
	}
	b.URL = "http://" + serving.Listen
	if l, ok := b.log.find(func(l logLine) bool { return l.Msg == "embedded NATS JetStream started" }); ok {
		b.NATSURL = l.URL
	}
	return nil
}

// runToExit runs serveCmd expecting it to stop by itself (a refused start).
func runToExit(t *testing.T, dataDir string, env map[string]string) (code int, out string) {
	t.Helper()
	b := &bridge{t: t, log: &lineLog{}, exited: make(chan struct{})}
	b.start(serveCmd(t, dataDir, env))
	code = b.wait(30 * time.Second)
	return code, b.log.tail(5)
}

func (b *bridge) signal(sig os.Signal) {
	b.t.Helper()
	if err := b.cmd.Process.Signal(sig); err != nil {
		b.t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait returns the exit status once the process ends, failing the test if
// it has not within d.
func (b *bridge) wait(d time.Duration) int {
	b.t.Helper()
	select {
	case <-b.exited:
	case <-time.After(d):
		_ = b.cmd.Process.Kill()
		<-b.exited
		b.t.Fatalf("the bridge did not exit within %s", d)
	}
	var exit *exec.ExitError
	if errors.As(b.waitErr, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -int(ws.Signal())
		}
		return exit.ExitCode()
	}
	if b.waitErr != nil {
		b.t.Fatalf("wait for the bridge: %v", b.waitErr)
	}
	return 0
}

// metric reads one unlabelled sample from /metrics.
func (b *bridge) metric(name string) float64 {
	b.t.Helper()
	v, n := b.metricSum(name)
	if n != 1 {
		b.t.Fatalf("/metrics has %d samples of %s, want one (unlabelled)", n, name)
	}
	return v
}

// metricSum adds up every sample of a metric on /metrics, whatever its
// labels, and says how many there were (0: the bridge does not export it).
func (b *bridge) metricSum(name string) (sum float64, samples int) {
	b.t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(b.URL + "/metrics")
	if err != nil {
		b.t.Fatalf("scrape /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				b.t.Fatalf("metric %s: %q", name, line)
			}
			rest = rest[end+1:]
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			b.t.Fatalf("metric %s: %q", name, line)
		}
		sum += f
		samples++
	}
	return sum, samples
}

// logLine is the part of a JSON log line the suite reads.
type logLine struct {
	Time   time.Time `json:"time"`
	Msg    string    `json:"msg"`
	Level  string    `json:"level"`
	Listen string    `json:"listen"`
	URL    string    `json:"url"`
	raw    string
}

// lineLog collects a process's output and lets a test wait for a line.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []logLine
	changed chan struct{}
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		raw := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		var line logLine
		_ = json.Unmarshal([]byte(raw), &line)
		line.raw = raw
		l.lines = append(l.lines, line)
	}
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return len(p), nil
}

func (l *lineLog) find(match func(logLine) bool) (logLine, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if match(line) {
			return line, true
		}
	}
	return logLine{}, false
}

// await waits for a matching line, the process's exit, or the timeout.
func (l *lineLog) await(exited <-chan struct{}, d time.Duration, match func(logLine) bool) (logLine, error) {
	deadline := time.After(d)
	for {
		if line, ok := l.find(match); ok {
			return line, nil
		}
		l.mu.Lock()
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-exited:
			if line, ok := l.find(match); ok {
				return line, nil
			}
			return logLine{}, errors.New("the process exited")
		case <-deadline:
			return logLine{}, fmt.Errorf("no such log line within %s", d)
		}
	}
}

// count counts the lines that match.
func (l *lineLog) count(match func(logLine) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if match(line) {
			n++
		}
	}
	return n
}

func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var raw []string
	for _, line := range l.lines[max(0, len(l.lines)-n):] {
		raw = append(raw, line.raw)
	}
	return strings.Join(raw, "\n")
}

// msgID is the Nats-Msg-Id of the suite's event n (version 1, an update).
func msgID(n int) string { return fmt.Sprintf("incident:%032x:1:update", n) }

// eventBody is the business rule's JSON for event n.
func eventBody(n int) []byte {
	b, _ := json.Marshal(map[string]any{
		"instance":       "dev12345",
		"table":          "incident",
		"sys_id":         fmt.Sprintf("%032x", n),
		"action":         "update",
		"sys_mod_count":  "1",
		"sys_updated_on": "2026-11-28 10:00:00",
		"sys_updated_by": "beth.anglin",
		"changed":        []string{"state"},
		"record":         map[string]any{"number": fmt.Sprintf("INC%07d", n%10_000_000), "short_description": "Email down", "state": "2"},
	})
	return b
}

// webhookRequest is event n posted to url, signed with each secret at ts.
func webhookRequest(url string, n int, ts time.Time, secrets ...webhook.Secret) *http.Request {
	body := eventBody(n)
	req, _ := http.NewRequest(http.MethodPost, url+"/webhooks/servicenow", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	id := msgID(n)
	var sigs []string
	for _, s := range secrets {
		sigs = append(sigs, webhook.Sign(s, id, ts.Unix(), body))
	}
	req.Header.Set(webhook.HeaderID, id)
	req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set(webhook.HeaderSignature, strings.Join(sigs, " "))
	return req
}

// answer is what a sender saw of one request.
type answer struct {
	status     int
	retryAfter string
	accepted   int // from a 202's body
	duplicates int
	err        error
	at         time.Time // when the answer (or the error) came
}

// refused: the connection was never made, so nothing was sent.
func (a answer) refused() bool {
	var op *net.OpError
	return a.err != nil && errors.As(a.err, &op) && op.Op == "dial"
}

func post(client *http.Client, req *http.Request) answer {
	resp, err := client.Do(req)
	if err != nil {
		return answer{err: err, at: time.Now()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), at: time.Now()}
	if resp.StatusCode == http.StatusAccepted {
		var acc struct{ Accepted, Duplicates int }
		_ = json.Unmarshal(body, &acc)
		a.accepted, a.duplicates = acc.Accepted, acc.Duplicates
	}
	return a
}

// keepAliveClient keeps a connection per worker, as ServiceNow's outbound
// REST does.
func keepAliveClient(workers int) *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 30 * time.Second}
}

// storedIDs counts every SN_EVENTS message by Nats-Msg-Id.
func storedIDs(t *testing.T, natsURL string) map[string]int {
	t.Helper()
	return streamMsgIDs(t, natsURL, events.StreamSN)
}

// streamMsgIDs counts every message of a stream by Nats-Msg-Id.
func streamMsgIDs(t *testing.T, natsURL, stream string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("connect to read %s: %v", stream, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("%s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	if info.State.Msgs == 0 {
		return ids
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// On a cluster the consumer may sit on a node still catching up after
	// a restart: an empty batch is waited out for up to 30 s.
	stalled := time.Now()
	for got := uint64(0); got < info.State.Msgs; {
		// Ask for no more than remain: Fetch waits out its MaxWait for a
		// batch it cannot fill.
		batch, err := cons.Fetch(int(min(1000, info.State.Msgs-got)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		before := got
		for m := range batch.Messages() {
			ids[m.Headers().Get(events.HeaderMsgID)]++
			got++
		}
		switch {
		case got > before:
			stalled = time.Now()
		case time.Since(stalled) > 30*time.Second:
			t.Fatalf("read %d of %s's %d messages, then nothing more came for %s (last fetch: %v)", got, stream, info.State.Msgs, time.Since(stalled).Round(time.Second), batch.Error())
		}
	}
	return ids
}

// storedInDataDir opens a stopped bridge's embedded store with a server of
// the test's own and counts SN_EVENTS by Nats-Msg-Id.
func storedInDataDir(t *testing.T, dataDir string) map[string]int {
	t.Helper()
	s := natstest.RunServerWithOptions(t, natstest.Options(dataDir))
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	return storedIDs(t, s.ClientURL())
}

// checkStoredOnce fails for every acked event not stored exactly once and
// every event stored more than once.
func checkStoredOnce(t *testing.T, stored map[string]int, acked []int) {
	t.Helper()
	missing, twice := 0, 0
	for _, n := range acked {
		if c := stored[msgID(n)]; c != 1 {
			if missing < 5 {
				t.Errorf("event %s was answered 202 and is stored %d times, want exactly once", msgID(n), c)
			}
			missing++
		}
	}
	for id, c := range stored {
		if c > 1 {
			if twice < 5 {
				t.Errorf("%s is stored %d times", id, c)
			}
			twice++
		}
	}
	if missing+twice > 0 {
		t.Errorf("%d acked events not stored exactly once, %d events stored more than once", missing, twice)
	}
}

// loadFor is how long a scenario's load runs: short by default, longer with
// NOWBRIDGE_FAULTS_SOAK (a duration, e.g. 2m).
func loadFor(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	if v := os.Getenv("NOWBRIDGE_FAULTS_SOAK"); v != "" {
		soak, err := time.ParseDuration(v)
		if err != nil || soak <= 0 {
			t.Fatalf("NOWBRIDGE_FAULTS_SOAK=%q: want a duration like 2m", v)
		}
		return soak
	}
	return d
}

// percentile of the durations (sorted in place), p in [0, 1].
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(p*float64(len(ds))))]
}

// retryAfter parses a Retry-After in seconds, capped at most: the suite
// backs off as a sender does, without waiting the full 5s every time.
func retryAfter(t *testing.T, a answer, most time.Duration) time.Duration {
	t.Helper()
	secs, err := strconv.Atoi(a.retryAfter)
	if err != nil || secs <= 0 {
		t.Errorf("a %d answer has Retry-After %q, want a number of seconds", a.status, a.retryAfter)
		return most
	}
	return min(time.Duration(secs)*time.Second, most)
}
