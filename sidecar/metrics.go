package sidecar

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reg          *prometheus.Registry
	decisions    *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	cache        *prometheus.CounterVec
	degraded     prometheus.Counter
	jwksFetches  *prometheus.CounterVec
	vaultCalls   *prometheus.CounterVec
	revokedCount prometheus.GaugeFunc
	feedRestarts prometheus.Counter

	keySyncSeconds prometheus.Gauge
	keyResyncs     prometheus.Counter

	spent          prometheus.Counter
	usageDropped   prometheus.Counter
	costOverHold   prometheus.Counter
	usageFallbacks *prometheus.CounterVec
	dpopResults    *prometheus.CounterVec

	decisionLogDropped prometheus.Counter

	// Resolved once: the hot path should not hash label values per request.
	jwtHit, jwtMiss, keyHit, keyMiss, negativeHit prometheus.Counter
	replicaHit, replicaRefused, replicaFallback   prometheus.Counter
}

// newMetrics makes the counters, for the components to be handed the ones
// they count on; the gauges that read a component's state come with watch,
// once the components exist.
func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.decisionSeries()
	m.vaultSeries()
	m.meteringSeries()
	m.jwtHit, m.jwtMiss = m.cache.WithLabelValues("jwt", "hit"), m.cache.WithLabelValues("jwt", "miss")
	m.keyHit, m.keyMiss = m.cache.WithLabelValues("api_key", "hit"), m.cache.WithLabelValues("api_key", "miss")
	m.negativeHit = m.cache.WithLabelValues("negative", "hit")
	// key_replica: hit (the record decided), refused (no record and not
	// minted moments ago: refused without Vault), fallback (no record yet
	// for a key minted moments ago: asked Vault).
	m.replicaHit = m.cache.WithLabelValues("key_replica", "hit")
	m.replicaRefused = m.cache.WithLabelValues("key_replica", "refused")
	m.replicaFallback = m.cache.WithLabelValues("key_replica", "fallback")
	return m
}

// decisionSeries are what decisions and credential checks count.
func (m *metrics) decisionSeries() {
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keybroker_sidecar_decisions_total",
		Help: "Authorization decisions by mode (proxy, auth: /verify, grpc: Envoy ext_authz over gRPC, middleware: embedded), outcome (allow, deny) and reason.",
	}, []string{"mode", "outcome", "reason"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keybroker_sidecar_decision_seconds",
		Help:    "Time to decide on a request, credential check included, by mode (proxy, auth, grpc, middleware).",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5},
	}, []string{"mode"})
	m.cache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keybroker_sidecar_cache_lookups_total",
		Help: "Cache lookups by cache (api_key, negative, jwt, key_replica) and result (hit, miss; for key_replica hit, refused, fallback).",
	}, []string{"cache", "result"})
	m.degraded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keybroker_sidecar_degraded_decisions_total",
		Help: "API key decisions served from a stale cache entry because Vault was unreachable.",
	})
	m.dpopResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keybroker_sidecar_dpop_proofs_total",
		Help: "Requests with the DPoP scheme by result: ok, invalid_dpop_proof, dpop_proof_replayed, dpop_not_bound, dpop_not_enabled, replay_quota and replay_quota_client (the lineage or the client address holds its share of the replay cache), replay_cache_full.",
	}, []string{"result"})
	m.decisionLogDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keybroker_sidecar_decision_log_dropped_total",
		Help: "Decisions not written to the decision log: its queue was full, or a write failed.",
	})
	m.reg.MustRegister(m.decisions, m.latency, m.cache, m.degraded, m.dpopResults, m.decisionLogDropped)
}

// vaultSeries count what the sidecar asks of Vault and what its feeds bring.
func (m *metrics) vaultSeries() {
	m.jwksFetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keybroker_sidecar_jwks_fetches_total",
		Help: "JWKS fetches by trigger (start, interval, unknown_kid) and result (ok, error).",
	}, []string{"trigger", "result"})
	m.vaultCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keybroker_sidecar_vault_requests_total",
		Help: "Requests to Vault by operation (verify, revocations, reserve, report, key_usage) and result (ok, error, refused; forbidden: Vault answered 403, the policy lacks the path; for report also late: recorded after its reservation expired).",
	}, []string{"op", "result"})
	m.feedRestarts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keybroker_sidecar_revocation_feed_restarts_total",
		Help: "Times the revocation feed was read again from the start because its epoch changed or it went back.",
	})
	m.keySyncSeconds = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keybroker_sidecar_key_records_sync_seconds",
		Help: "How long the last whole read of the key-record snapshot took.",
	})
	m.keyResyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keybroker_sidecar_key_records_resyncs_total",
		Help: "Times the key-record snapshot was read again because the feed started a new epoch or no longer held the sidecar's cursor.",
	})
	m.reg.MustRegister(m.jwksFetches, m.vaultCalls, m.feedRestarts, m.keySyncSeconds, m.keyResyncs)
}

// meteringSeries count budgets and key usage.
func (m *metrics) meteringSeries() {
	m.usageDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keybroker_sidecar_key_usage_dropped_total",
		Help: "API key uses not reported for last_used_at because more than 10000 keys were used in one usage_report_interval.",
	})
	m.spent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keybroker_sidecar_budget_units_spent_total",
		Help: "Budget units charged to metered credentials by this sidecar.",
	})
	m.costOverHold = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keybroker_sidecar_budget_cost_over_max_total",
		Help: "Requests whose real cost exceeded max_cost_per_request (recorded as they cost; the spend bound assumes none).",
	})
	m.usageFallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keybroker_sidecar_usage_fallbacks_total",
		Help: "Responses charged the fallback (the hold, or the route's cost) because their usage could not be read, by source (header, openai) and reason (missing, invalid, too_large, encoding).",
	}, []string{"source", "reason"})
	m.reg.MustRegister(m.usageDropped, m.spent, m.costOverHold, m.usageFallbacks)
}

// watched is what the gauges read, each from the component that holds it.
type watched struct {
	// revocationsRead and jwksFetched are UnixNano of the last good read.
	revocationsRead, jwksFetched *atomic.Int64
	revoked                      interface{ Size() int }
	replica                      *keyReplica // nil: key_replica = false
	feeds                        []*feedHealth
}

// watch adds the gauges that read the components' state.
func (m *metrics) watch(w watched) {
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keybroker_sidecar_revocation_feed_lag_seconds",
		Help: "Seconds since the revocation feed was last read successfully.",
	}, func() float64 { return sinceNanos(w.revocationsRead.Load()) })
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keybroker_sidecar_jwks_age_seconds",
		Help: "Seconds since the JWKS was last fetched successfully.",
	}, func() float64 { return sinceNanos(w.jwksFetched.Load()) })
	m.revokedCount = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keybroker_sidecar_revoked_credentials",
		Help: "Revoked credential ids held from the feed.",
	}, func() float64 { return float64(w.revoked.Size()) })
	records := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keybroker_sidecar_key_records",
		Help: "API key records held in the replica.",
	}, func() float64 {
		if w.replica == nil {
			return 0
		}
		return float64(w.replica.size())
	})
	recordsLag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keybroker_sidecar_key_records_lag_seconds",
		Help: "Seconds since the key replica was last confirmed current; API keys go to Vault once it is max_stale or more (-1: not read yet).",
	}, func() float64 {
		if w.replica == nil || !w.replica.synced.Load() {
			return -1
		}
		now := time.Now()
		return now.Sub(w.replica.currentAsOf(now)).Seconds()
	})
	m.reg.MustRegister(lag, age, m.revokedCount, records, recordsLag)
	m.watchFeeds(w.feeds)
}

// watchFeeds is one series per feed and state, 1 for the state it is in: an
// alert on state="forbidden" catches a policy that lacks the feed.
func (m *metrics) watchFeeds(feeds []*feedHealth) {
	for _, f := range feeds {
		for _, state := range feedStates {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "keybroker_sidecar_feed_state",
				Help:        "The state of each feed the sidecar follows (feed: revocations, key_records), 1 for the one it is in: starting (not read yet), ok, forbidden (Vault answered 403: the policy lacks read on the feed), unreachable, error. Credentials that depend on a feed are refused until it has been read once.",
				ConstLabels: prometheus.Labels{"feed": f.name, "state": state},
			}, func() float64 {
				if cur, _ := f.status(); cur == state {
					return 1
				}
				return 0
			}))
		}
	}
}

// sinceNanos is the age of a UnixNano timestamp, or -1 when it never happened.
func sinceNanos(n int64) float64 {
	if n == 0 {
		return -1
	}
	return time.Since(time.Unix(0, n)).Seconds()
}
