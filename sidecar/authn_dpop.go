package sidecar

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// dpopBound authenticates a credential presented with the DPoP scheme
// (RFC 9449): the credential as its kind checks it, then the proof: signed
// by the key the credential is bound to, for this method and URI, fresh,
// for this token, and not seen before.
type dpopBound struct{ sc *Sidecar }

// dpopConfig is what proofs are checked against; nil (no public_origin)
// turns DPoP off.
type dpopConfig struct {
	// origin is the scheme and host clients address this service by, as
	// htu names it; the request's raw path completes the URI.
	origin         string
	maxAge, leeway time.Duration
	replay         *replayCache
}

func (a dpopBound) authenticate(ctx context.Context, p *presentation) (*identity, decision) {
	sc := a.sc
	refuse := func(reason string) (*identity, decision) {
		sc.m.dpopProofs.WithLabelValues(reason).Inc()
		return nil, decision{status: http.StatusUnauthorized, reason: reason, dpop: true}
	}
	if sc.dpop == nil {
		return refuse(reasonDPoPDisabled)
	}
	var id *identity
	var d decision
	if contract.LooksLikeJWT(p.cred) {
		id, d = sc.checkJWT(ctx, p.cred)
	} else {
		id, d = sc.checkKey(ctx, p.cred, p.clientIP)
	}
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
	// Remembered until it could no longer pass the iat check (an iat up to
	// leeway ahead passes until maxAge after it).
	switch sc.dpop.replay.add(id.jkt+"\x00"+proof.JTI, now.Add(sc.dpop.maxAge+sc.dpop.leeway+time.Second), now) {
	case errReplayed:
		return refuse(reasonProofReplayed)
	case errReplayFull:
		sc.m.dpopProofs.WithLabelValues("replay_cache_full").Inc()
		sc.log.Warn("dpop replay cache full; refusing proofs until entries expire (raise dpop_replay_cache_size)")
		return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
	}
	sc.m.dpopProofs.WithLabelValues("ok").Inc()
	return id, d
}

var (
	errReplayed   = errors.New("dpop proof jti seen before")
	errReplayFull = errors.New("dpop replay cache full")
)
