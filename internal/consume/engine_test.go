package consume

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/nowbridge/nowbridge/internal/broker"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testStream   = "WORK"
	testPipeline = "test"
	headerKey    = "Test-Key"
)

// harness is a real nats-server with the bridge's streams (BRIDGE_DLQ) and
// a WORK stream the engine consumes.
type harness struct {
	t       *testing.T
	js      jetstream.JetStream
	retries *prometheus.CounterVec
	dead    prometheus.Counter
	paused  prometheus.Gauge
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	s := natstest.RunServer(t)
	_, js := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := broker.EnsureAll(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: testStream, Subjects: []string{"work.>"}}); err != nil {
		t.Fatal(err)
	}
	return &harness{
		t: t, js: js,
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "retries_total"}, []string{"reason"}),
		dead:    prometheus.NewCounter(prometheus.CounterOpts{Name: "dead_letters_total"}),
		paused:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "paused"}),
	}
}

// handlerFunc keys messages by their Test-Key header.
type handlerFunc func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error

func (f handlerFunc) Key(msg jetstream.Msg) string { return msg.Headers().Get(headerKey) }
func (f handlerFunc) Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	return f(ctx, msg, meta)
}

func (h *harness) config(hf handlerFunc) Config {
	return Config{
		JS: h.js, Stream: testStream, Pipeline: testPipeline, Handler: hf,
		Consumer: jetstream.ConsumerConfig{Durable: "work", FilterSubject: "work.>"},
		Tuning:   Tuning{Workers: 4, Batch: 16, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond},
		Metrics:  Metrics{Retries: h.retries, DeadLetters: h.dead, Paused: h.paused},
	}
}

// publish stores a message of key with body and returns its sequence.
func (h *harness) publish(key, body string) uint64 {
	h.t.Helper()
	msg := &nats.Msg{Subject: "work." + key, Data: []byte(body), Header: nats.Header{}}
	msg.Header.Set(headerKey, key)
	ack, err := h.js.PublishMsg(h.t.Context(), msg)
	if err != nil {
		h.t.Fatal(err)
	}
	return ack.Sequence
}

// run starts an engine until stop is called or the test ends; stop
// returns how long Run took to return.
func (h *harness) run(cfg Config) (stop func() time.Duration) {
	h.t.Helper()
	e, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	var took time.Duration
	stop = func() time.Duration {
		once.Do(func() {
			start := time.Now()
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("Run: %v", err)
			}
			took = time.Since(start)
		})
		return took
	}
	h.t.Cleanup(func() { stop() })
	return stop
}

// waitDone waits until the consumer has acked (or terminated) every
// message of the stream. The ack floor is what says so: right after a
// publish the consumer's pending count may not include it yet.
func (h *harness) waitDone(timeout time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	var info *jetstream.ConsumerInfo
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var last uint64
		st, err := h.js.Stream(ctx, testStream)
		if err == nil {
			last = st.CachedInfo().State.LastSeq
			var c jetstream.Consumer
			if c, err = h.js.Consumer(ctx, testStream, "work"); err == nil {
				info, err = c.Info(ctx)
			}
		}
		cancel()
		if err == nil && info.AckFloor.Stream >= last && info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("consumer not done after %v: %+v", timeout, info)
}

func (h *harness) deadLetters() []*jetstream.RawStreamMsg {
	h.t.Helper()
	ctx := h.t.Context()
	st, err := h.js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		if m, err := st.GetMsg(ctx, seq); err == nil {
			out = append(out, m)
		}
	}
	return out
}

func TestEngine_OneRecordAtATimeInStreamOrderUnderConcurrency(t *testing.T) {
	h := newHarness(t)
	const keys, perKey = 30, 8
	var mu sync.Mutex
	handled := map[string][]int{} // key -> bodies acked, in order
	active := map[string]int{}
	var overlaps, failures atomic.Int32
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		key := msg.Headers().Get(headerKey)
		n, _ := strconv.Atoi(string(msg.Data()))
		mu.Lock()
		active[key]++
		if active[key] > 1 {
			overlaps.Add(1)
		}
		mu.Unlock()
		time.Sleep(time.Duration(rand.N(3)) * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		active[key]--
		// Every third message fails on its first two deliveries, so later
		// ones of its record must wait behind it.
		if n%3 == 1 && meta.NumDelivered <= 2 {
			failures.Add(1)
			return errors.New("app busy")
		}
		handled[key] = append(handled[key], n)
		return nil
	})
	cfg.Workers = 8
	h.run(cfg)
	for n := range perKey {
		for k := range keys {
			h.publish(fmt.Sprintf("k%02d", k), strconv.Itoa(n))
		}
	}
	h.waitDone(60 * time.Second)

	if n := overlaps.Load(); n > 0 {
		t.Errorf("%d times two messages of one record were handled at once", n)
	}
	mu.Lock()
	defer mu.Unlock()
	want := fmt.Sprint([]int{0, 1, 2, 3, 4, 5, 6, 7})
	for k := range keys {
		key := fmt.Sprintf("k%02d", k)
		if got := fmt.Sprint(handled[key]); got != want {
			t.Errorf("%s handled %s, want %s (each once, in stream order)", key, got, want)
		}
	}
	if failures.Load() == 0 || testutil.ToFloat64(h.retries.WithLabelValues(ReasonOrdering)) == 0 {
		t.Errorf("no retries or no ordering hand-backs (%d failures): the test did not exercise ordering", failures.Load())
	}
}

func TestEngine_ASlowRecordHoldsUpNoOther(t *testing.T) {
	h := newHarness(t)
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		key := msg.Headers().Get(headerKey)
		if key == "slow" && string(msg.Data()) == "1" {
			<-release
		}
		mu.Lock()
		order = append(order, key+"/"+string(msg.Data()))
		mu.Unlock()
		return nil
	})
	cfg.Workers = 2
	h.run(cfg)
	h.publish("slow", "1")
	h.publish("slow", "2")
	for i := range 20 {
		h.publish(fmt.Sprintf("fast%d", i), "1")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(order)
		mu.Unlock()
		if n == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 20 other records handled while one record's handler was blocked, want all", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	for _, o := range order {
		if strings.HasPrefix(o, "slow") {
			t.Errorf("%s handled while slow/1 was still being handled", o)
		}
	}
	mu.Unlock()
	close(release)
	h.waitDone(10 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(order[20:], ","); got != "slow/1,slow/2" {
		t.Errorf("slow record handled as %s, want slow/1,slow/2", got)
	}
}

// The retry schedule (issue 16): a consumer BackOff made JetStream wait
// BackOff[n] - AckWait + the delay for the n-th NakWithDelay, so an app
// answering Retry-After: 1 saw attempts 1 s and then 31 s apart. The
// engine's consumer has no BackOff and the default ack wait of 30 s: every
// delay it asks for must be what happens.
func TestEngine_EveryRetryDelayIsHonoured(t *testing.T) {
	t.Run("Retry-After", func(t *testing.T) {
		gaps := retrySchedule(t, 50*time.Millisecond, 3, func() error {
			e := RetryAfter(errors.New("app answered 503"), time.Second)
			e.Status = 503
			return e
		})
		for i, g := range gaps {
			// Never earlier than asked; later only by the tenth of jitter
			// and a loaded machine's scheduling.
			if g < time.Second || g > 2500*time.Millisecond {
				t.Errorf("retry %d came %v after the attempt before, want 1 s (Retry-After: 1) -- all gaps: %v", i+1, g, gaps)
			}
		}
	})
	t.Run("Retry-After longer than the ack wait, handler beating in-progress acks", func(t *testing.T) {
		// An in-progress ack arriving after a NakWithDelay would make
		// JetStream redeliver after the ack wait (300 ms) instead.
		gaps := retrySchedule(t, 50*time.Millisecond, 2, func() error {
			time.Sleep(250 * time.Millisecond) // several heartbeats while handling
			return RetryAfter(errors.New("app answered 429"), time.Second)
		}, func(c *Config) { c.AckWait = 300 * time.Millisecond })
		for i, g := range gaps {
			if g < time.Second+250*time.Millisecond || g > 3*time.Second {
				t.Errorf("retry %d came %v after the attempt before, want 1 s after the 250 ms attempt -- all gaps: %v", i+1, g, gaps)
			}
		}
	})
	t.Run("exponential backoff", func(t *testing.T) {
		base := 200 * time.Millisecond
		gaps := retrySchedule(t, base, 4, func() error { return errors.New("app answered 502") })
		step := base
		for i, g := range gaps {
			// Jittered between half and all of the step.
			if lo, hi := step/2-20*time.Millisecond, step+800*time.Millisecond; g < lo || g > hi {
				t.Errorf("retry %d came %v after the attempt before, want %v..%v -- all gaps: %v", i+1, g, step/2, step, gaps)
			}
			step *= 2
		}
	})
}

// retrySchedule runs one message whose first failures attempts fail with
// fail(), with the default ack wait, and returns the gaps between attempts.
func retrySchedule(t *testing.T, retryBase time.Duration, failures int, fail func() error, tune ...func(*Config)) []time.Duration {
	t.Helper()
	h := newHarness(t)
	var mu sync.Mutex
	var attempts []time.Time
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, time.Now())
		if len(attempts) <= failures {
			return fail()
		}
		return nil
	})
	cfg.RetryBase, cfg.RetryMax, cfg.AckWait = retryBase, 10*time.Second, 0 // AckWait: the default, 30 s
	for _, f := range tune {
		f(&cfg)
	}
	h.run(cfg)
	h.publish("a", "x")
	h.waitDone(20 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != failures+1 {
		t.Fatalf("%d attempts, want %d (%d failures, then success)", len(attempts), failures+1, failures)
	}
	return gapsOf(attempts)
}

func gapsOf(ts []time.Time) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(ts); i++ {
		out = append(out, ts[i].Sub(ts[i-1]))
	}
	return out
}

func TestEngine_PermanentErrorIsExactlyOneDeadLetter(t *testing.T) {
	h := newHarness(t)
	var calls sync.Map // seq -> attempts
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		n, _ := calls.LoadOrStore(meta.Sequence.Stream, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if string(msg.Data()) == "bad" {
			e := Permanent(errors.New("app rejected the title"), "shorten the title, then `bridge dlq retry`")
			e.Status, e.Response = 422, "{\"error\":\"title too long\",\n\"field\":\"title\"}"
			return e
		}
		return nil
	})
	h.run(cfg)
	bad := h.publish("a", "bad")
	good := h.publish("a", "good")
	h.waitDone(10 * time.Second)
	time.Sleep(300 * time.Millisecond) // a redelivery would come by now (RetryMax 200 ms)

	handledOnce(t, &calls, bad, good)
	dl := h.deadLetters()
	if len(dl) != 1 {
		t.Fatalf("BRIDGE_DLQ holds %d messages, want exactly 1", len(dl))
	}
	hd := dl[0].Header
	want := map[string]string{
		"subject":                dl[0].Subject,
		events.HeaderDLQReason:   "app rejected the title",
		events.HeaderDLQHint:     "shorten the title, then `bridge dlq retry`",
		events.HeaderDLQStatus:   "422",
		events.HeaderDLQResponse: `{"error":"title too long", "field":"title"}`,
		events.HeaderDLQSubject:  "work.a",
		events.HeaderDLQStream:   testStream,
		events.HeaderDLQSeq:      strconv.FormatUint(bad, 10),
		events.HeaderMsgID:       fmt.Sprintf("%s:%s:%d", testPipeline, testStream, bad),
	}
	wantSubject := events.DLQSubject(testPipeline)
	for k, w := range want {
		got := hd.Get(k)
		if k == "subject" {
			got, w = dl[0].Subject, wantSubject
		}
		if got != w {
			t.Errorf("dead letter %s = %q, want %q", k, got, w)
		}
	}
	if string(dl[0].Data) != "bad" {
		t.Errorf("dead letter body %q, want the original message", dl[0].Data)
	}
	if n := testutil.ToFloat64(h.dead); n != 1 {
		t.Errorf("dead letters counted %v, want 1", n)
	}
}

func TestEngine_GivesUpAtMaxDeliver(t *testing.T) {
	h := newHarness(t)
	var attempts atomic.Int32
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		if string(msg.Data()) == "never" {
			attempts.Add(1)
			return errors.New("app answered 503")
		}
		return nil
	})
	cfg.MaxDeliver = 3
	h.run(cfg)
	h.publish("a", "never")
	h.publish("a", "after")
	h.waitDone(10 * time.Second)
	if n := attempts.Load(); n != 3 {
		t.Errorf("failing message handled %d times, want 3 (MaxDeliver)", n)
	}
	dl := h.deadLetters()
	if len(dl) != 1 || !strings.Contains(dl[0].Header.Get(events.HeaderDLQReason), "gave up after 3 deliveries: app answered 503") {
		t.Fatalf("dead letters %d, want one saying it gave up after 3 deliveries", len(dl))
	}
}

func TestEngine_PauseStopsFetchingForItsDuration(t *testing.T) {
	h := newHarness(t)
	const pause = 800 * time.Millisecond
	var mu sync.Mutex
	var pausedAt time.Time
	var calls []time.Time
	paused := make(chan struct{})
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		mu.Lock()
		defer mu.Unlock()
		if pausedAt.IsZero() {
			pausedAt = time.Now()
			close(paused)
			return Pause(errors.New("circuit breaker open"), pause)
		}
		calls = append(calls, time.Now())
		return nil
	})
	cfg.RetryMax = 5 * time.Second
	h.run(cfg)
	h.publish("first", "x")
	<-paused
	time.Sleep(50 * time.Millisecond)
	if g := testutil.ToFloat64(h.paused); g != 1 {
		t.Errorf("paused gauge %v during the pause, want 1", g)
	}
	for i := range 5 {
		h.publish(fmt.Sprintf("k%d", i), "x")
	}
	h.waitDone(10 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 6 {
		t.Fatalf("%d messages handled after the pause, want 6 (the paused one and 5 more)", len(calls))
	}
	for _, c := range calls {
		if d := c.Sub(pausedAt); d < pause-20*time.Millisecond {
			t.Errorf("a message was handled %v after the pause began, want none before %v", d, pause)
		}
	}
	if g := testutil.ToFloat64(h.paused); g != 0 {
		t.Errorf("paused gauge %v after the pause, want 0", g)
	}
	if n := testutil.ToFloat64(h.retries.WithLabelValues(ReasonBreakerOpen)); n != 1 {
		t.Errorf("retries{breaker_open} = %v, want 1", n)
	}
}

func TestEngine_StopMidFlightLosesNothing(t *testing.T) {
	h := newHarness(t)
	const total = 60
	var mu sync.Mutex
	acked := map[uint64]int{}
	var cancelledInFlight atomic.Int32
	handle := func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		time.Sleep(15 * time.Millisecond)
		if ctx.Err() != nil {
			cancelledInFlight.Add(1)
		}
		mu.Lock()
		acked[meta.Sequence.Stream]++
		mu.Unlock()
		return nil
	}
	for i := range total {
		h.publish(fmt.Sprintf("k%d", i%7), strconv.Itoa(i))
	}
	stop := h.run(h.config(handle))
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 10 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if took := stop(); took > 2*time.Second {
		t.Errorf("Run took %v to stop with 15 ms handlers in flight", took)
	}
	mu.Lock()
	first := len(acked)
	mu.Unlock()
	if first == total {
		t.Fatal("everything was handled before the stop: the test did not stop mid-flight")
	}
	h.run(h.config(handle)) // the next owner, same durable consumer
	h.waitDone(30 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(acked) != total {
		t.Errorf("%d of %d messages handled after a stop and a restart", len(acked), total)
	}
	if n := cancelledInFlight.Load(); n > 0 {
		t.Errorf("%d handlers in flight at the stop saw their context cancelled; they should finish within the grace", n)
	}
}

func TestEngine_StopCancelsAHungHandlerAfterTheGrace(t *testing.T) {
	h := newHarness(t)
	started := make(chan struct{}, 1)
	var attempts atomic.Int32
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		if attempts.Add(1) == 1 {
			started <- struct{}{}
			<-ctx.Done()
			return fmt.Errorf("call abandoned: %w", ctx.Err())
		}
		return nil
	})
	cfg.StopGrace = 300 * time.Millisecond
	stop := h.run(cfg)
	h.publish("a", "x")
	<-started
	if took := stop(); took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("Run took %v to stop with a hung handler, want about the 300 ms grace", took)
	}
	h.run(h.config(cfg.Handler.(handlerFunc)))
	h.waitDone(10 * time.Second) // handed back at once, not after the ack wait
	if n := attempts.Load(); n != 2 {
		t.Errorf("handled %d times, want 2 (abandoned, then done by the next owner)", n)
	}
}

func TestEngine_LongHandlerIsKeptWithInProgressAcks(t *testing.T) {
	h := newHarness(t)
	var deliveries atomic.Int32
	cfg := h.config(func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		deliveries.Add(1)
		time.Sleep(1500 * time.Millisecond)
		return nil
	})
	cfg.AckWait = 400 * time.Millisecond
	h.run(cfg)
	h.publish("a", "1")
	h.publish("a", "2") // waits in memory behind the first, also past the ack wait
	h.waitDone(15 * time.Second)
	if n := deliveries.Load(); n != 2 {
		t.Errorf("%d deliveries for 2 messages handled for 1.5 s each with a 400 ms ack wait, want 2 (no redelivery)", n)
	}
}

func TestEngine_MissingStreamIsAStartUpErrorAStopIsNot(t *testing.T) {
	h := newHarness(t)
	cfg := h.config(func(context.Context, jetstream.Msg, *jetstream.MsgMetadata) error { return nil })
	cfg.Stream = "NO_SUCH_STREAM"
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = e.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "NO_SUCH_STREAM") || !strings.Contains(err.Error(), "bridge status") {
		t.Errorf("Run on a missing stream = %v, want an error naming the stream and what to check", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := e.Run(ctx); err != nil {
		t.Errorf("Run with a cancelled context = %v, want nil", err)
	}
}

// TestEngine_WaitsOutJetStreamNotAnswering: JetStream not answering when the
// consumer is created (a cluster electing a stream leader after losing a
// node, a server restarting) is waited out within SetupWait, not a reason
// to stop.
func TestEngine_WaitsOutJetStreamNotAnswering(t *testing.T) {
	opts := natstest.Options(t.TempDir())
	s := natstest.RunServerWithOptions(t, opts)
	_, js := natstest.Connect(t, s)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: testStream, Subjects: []string{"work.>"}}); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, js: js,
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "retries_total"}, []string{"reason"}),
		dead:    prometheus.NewCounter(prometheus.CounterOpts{Name: "dead_letters_total"}),
		paused:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "paused"}),
	}
	var handled atomic.Int32
	cfg := h.config(func(context.Context, jetstream.Msg, *jetstream.MsgMetadata) error { handled.Add(1); return nil })
	cfg.SetupWait = 30 * time.Second
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Shutdown() // JetStream gone when the engine starts
	s.WaitForShutdown()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	time.Sleep(1500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while JetStream did not answer, want it to wait", err)
	default:
	}
	natstest.Restart(t, s, opts)
	msg := nats.NewMsg("work.1")
	msg.Header.Set(headerKey, "k")
	deadline := time.Now().Add(20 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := js.PublishMsg(pctx, msg)
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for handled.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the message was not handled within 20s of JetStream answering again")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v after cancel, want nil", err)
	}
}

func TestEngine_ConsumerConfig(t *testing.T) {
	h := newHarness(t)
	cfg := h.config(func(context.Context, jetstream.Msg, *jetstream.MsgMetadata) error { return nil })
	cfg.Workers, cfg.Batch, cfg.MaxDeliver, cfg.AckWait = 6, 10, 0, 45*time.Second
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := e.ConsumerConfig()
	if len(c.BackOff) != 0 || c.AckWait != 45*time.Second || c.MaxAckPending != 120 || c.MaxDeliver != -1 ||
		c.AckPolicy != jetstream.AckExplicitPolicy || c.Durable != "work" || c.FilterSubject != "work.>" {
		t.Errorf("consumer config %+v; want no BackOff, AckWait 45s, MaxAckPending 6*10*2, MaxDeliver -1, explicit acks, durable work on work.>", c)
	}
	cfg.MaxAckPending = 5
	cfg.MaxDeliver = -2
	cfg.Handler = nil
	err = cfg.Validate()
	for _, want := range []string{"Handler", "max deliver -2", "max ack pending 5"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to report %q", err, want)
		}
	}
}

// observed is a handler that is also an Observer: it records what the
// engine told it, in order.
type observed struct {
	handlerFunc
	mu     sync.Mutex
	events []string // "retry <body> <delivered> <reason>", "dead <body> <dlq msgs>"
	// deadErr fails DeadLettered for a body once.
	deadErr map[string]bool
	js      jetstream.JetStream
}

func (o *observed) Retrying(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d Decision, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, fmt.Sprintf("retry %s %d %s", msg.Data(), meta.NumDelivered, d.Reason))
}

func (o *observed) DeadLettered(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, d Decision, err error) error {
	st, serr := o.js.Stream(ctx, events.StreamDLQ)
	if serr != nil {
		return serr
	}
	info, serr := st.Info(ctx)
	if serr != nil {
		return serr
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, fmt.Sprintf("dead %s %d %d", msg.Data(), info.State.Msgs, d.Status))
	if o.deadErr[string(msg.Data())] {
		delete(o.deadErr, string(msg.Data()))
		return errors.New("result not stored")
	}
	return nil
}

func TestEngine_ObserverHearsEachRetryAndDeadLetterBeforeTheEngineActs(t *testing.T) {
	h := newHarness(t)
	var attempts sync.Map // body -> *atomic.Int32
	o := &observed{js: h.js, deadErr: map[string]bool{"refused-then-kept": true}}
	o.handlerFunc = func(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
		n, _ := attempts.LoadOrStore(string(msg.Data()), new(atomic.Int32))
		try := n.(*atomic.Int32).Add(1)
		switch body := string(msg.Data()); {
		case body == "busy" && try <= 2:
			e := RetryAfter(errors.New("servicenow answered 429"), 0)
			e.Status = 429
			return e
		case body == "refused" || body == "refused-then-kept":
			e := Permanent(errors.New("data policy"), "fill the close code")
			e.Status = 403
			return e
		}
		return nil
	}
	cfg := h.config(nil)
	cfg.Handler = o
	h.run(cfg)
	h.publish("a", "busy")
	h.publish("b", "refused")
	h.publish("c", "refused-then-kept")
	h.waitDone(10 * time.Second)

	o.mu.Lock()
	got := slices.Clone(o.events)
	o.mu.Unlock()
	var busy, refused, kept []string
	for _, e := range got {
		switch {
		case strings.Contains(e, " busy "):
			busy = append(busy, e)
		case strings.Contains(e, " refused "):
			refused = append(refused, e)
		case strings.Contains(e, " refused-then-kept "):
			kept = append(kept, e)
		}
	}
	// Each retry is told before the NAK: the second comes from the second
	// delivery, so the first was heard before the message came back.
	if want := []string{"retry busy 1 rate_limited", "retry busy 2 rate_limited"}; !slices.Equal(busy, want) {
		t.Errorf("retries observed %q, want %q", busy, want)
	}
	// The dead letter is stored before the observer hears of it.
	if len(refused) != 1 || !strings.HasPrefix(refused[0], "dead refused ") || strings.HasPrefix(refused[0], "dead refused 0 ") || !strings.HasSuffix(refused[0], " 403") {
		t.Errorf("dead letters observed for refused: %q, want one, told after BRIDGE_DLQ stored it, with status 403", refused)
	}
	// An observer that fails keeps the message: it comes back, is
	// dead-lettered again under the same id, and the observer hears it again.
	if len(kept) != 2 {
		t.Errorf("dead letters observed for refused-then-kept: %q, want two (the first refused by the observer)", kept)
	}
	if n, _ := attempts.Load("refused-then-kept"); n.(*atomic.Int32).Load() != 2 {
		t.Errorf("refused-then-kept handled %d times, want 2", n.(*atomic.Int32).Load())
	}
	if dl := h.deadLetters(); len(dl) != 2 {
		t.Errorf("BRIDGE_DLQ holds %d dead letters, want 2 (one per refused message)", len(dl))
	}
	if n := testutil.ToFloat64(h.dead); n != 2 {
		t.Errorf("dead letters counted %v, want 2", n)
	}
}
