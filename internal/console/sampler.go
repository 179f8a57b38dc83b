package console

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nowbridge/nowbridge/internal/status"
)

// Pipelines are the bridge's dead-letter pipelines (bridge.dlq.<pipeline>:
// apply, outbound, apply's results delivery, attach's two): the DLQ depth
// gauge exports each, 0 included, so an alert sees the series. Another
// pipeline's dead letters are exported once there are some.
var Pipelines = []string{"apply", "writeback", "results", "attachment_apply", "attachment_writeback"}

// sample is one status.Collect at a moment.
type sample struct {
	at  time.Time
	rep status.Report
}

// Sampler collects the bridge's status (internal/status: the same view as
// `bridge status`) every few seconds into a small ring, which draws the
// overview's sparklines, and exports the latest as Prometheus gauges
// (stream sizes, consumer lag, dead letters) so Grafana sees what only NATS
// knows. Every replica samples the same cluster-wide state.
type Sampler struct {
	js     jetstream.JetStream
	tables []string
	every  time.Duration
	log    *slog.Logger

	mu   sync.Mutex
	ring []sample // oldest first once full: ring[next:] then ring[:next]
	next int
	full bool
}

// newSampler keeps n samples taken every interval.
func newSampler(js jetstream.JetStream, tables []string, every time.Duration, n int, log *slog.Logger) *Sampler {
	return &Sampler{js: js, tables: tables, every: every, log: log, ring: make([]sample, n)}
}

// Run samples until ctx ends.
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.every)
	defer t.Stop()
	failing := false
	for {
		cctx, cancel := context.WithTimeout(ctx, max(s.every, 2*time.Second))
		rep, err := status.Collect(cctx, s.js, s.tables)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !failing:
			// Once per outage: NATS down is logged by the connection.
			s.log.Warn("console: status not sampled; the overview's sparklines and the stream gauges pause", "err", err)
			failing = true
		case err == nil:
			failing = false
			s.add(sample{at: rep.Time, rep: rep})
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Sampler) add(x sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = x
	s.next = (s.next + 1) % len(s.ring)
	if s.next == 0 {
		s.full = true
	}
}

// samples returns the ring, oldest first.
func (s *Sampler) samples() []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.full {
		return append([]sample(nil), s.ring[:s.next]...)
	}
	return append(append([]sample(nil), s.ring[s.next:]...), s.ring[:s.next]...)
}

// latest is the newest sample, if one is fresh (taken within three
// intervals): a stale one would show a NATS outage as a calm bridge.
func (s *Sampler) latest(now time.Time) (sample, bool) {
	all := s.samples()
	if len(all) == 0 {
		return sample{}, false
	}
	last := all[len(all)-1]
	return last, now.Sub(last.at) <= 3*s.every
}

// point is one value of a series at a moment.
type point struct {
	at time.Time
	v  float64
}

// series extracts one value from every sample that has it.
func (s *Sampler) series(value func(status.Report) (float64, bool)) []point {
	var out []point
	for _, x := range s.samples() {
		if v, ok := value(x.rep); ok {
			out = append(out, point{x.at, v})
		}
	}
	return out
}

// rates turns a growing count into per-second rates between samples
// (a count that went down, a restarted process, gives no point).
func rates(ps []point) []point {
	var out []point
	for i := 1; i < len(ps); i++ {
		dt := ps[i].at.Sub(ps[i-1].at).Seconds()
		if dt <= 0 || ps[i].v < ps[i-1].v {
			continue
		}
		out = append(out, point{ps[i].at, (ps[i].v - ps[i-1].v) / dt})
	}
	return out
}

var (
	descStreamMsgs  = prometheus.NewDesc("bridge_stream_messages", "Messages a stream of the bridge holds (sampled from JetStream every few seconds by every replica: aggregate with max).", []string{"stream"}, nil)
	descStreamBytes = prometheus.NewDesc("bridge_stream_bytes", "Bytes a stream of the bridge holds (sampled).", []string{"stream"}, nil)
	descStreamSeq   = prometheus.NewDesc("bridge_stream_last_sequence", "A stream's last sequence: its rate is the messages stored per second (sampled).", []string{"stream"}, nil)
	descPending     = prometheus.NewDesc("bridge_consumer_pending", "Messages a durable consumer has not been handed yet: its lag (sampled).", []string{"stream", "consumer"}, nil)
	descAckPending  = prometheus.NewDesc("bridge_consumer_ack_pending", "Messages a durable consumer was handed and has not acknowledged (sampled).", []string{"stream", "consumer"}, nil)
	descRedelivered = prometheus.NewDesc("bridge_consumer_redelivered", "Messages of a durable consumer delivered more than once and not yet acknowledged (sampled).", []string{"stream", "consumer"}, nil)
	descDLQ         = prometheus.NewDesc("bridge_dlq_messages", "Dead letters waiting in BRIDGE_DLQ, by pipeline (sampled; bridge dlq ls, the console's dead letters page).", []string{"pipeline"}, nil)
	descSampledAt   = prometheus.NewDesc("bridge_status_sampled_timestamp_seconds", "Unix time of the last status sample behind the bridge_stream_*, bridge_consumer_* and bridge_dlq_messages gauges (they are left out while it is stale).", nil, nil)
	samplerDescs    = []*prometheus.Desc{descStreamMsgs, descStreamBytes, descStreamSeq, descPending, descAckPending, descRedelivered, descDLQ, descSampledAt}
)

// gauge is one sampled value.
func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// Describe implements prometheus.Collector.
func (s *Sampler) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range samplerDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the latest fresh sample.
func (s *Sampler) Collect(ch chan<- prometheus.Metric) {
	all := s.samples()
	if len(all) == 0 {
		return
	}
	last := all[len(all)-1]
	ch <- gauge(descSampledAt, float64(last.at.UnixNano())/1e9)
	if time.Since(last.at) > 3*s.every {
		return
	}
	r := last.rep
	for _, st := range r.Streams {
		if st.Missing {
			continue
		}
		ch <- gauge(descStreamMsgs, float64(st.Msgs), st.Name)
		ch <- gauge(descStreamBytes, float64(st.Bytes), st.Name)
		ch <- gauge(descStreamSeq, float64(st.LastSeq), st.Name)
	}
	for _, c := range r.Consumers {
		if !c.Durable {
			continue // ordered and ephemeral consumers come and go under random names
		}
		ch <- gauge(descPending, float64(c.Pending), c.Stream, c.Name)
		ch <- gauge(descAckPending, float64(c.AckPending), c.Stream, c.Name)
		ch <- gauge(descRedelivered, float64(c.Redelivered), c.Stream, c.Name)
	}
	for _, p := range Pipelines {
		ch <- gauge(descDLQ, float64(r.DLQ[p]), p)
	}
	for p, n := range r.DLQ {
		if !known(p) {
			ch <- gauge(descDLQ, float64(n), p)
		}
	}
}

func known(p string) bool {
	for _, k := range Pipelines {
		if k == p {
			return true
		}
	}
	return false
}
