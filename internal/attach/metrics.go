package attach

import "github.com/prometheus/client_golang/prometheus"

// Directions label the metrics.
const (
	dirToApp = "to_app"        // ServiceNow -> the app
	dirToSN  = "to_servicenow" // the app -> ServiceNow
)

type metrics struct {
	handled     *prometheus.CounterVec // direction, outcome
	bytes       *prometheus.CounterVec // direction
	retries     *prometheus.CounterVec // direction, reason
	deadLetters *prometheus.CounterVec // direction
	seconds     *prometheus.HistogramVec
	results     *prometheus.CounterVec // outcome
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_attachments_total",
			Help: "Attachment messages handled, by direction (to_app, to_servicenow) and outcome (added, removed, echo, duplicate, stale, gone, unknown, not_synced, ignored; to_servicenow: the result's outcome).",
		}, []string{"direction", "outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_attachment_bytes_total",
			Help: "Bytes of attachments moved, by direction: stored in bridge_attachments from ServiceNow (to_app) or uploaded to ServiceNow (to_servicenow).",
		}, []string{"direction"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_attachment_retries_total",
			Help: "Attachment messages handed back for a later retry, by direction and reason.",
		}, []string{"direction", "reason"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_attachment_dead_letters_total",
			Help: "Attachment messages dead-lettered (refused by the limits or ServiceNow, or out of deliveries), by direction.",
		}, []string{"direction"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bridge_attachment_seconds",
			Help:    "Time to handle one attachment message (a download and store, or an upload), by direction.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12),
		}, []string{"direction"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_attachment_results_total",
			Help: "Results of the app's attachment messages stored in BRIDGE_RESULTS, by outcome.",
		}, []string{"outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.handled, m.bytes, m.retries, m.deadLetters, m.seconds, m.results)
	}
	return m
}
