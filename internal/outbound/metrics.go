package outbound

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	messages  *prometheus.CounterVec // by outcome
	writes    *prometheus.CounterVec // by method
	conflicts *prometheus.CounterVec // by field
	unclaimed *prometheus.CounterVec // by reason
	retries   *prometheus.CounterVec // by reason
	dlq       prometheus.Counter
	paused    prometheus.Gauge
	latency   prometheus.Histogram

	results          *prometheus.CounterVec // by outcome
	resultDuplicates prometheus.Counter
	resultFailures   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_writeback_messages_total",
			Help: "App changes handled by the writeback, by outcome (updated, created, deleted, no_change, echo, stale, skipped).",
		}, []string{"outcome"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_writeback_writes_total",
			Help: "Writes sent to ServiceNow by the writeback, by HTTP method.",
		}, []string{"method"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "conflicts_total",
			Help: "Fields changed on both sides since the last sync, resolved by policy, by ServiceNow field.",
		}, []string{"field"}),
		unclaimed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_writeback_unclaimed_total",
			Help: "Writes not claimed as the app's own, whose version therefore flows to the app, by reason (handed_over_after, handed_over_just_before, not_next_version, not_kept_as_sent, side_effects).",
		}, []string{"reason"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_writeback_retries_total",
			Help: "App changes handed back to JetStream for a later retry, by reason (consume.Classify: rate_limited, server_error, network, auth, breaker_open, nats, other; ordering: waiting behind an earlier change of the same id; paused: pulled while the breaker was open).",
		}, []string{"reason"}),
		dlq: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_writeback_dead_letters_total",
			Help: "App changes ServiceNow rejected for good, sent to BRIDGE_DLQ (bridge dlq ls).",
		}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_writeback_paused",
			Help: "1 while the writeback stopped fetching because the ServiceNow circuit breaker is open.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bridge_writeback_apply_seconds",
			Help:    "Time to apply one app change to ServiceNow, reads and writes included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_writeback_results_total",
			Help: "Results of app changes stored in BRIDGE_RESULTS for the app, by outcome (created, updated, unchanged, stale, conflict, rejected, retrying).",
		}, []string{"outcome"}),
		resultDuplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_writeback_result_duplicates_total",
			Help: "Results published again for a redelivered app change and dropped by BRIDGE_RESULTS as duplicates (the app heard them once).",
		}),
		resultFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_writeback_result_failures_total",
			Help: "Results BRIDGE_RESULTS did not store (NATS unreachable, the stream missing): their changes are delivered again and publish them then.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.messages, m.writes, m.conflicts, m.unclaimed, m.retries, m.dlq, m.paused, m.latency,
			m.results, m.resultDuplicates, m.resultFailures)
	}
	return m
}
