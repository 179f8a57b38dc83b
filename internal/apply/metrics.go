package apply

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	applied     *prometheus.CounterVec // by applier, action
	duplicates  prometheus.Counter
	newer       prometheus.Counter
	stale       prometheus.Counter
	dlq         prometheus.Counter
	retries     *prometheus.CounterVec // by reason
	redelivered prometheus.Counter
	latency     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, applier string) *metrics {
	m := &metrics{
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_apply_applied_total",
			Help: "ServiceNow record versions handed to the SaaS app, by applier (nats, http) and action (insert, update, delete).",
		}, []string{"applier", "action"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_apply_duplicates_total",
			Help: "Versions applied again after a redelivery that the app side recognised as already received (BRIDGE_APPLY de-duplication).",
		}),
		newer: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_apply_already_newer_total",
			Help: "Versions the app answered 409 for: it already held a newer one.",
		}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_apply_stale_total",
			Help: "Events not applied because bridge_state already held that version or a newer one (redelivery, replay, reconcile, out-of-order arrival).",
		}),
		dlq: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_apply_dlq_total",
			Help: "Events dead-lettered to bridge.dlq.apply: rejected by the app, unmappable, or out of deliveries (bridge dlq ls).",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_apply_retries_total",
			Help: "Events handed back to JetStream for a later retry, by reason (consume.Classify: rate_limited, server_error, network, nats, other; ordering: waiting behind an earlier version of the record).",
		}, []string{"reason"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_apply_redeliveries_total",
			Help: "Events delivered to the apply consumer more than once (retries, crashes, ack timeouts).",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bridge_apply_seconds",
			Help:    "Time to apply one event: state read, mapping, the applier call, link and state writes.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.applied, m.duplicates, m.newer, m.stale, m.dlq, m.retries, m.redelivered, m.latency)
	}
	for _, a := range []string{"insert", "update", "delete"} {
		m.applied.WithLabelValues(applier, a)
	}
	return m
}
