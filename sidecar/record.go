package sidecar

import (
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// recorder is what happens to every decision once it is made: it is timed
// and counted, written to the decision log, and an API key let through is
// noted for the key-usage report.
type recorder struct {
	latency   *prometheus.HistogramVec
	decisions *prometheus.CounterVec
	degraded  prometheus.Counter
	log       *decisionLog // nil: no decision log (decision_log_path)
	// sawKey notes an allowed API key's use; nil: no usage reports.
	sawKey func(id *identity, from netip.Addr, at time.Time)
}

func (r *recorder) decided(mode string, start time.Time, req request, d decision) {
	r.latency.WithLabelValues(mode).Observe(time.Since(start).Seconds())
	outcome := "allow"
	if !d.allowed() {
		outcome = "deny"
	}
	r.decisions.WithLabelValues(mode, outcome, d.reason).Inc()
	if d.degraded {
		r.degraded.Inc()
	}
	if r.log != nil {
		r.log.decided(mode, start, &req, &d)
	}
	if r.sawKey != nil && d.allowed() && d.id != nil && !d.id.jwt {
		r.sawKey(d.id, req.clientIP, start)
	}
}
