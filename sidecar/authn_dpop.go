package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"time"

	"github.com/keybroker/keybroker/jwtverify"
)

// dpopBound authenticates a credential presented with the DPoP scheme
// (RFC 9449): the credential as its kind checks it, then the proof: signed
// by the key the credential is bound to, for this method and URI, fresh,
// for this token, and not seen before.
type dpopBound struct {
	sc   *Sidecar
	kind credentialKind
}

// dpopConfig is what proofs are checked against; nil (no public_origin)
// turns DPoP off.
type dpopConfig struct {
	// origin is the scheme and host clients address this service by, as
	// htu names it; the request's raw path completes the URI.
	origin         string
	maxAge, leeway time.Duration
	replay         *replayCache
}

func (a dpopBound) authenticate(ctx context.Context, p presentation) (*identity, decision) {
	sc := a.sc
	refuse := func(reason string) (*identity, decision) {
		sc.m.dpopProofs.WithLabelValues(reason).Inc()
		return nil, decision{status: http.StatusUnauthorized, reason: reason, dpop: true}
	}
	if sc.dpop == nil {
		return refuse(reasonDPoPDisabled)
	}
	id, d := a.kind.check(ctx, p)
	if id == nil {
		d.dpop = true
		return nil, d
	}
	if id.jkt == "" {
		return refuse(reasonDPoPNotBound)
	}
	if p.proof == "" {
		return refuse(reasonInvalidProof)
	}
	now := time.Now()
	proof, err := jwtverify.VerifyProof(p.proof, jwtverify.ProofCheck{
		Method: p.method, URL: sc.dpop.origin + p.rawPath, AccessToken: p.cred, JKT: id.jkt,
		Now: now, MaxAge: sc.dpop.maxAge, Leeway: sc.dpop.leeway,
	})
	if err != nil {
		sc.log.Debug("dpop proof refused", "id", id.id, "error", err)
		return refuse(reasonInvalidProof)
	}
	// A replay is refused now, before the rate limits (a captured proof
	// must not spend its holder's requests); the proof itself is
	// remembered only once the request is otherwise allowed, after the
	// rate limits and the budget (recordProof), so that a revoked,
	// expired, rate-limited or spent credential cannot fill the replay
	// cache. Of two requests racing with one proof, the one recorded
	// first passes; the other is refused there.
	d.proofID = id.jkt + "\x00" + proof.JTI
	if sc.dpop.replay.has(d.proofID, now) {
		return refuse(reasonProofReplayed)
	}
	sc.m.dpopProofs.WithLabelValues("ok").Inc()
	return id, d
}

// recordProof remembers an accepted proof until it could no longer pass the
// iat check (an iat up to leeway ahead passes until maxAge after it), and
// refuses it when it was seen before (a request with the same proof that
// got here first) or when the lineage or the client address holds its
// share of the cache.
func (sc *Sidecar) recordProof(proofID string, id *identity, client netip.Addr) (decision, bool) {
	now := time.Now()
	window := sc.dpop.maxAge + sc.dpop.leeway + time.Second
	switch err := sc.dpop.replay.add(proofID, id.lineage(), clientKey(client), now.Add(window), now); err {
	case nil:
		return decision{}, true
	case errReplayed:
		sc.m.dpopProofs.WithLabelValues(reasonProofReplayed).Inc()
		return decision{status: http.StatusUnauthorized, reason: reasonProofReplayed, dpop: true}, false
	case errReplayMany, errReplayClient:
		label := "replay_quota"
		if err == errReplayClient {
			label = "replay_quota_client"
		}
		sc.m.dpopProofs.WithLabelValues(label).Inc()
		return decision{status: http.StatusTooManyRequests, reason: reasonRateLimited, retryAfter: window}, false
	}
	sc.m.dpopProofs.WithLabelValues("replay_cache_full").Inc()
	sc.log.Warn("dpop replay cache full; refusing proofs until entries expire (raise dpop_replay_cache_size)")
	return deny(http.StatusServiceUnavailable, reasonUnavailable), false
}
