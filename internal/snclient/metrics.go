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
	}
	m.refreshes.WithLabelValues("ok")
	m.refreshes.WithLabelValues("failed")
	if reg != nil {
		var errs []error
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.retries, m.rateLimited, m.refreshes, m.tokenExpiry, m.breaker, m.aclWarnings} {
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
