package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/consume"
	"github.com/nowbridge/nowbridge/internal/dlq"
	"github.com/nowbridge/nowbridge/internal/events"
	"github.com/nowbridge/nowbridge/internal/trace"
	"github.com/nowbridge/nowbridge/internal/webhook"
)

// ResultsPipeline is the DLQ pipeline of the results delivery: results the
// app refused go to bridge.dlq.results.
const ResultsPipeline = "results"

// HeaderOutcome names a result's outcome on its POST (beside Bridge-Entity).
const HeaderOutcome = "Bridge-Outcome"

// HintResultRefused is the dead letter's hint for a result the app refused.
const HintResultRefused = "the app refused this result (BRIDGE_RESULTS_URL answered 4xx); fix its results endpoint, then `bridge dlq retry`"

// ResultsConfig wires the HTTP delivery of results. JS, URL and Secret are
// required; zero tuning values take the defaults.
type ResultsConfig struct {
	JS jetstream.JetStream
	// URL receives the POSTs (BRIDGE_RESULTS_URL); Secret signs them like
	// the HTTP applier's requests (BRIDGE_APPLY_SECRET, else the first
	// webhook secret).
	URL     string
	Secret  webhook.Secret
	Timeout time.Duration // one POST (default 10s)

	Durable string // consumer name (default "results-http")
	// Tuning of the consumer engine, as the apply pipeline's (MaxDeliver
	// default 100, HandleTimeout default AckWait*2/3).
	consume.Tuning

	// Trace records the results the app's endpoint refused (dead letters)
	// and retries in the decision log; nil records nothing.
	Trace *trace.Recorder

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c ResultsConfig) withDefaults() ResultsConfig {
	if c.Durable == "" {
		c.Durable = "results-http"
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 100
	}
	if c.HandleTimeout <= 0 {
		c.HandleTimeout = c.AckWait * 2 / 3
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ResultsDelivery POSTs every result of BRIDGE_RESULTS to the app, for an
// app that takes the bridge's changes over HTTP (BRIDGE_APPLIER=http) and
// follows no NATS stream. Each POST carries the result's JSON (the body of
// bridge.result.<entity>.<outcome>), signed with the Standard Webhooks
// scheme; webhook-id and Idempotency-Key are the result's id, the same on
// every attempt. The results of one external id go one at a time, in order.
// The app's answer decides as it does for the applier: 2xx delivered; 408,
// 425, 429 and 5xx retried with backoff (Retry-After honoured); any other
// answer dead-letters the result on bridge.dlq.results.
type ResultsDelivery struct {
	post   *HTTPApplier
	url    string
	engine *consume.Engine
	log    *slog.Logger
	sent   *prometheus.CounterVec
}

// NewResultsDelivery validates cfg and builds the delivery; Run starts it.
func NewResultsDelivery(cfg ResultsConfig) (*ResultsDelivery, error) {
	u, err := url.Parse(cfg.URL)
	switch {
	case cfg.JS == nil:
		return nil, errors.New("results delivery: JS is required")
	case cfg.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return nil, fmt.Errorf("results delivery: BRIDGE_RESULTS_URL %q is not an http(s) URL", cfg.URL)
	case cfg.Secret.IsZero():
		return nil, errors.New("results delivery: a signing secret is required: set BRIDGE_APPLY_SECRET or BRIDGE_WEBHOOK_SECRETS")
	}
	cfg = cfg.withDefaults()
	d := &ResultsDelivery{
		post: NewHTTPApplier(cfg.URL, cfg.Secret, cfg.Timeout, cfg.Workers),
		url:  cfg.URL,
		log:  cfg.Logger.With("pipeline", ResultsPipeline),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_results_delivered_total",
			Help: "Results POSTed to BRIDGE_RESULTS_URL and accepted by the app, by outcome.",
		}, []string{"outcome"}),
	}
	m := consume.Metrics{
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_results_delivery_retries_total",
			Help: "Results POSTs handed back for a later retry, by reason (rate_limited, server_error, network, other; ordering: behind an earlier result of the same external id).",
		}, []string{"reason"}),
		DeadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_results_delivery_dead_letters_total",
			Help: "Results the app refused (4xx) or that ran out of deliveries, dead-lettered to bridge.dlq.results.",
		}),
		Latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bridge_results_delivery_seconds",
			Help:    "Time to POST one result to BRIDGE_RESULTS_URL.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(d.sent, m.Retries, m.DeadLetters, m.Latency.(prometheus.Histogram))
	}
	d.engine, err = consume.New(consume.Config{
		JS: cfg.JS, Stream: events.StreamResults, Pipeline: ResultsPipeline, Handler: resultsHandler{d},
		Consumer: jetstream.ConsumerConfig{
			Durable:       cfg.Durable,
			Description:   "Results of app changes POSTed to BRIDGE_RESULTS_URL (nowbridge results delivery)",
			FilterSubject: events.ResultsSubjects,
		},
		Tuning:  cfg.Tuning,
		Logger:  cfg.Logger,
		Metrics: m,
		Trace:   cfg.Trace,
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Run delivers until ctx ends. An error means the consumer could not be
// created (no BRIDGE_RESULTS stream).
func (d *ResultsDelivery) Run(ctx context.Context) error {
	defer d.post.CloseIdleConnections()
	return d.engine.Run(ctx)
}

type resultsHandler struct{ d *ResultsDelivery }

// Key is the result's external id: its results are delivered in order.
func (h resultsHandler) Key(msg jetstream.Msg) string {
	var probe struct {
		Entity     string `json:"entity"`
		ExternalID string `json:"external_id"`
	}
	if json.Unmarshal(msg.Data(), &probe) != nil || probe.ExternalID == "" {
		return ""
	}
	return probe.Entity + "/" + probe.ExternalID
}

// Handle POSTs one result.
func (h resultsHandler) Handle(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata) error {
	var r events.Result
	if err := json.Unmarshal(msg.Data(), &r); err != nil {
		return consume.Permanent(fmt.Errorf("result %s (seq %d) is not a result: %w", msg.Subject(), meta.Sequence.Stream, err), "")
	}
	id := DeliveryID(msg.Headers(), meta)
	s, body, err := h.d.post.post(ctx, h.d.url, id, msg.Data(), map[string]string{HeaderEntity: r.Entity, HeaderOutcome: r.Outcome})
	if err != nil {
		return err
	}
	if s < 200 || s >= 300 {
		return answerError(h.d.url, id, s, body, HintResultRefused)
	}
	h.d.sent.WithLabelValues(r.Outcome).Inc()
	return nil
}

// DeliveryID is the webhook-id and Idempotency-Key of a result's POST: the
// result's own id (Nats-Msg-Id), also for a result `bridge dlq retry`
// stored again under an id of its own (dlq.HeaderRetryMsgID keeps the
// first), so the app recognises it; the stream position when the message
// has none.
func DeliveryID(h nats.Header, meta *jetstream.MsgMetadata) string {
	if id := h.Get(dlq.HeaderRetryMsgID); id != "" {
		return id
	}
	if id := h.Get(events.HeaderMsgID); id != "" {
		return id
	}
	return fmt.Sprintf("%s:%d", meta.Stream, meta.Sequence.Stream)
}
