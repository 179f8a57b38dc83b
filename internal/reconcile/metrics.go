package reconcile

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	passes    *prometheus.CounterVec
	pages     *prometheus.CounterVec
	scanned   *prometheus.CounterVec
	gaps      *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	lastPass  *prometheus.GaugeVec
	watermark *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reconcile_passes_total", Help: "Reconcile passes by table and result (ok, error, skipped: lease held elsewhere).",
		}, []string{"table", "result"}),
		pages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reconcile_pages_total", Help: "Pages read from ServiceNow by reconcile.",
		}, []string{"table"}),
		scanned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reconcile_records_scanned_total", Help: "Records reconcile compared with bridge_state.",
		}, []string{"table"}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reconcile_gaps_total", Help: "Changes reconcile found missing from SN_EVENTS and published (lost webhooks, setWorkflow(false) writes, deletes). Alert on its increase.",
		}, []string{"table", "action"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "reconcile_pass_duration_seconds", Help: "Duration of reconcile passes.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2.5, 12),
		}, []string{"table"}),
		lastPass: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reconcile_last_success_timestamp_seconds", Help: "Unix time of the last successful reconcile pass.",
		}, []string{"table"}),
		watermark: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reconcile_watermark_timestamp_seconds", Help: "sys_updated_on (Unix time) up to which reconcile has published the table.",
		}, []string{"table"}),
	}
	if reg != nil {
		m.passes = register(reg, m.passes)
		m.pages = register(reg, m.pages)
		m.scanned = register(reg, m.scanned)
		m.gaps = register(reg, m.gaps)
		m.duration = register(reg, m.duration)
		m.lastPass = register(reg, m.lastPass)
		m.watermark = register(reg, m.watermark)
	}
	return m
}

// register adds c to reg, or returns the collector already registered under
// the same name (several reconcilers in one process share their metrics).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}
