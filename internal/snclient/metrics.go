package snclient

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests    *prometheus.CounterVec // table, method, status
	duration    *prometheus.HistogramVec
	retries     *prometheus.CounterVec // table, method, reason
	rateLimited *prometheus.CounterVec // table
	refreshes   *prometheus.CounterVec // result
	tokenExpiry prometheus.Gauge
	breaker     prometheus.Gauge
	aclWarnings *prometheus.CounterVec // table, kind

	fieldsLearned      *prometheus.GaugeVec   // table, source
	learningIncomplete *prometheus.GaugeVec   // table
	fieldsIgnored      *prometheus.CounterVec // table

	rateLimit     *prometheus.GaugeVec // rule
	rateWindow    *prometheus.GaugeVec // rule
	rateRemaining *prometheus.GaugeVec // rule
	pacing        prometheus.Histogram
}

// newMetrics labels every series with the instance host, so one process
// can run clients for several instances on one registry.
func newMetrics(reg prometheus.Registerer, instance string) (*metrics, error) {
	cl := prometheus.Labels{"instance": instance}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_servicenow_requests_total", ConstLabels: cl,
			Help: "HTTP attempts sent to ServiceNow, by table, method and status (\"error\" when no response came).",
		}, []string{"table", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "bridge_servicenow_request_seconds", ConstLabels: cl,
			Help:    "Duration of one HTTP attempt to ServiceNow, body read included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 13),
		}, []string{"table", "method"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_servicenow_retries_total", ConstLabels: cl,
			Help: "Attempts repeated, by table, method and reason (rate_limited, server_error, network, token, unauthorized).",
		}, []string{"table", "method", "reason"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_servicenow_rate_limited_total", ConstLabels: cl,
			Help: "429 answers received, by table.",
		}, []string{"table"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_servicenow_token_refreshes_total", ConstLabels: cl,
			Help: "OAuth token exchanges, by result (ok, failed).",
		}, []string{"result"}),
		tokenExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_servicenow_token_expiry_timestamp_seconds", ConstLabels: cl,
			Help: "Unix time at which the current access token expires.",
		}),
		breaker: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_servicenow_breaker_state", ConstLabels: cl,
			Help: "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
		}),
		aclWarnings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_servicenow_acl_warnings_total", ConstLabels: cl,
			Help: "List answers that look ACL-filtered, by table and kind (rows, fields).",
		}, []string{"table", "kind"}),
		fieldsLearned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_servicenow_fields_learned", ConstLabels: cl,
			Help: "Fields of a table each source gave at the last learning: mapping, record (a record read or written), sys_dictionary, known_fields.",
		}, []string{"table", "source"}),
		learningIncomplete: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_servicenow_field_learning_incomplete", ConstLabels: cl,
			Help: "1 while neither a record nor sys_dictionary could be read for a table: only mapped, configured and system fields are known (set BRIDGE_SN_KNOWN_FIELDS or grant read on sys_dictionary).",
		}, []string{"table"}),
		fieldsIgnored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_servicenow_write_fields_ignored_total", ConstLabels: cl,
			Help: "Writes whose answer lacked a field sent: ServiceNow ignored it (no such field) or the integration user cannot read it.",
		}, []string{"table"}),
		rateLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_servicenow_rate_limit", ConstLabels: cl,
			Help: "Requests per window a rate limit rule allows (X-RateLimit-Limit), by rule (X-RateLimit-Rule, the sys_rate_limit_rules sys_id); the client paces itself to it.",
		}, []string{"rule"}),
		rateWindow: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_servicenow_rate_limit_window_seconds", ConstLabels: cl,
			Help: "A rate limit rule's window as learned from its resets (3600 on ServiceNow), 0 until two resets were seen.",
		}, []string{"rule"}),
		rateRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_servicenow_rate_limit_remaining", ConstLabels: cl,
			Help: "Requests the client may still send under a rule before its window resets (its own count; the instance does not say).",
		}, []string{"rule"}),
		pacing: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "bridge_servicenow_pacing_seconds", ConstLabels: cl,
			Help:    "Time a request waited for the rate budget (the learned rules and BRIDGE_SN_RATE_LIMIT) before it was sent.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
	}
	m.refreshes.WithLabelValues("ok")
	m.refreshes.WithLabelValues("failed")
	if reg != nil {
		var errs []error
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.retries, m.rateLimited, m.refreshes, m.tokenExpiry, m.breaker, m.aclWarnings, m.fieldsLearned, m.learningIncomplete, m.fieldsIgnored,
			m.rateLimit, m.rateWindow, m.rateRemaining, m.pacing} {
			if err := reg.Register(c); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
	}
	return m, nil
}
