package sidecar

import (
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// assembleDecisions builds what decides requests: the credential kinds with
// their own caches, the DPoP proofs, the rate limit and the decision core
// that asks them, each handed what it reads and no pointer back to the
// Sidecar. The feeds, the budgets and the cluster rate are made before it.
func (sc *Sidecar) assembleDecisions() error {
	s, m := sc.s, sc.m
	var err error
	sc.jwks = newJWKS(sc.vault, s.jwksMinRefetch, m.jwksFetches, sc.log)
	if sc.agentJWTs, err = newAgentJWTs(sc.jwks, s.leeway, s.cacheSize, m.jwtHit, m.jwtMiss); err != nil {
		return err
	}
	sc.apiKeys, err = newAPIKeys(keyOptions{
		cacheSize: s.cacheSize, cacheTTL: s.keyCacheTTL, negativeTTL: s.negativeCacheTTL, maxStale: s.maxStale,
		filter: s.keyFilter, verifyPath: s.mount + "/verify",
		failedAuthRate: s.failedAuthRate, failedAuthBurst: s.failedAuthBurst, verifyInFlow: s.verifyConcurrency,
	}, sc.replica, sc.vault, keyMetrics{
		hit: m.keyHit, miss: m.keyMiss, negativeHit: m.negativeHit,
		replicaHit: m.replicaHit, replicaRefused: m.replicaRefused, replicaFallback: m.replicaFallback, vaultCalls: m.vaultCalls,
	}, sc.log)
	if err != nil {
		return err
	}
	if s.publicOrigin != "" {
		sc.dpop = newDPoPProofs(s.publicOrigin, s.dpopMaxAge, s.leeway, s.dpopReplaySize, m.dpopResults, sc.log)
	}
	sc.rec = &recorder{latency: m.latency, decisions: m.decisions, degraded: m.degraded}
	if s.usageReport > 0 {
		sc.rec.sawKey = func(id *identity, from netip.Addr, at time.Time) {
			if sc.usage.wanted() {
				sc.usage.saw(id.id, from, at)
			}
		}
	}
	c := &decider{
		opts:           decideOptions{allowUnmatched: s.allowUnmatched, requireDPoP: s.requireDPoP, dpop: sc.dpop != nil},
		routes:         s,
		revocationFeed: sc.revFeed,
		authn:          newAuthenticators(sc.apiKeys, sc.agentJWTs, sc.dpop, m.dpopResults),
		revoked:        sc.revoked,
		budgets:        sc.budgets,
		rec:            sc.rec,
	}
	if sc.replica != nil {
		c.keyRecordFeed = sc.keyFeed
	}
	if c.rate, err = newLocalRate(s.cacheSize); err != nil {
		return err
	}
	if sc.cluster != nil {
		c.cluster = sc.cluster
	}
	if sc.dpop != nil {
		c.proofs = sc.dpop
	}
	sc.core = c
	m.watch(watched{revocationsRead: &sc.feedOK, jwksFetched: &sc.jwks.fetchedAt, revoked: sc.revoked, replica: sc.replica, feeds: sc.followedFeeds()})
	return nil
}

// newAuthenticators pairs each credential kind with each way of presenting
// it; proofs is nil when DPoP is off, and dpopCounted counts DPoP requests
// by result.
func newAuthenticators(key, jwt credentialKind, proofs *dpopProofs, dpopCounted *prometheus.CounterVec) authenticators {
	return authenticators{
		bearerKey: bearer{key}, bearerJWT: bearer{jwt},
		dpopKey: dpopBound{proofs, key, dpopCounted}, dpopJWT: dpopBound{proofs, jwt, dpopCounted},
	}
}
