package sidecar

import (
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
)

// assembleFeeds builds the feeds (the JWKS, the revocations, the key
// records: the last only with key_replica), each handed its options, its
// source (the Vault client) and the counters it bumps. Start's background
// follows them.
func (sc *Sidecar) assembleFeeds() {
	s, m := sc.s, sc.m
	sc.jwks = newJWKS(sc.vault, s.jwksMinRefetch, m.jwksFetches, sc.log)
	sc.jwksFeed = newJWKSFeed(jwksFeedOptions{mount: s.mount, issuer: s.issuer, audiences: s.audiences, leeway: s.leeway, refresh: s.jwksRefresh}, sc.jwks, sc.vault, sc.log)
	sc.revocations = newRevocationFeed(revocationOptions{mount: s.mount, wait: s.revocationWait, poll: s.revocationPoll},
		sc.vault, revocationMetrics{vaultCalls: m.vaultCalls, restarts: m.feedRestarts}, sc.log)
	// The key replica serves API keys only: a JWT-only sidecar neither
	// copies the records nor waits for them.
	if s.keyReplica && s.acceptKeys {
		sc.keyRecords = newKeyRecordFeed(keyRecordOptions{mount: s.mount, filter: s.keyFilter, wait: keyRecordsWait(s.revocationWait, s.maxStale), poll: s.revocationPoll},
			sc.vault, keyRecordMetrics{vaultCalls: m.vaultCalls, syncSeconds: m.keySyncSeconds, resyncs: m.keyResyncs}, sc.log)
	}
}

// followedFeeds are the health of the feeds this sidecar follows.
func (sc *Sidecar) followedFeeds() []*feedHealth {
	if sc.keyRecords == nil {
		return []*feedHealth{sc.revocations.health}
	}
	return []*feedHealth{sc.revocations.health, sc.keyRecords.health}
}

// assembleDecisions builds what decides requests: the credential kinds with
// their own caches, the DPoP proofs, the rate limit and the decision core
// that asks them, each handed what it reads and no pointer back to the
// Sidecar. The feeds (assembleFeeds), the budgets and the cluster rate are
// made before it.
func (sc *Sidecar) assembleDecisions() error {
	s, m := sc.s, sc.m
	var err error
	var replica *keyReplica // nil: key_replica = false
	if sc.keyRecords != nil {
		replica = sc.keyRecords.replica
	}
	if sc.agentJWTs, err = newAgentJWTs(sc.jwks, s.leeway, s.cacheSize, m.jwtHit, m.jwtMiss, sc.log); err != nil {
		return err
	}
	sc.apiKeys, err = newAPIKeys(keyOptions{
		cacheSize: s.cacheSize, cacheTTL: s.keyCacheTTL, negativeTTL: s.negativeCacheTTL, maxStale: s.maxStale,
		filter: s.keyFilter, verifyPath: s.mount + "/" + contract.PathVerify,
		failedAuthRate: s.failedAuthRate, failedAuthBurst: s.failedAuthBurst, verifyInFlow: s.verifyConcurrency,
	}, replica, sc.vault, keyMetrics{
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
		revocationFeed: sc.revocations,
		authn:          newAuthenticators(sc.apiKeys, sc.agentJWTs, s.acceptKeys, s.acceptJWTs, sc.dpop, m.dpopResults),
		revoked:        sc.revocations,
		budgets:        sc.budgets,
		rec:            sc.rec,
	}
	if sc.keyRecords != nil {
		c.keyRecordFeed = sc.keyRecords
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
	m.watch(watched{revocationsRead: &sc.revocations.readAt, jwksFetched: &sc.jwks.fetchedAt, revoked: sc.revocations.revoked, replica: replica, feeds: sc.followedFeeds()})
	return nil
}

// newAuthenticators pairs each credential kind with each way of presenting
// it; proofs is nil when DPoP is off, and dpopCounted counts DPoP requests
// by result.
// A kind credential_kinds leaves out (acceptKeys, acceptJWTs false) is
// refused by notAccepted, bearer or bound.
func newAuthenticators(key, jwt credentialKind, acceptKeys, acceptJWTs bool, proofs *dpopProofs, dpopCounted *prometheus.CounterVec) authenticators {
	a := authenticators{
		bearerKey: bearer{key}, bearerJWT: bearer{jwt},
		dpopKey: dpopBound{proofs, key, dpopCounted}, dpopJWT: dpopBound{proofs, jwt, dpopCounted},
	}
	if !acceptKeys {
		a.bearerKey, a.dpopKey = notAccepted{}, notAccepted{}
	}
	if !acceptJWTs {
		a.bearerJWT, a.dpopJWT = notAccepted{}, notAccepted{}
	}
	return a
}
