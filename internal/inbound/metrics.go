package inbound

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/events"
)

type metrics struct {
	requests          *prometheus.CounterVec // by path, code
	accepted          prometheus.Counter     // requests of the webhook path answered 202
	published         *prometheus.CounterVec // by table
	duplicates        *prometheus.CounterVec // by table
	echoes            *prometheus.CounterVec // by table
	signatureFailures *prometheus.CounterVec // by reason
	selfTests         *prometheus.CounterVec // by result
	publishFailures   prometheus.Counter
	publishSeconds    prometheus.Histogram
	openConns         prometheus.Gauge
	connLimitWaits    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_http_requests_total",
			Help: "HTTP requests answered by the receiver, by route and status code.",
		}, []string{"path", "code"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_ingest_events_published_total",
			Help: "Webhook events newly stored in SN_EVENTS, by table.",
		}, []string{"table"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_ingest_duplicates_total",
			Help: "Webhook events JetStream already held (same Nats-Msg-Id within the duplicate window), by table.",
		}, []string{"table"}),
		echoes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_ingest_echoes_total",
			Help: "Webhook events recognised as echoes of the bridge's own ServiceNow writes and not stored, by table.",
		}, []string{"table"}),
		signatureFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_ingest_signature_failures_total",
			Help: "Webhooks rejected with 401, by reason (missing_headers, bad_timestamp, timestamp_skew, signature, no_secrets).",
		}, []string{"reason"}),
		selfTests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_webhook_selftests_total",
			Help: "Instance self-tests answered (webhook-id nowbridge-selftest:...; never stored), by result: ok, text_altered, or why it was refused (charset, secret_encrypted, secret_mismatch, body_altered, timestamp_skew, ...).",
		}, []string{"result"}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_ingest_publish_failures_total",
			Help: "Webhook bodies answered 503 because JetStream was unreachable or did not ack every event in time.",
		}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bridge_ingest_publish_seconds",
			Help:    "Time from the first publish of a webhook body's events to the last JetStream ack.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100µs .. 3.3s
		}),
		openConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_http_connections",
			Help: "HTTP connections open on the receiver's listener (at most BRIDGE_MAX_CONNECTIONS).",
		}),
		connLimitWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_http_connection_limit_waits_total",
			Help: "Times the receiver stopped accepting because BRIDGE_MAX_CONNECTIONS connections were open; further clients waited in the listen queue.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.published, m.duplicates, m.echoes, m.signatureFailures, m.selfTests,
		m.publishFailures, m.publishSeconds, m.openConns, m.connLimitWaits} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, reason := range []string{"missing_headers", "bad_timestamp", "timestamp_skew", "signature", "no_secrets"} {
		m.signatureFailures.WithLabelValues(reason) // export zeros so alerts see the series
	}
	for _, result := range events.SelfTestResults {
		m.selfTests.WithLabelValues(result)
	}
	m.accepted = m.requests.WithLabelValues(Path, "202")
	return m, nil
}
