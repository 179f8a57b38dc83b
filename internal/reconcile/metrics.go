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

	hidden        *prometheus.GaugeVec
	presenceLast  *prometheus.GaugeVec
	presencePages *prometheus.CounterVec
	candidates    *prometheus.CounterVec
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
		hidden: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_reconcile_table_hidden",
			Help: "1 when ServiceNow counted rows of source (the synced table itself, or sys_audit_delete) for table but returned none to the integration user: reconcile concludes nothing from it. 0 once rows are returned. Alert on 1 with source equal to table.",
		}, []string{"table", "source"}),
		presenceLast: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_reconcile_presence_scan_timestamp_seconds", Help: "Unix time the last presence scan (deletes by sys_id comparison) of the table started. Alert when older than BRIDGE_DELETE_SCAN_INTERVAL plus a margin.",
		}, []string{"table"}),
		presencePages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_reconcile_presence_pages_total", Help: "sys_id pages read from ServiceNow by presence scans.",
		}, []string{"table"}),
		candidates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_reconcile_presence_candidates_total", Help: "Records the bridge knows that a presence scan did not see, by what confirming them found: deleted (a delete event published), hidden (counted by ServiceNow but not shown: a row ACL), present.",
		}, []string{"table", "outcome"}),
	}
	if reg != nil {
		m.passes = register(reg, m.passes)
		m.pages = register(reg, m.pages)
		m.scanned = register(reg, m.scanned)
		m.gaps = register(reg, m.gaps)
		m.duration = register(reg, m.duration)
		m.lastPass = register(reg, m.lastPass)
		m.watermark = register(reg, m.watermark)
		m.hidden = register(reg, m.hidden)
		m.presenceLast = register(reg, m.presenceLast)
		m.presencePages = register(reg, m.presencePages)
		m.candidates = register(reg, m.candidates)
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
