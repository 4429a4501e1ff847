package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
	"github.com/keybroker/keybroker/sidecar/internal/clientkey"
	"github.com/keybroker/keybroker/sidecar/internal/dpopreplay"
)

// dpopBound authenticates a credential presented with the DPoP scheme
// (RFC 9449): the credential as its kind checks it, then the proof: signed
// by the key the credential is bound to, for this method and URI, fresh,
// for this token, and not seen before.
type dpopBound struct {
	proofs  *dpopProofs // nil: no public_origin, DPoP is off
	kind    credentialKind
	counted *prometheus.CounterVec // proofs by result
}

// dpopProofs checks DPoP proofs and remembers the ones accepted: it owns the
// replay cache.
type dpopProofs struct {
	// origin is the scheme and host clients address this service by, as
	// htu names it; the request's raw path completes the URI.
	origin         string
	maxAge, leeway time.Duration
	replay         *dpopreplay.Cache
	keys           *jwtverify.ProofKeys   // the headers of clients' proofs, parsed
	counted        *prometheus.CounterVec // by result
	log            hclog.Logger
}

// proofKeysSize is how many clients' proof headers (each a public key) are
// kept parsed: about 2 KiB each at worst (RSA-4096), 8 MiB in all; about
// 2 MiB for EC keys.
const proofKeysSize = 4096

func newDPoPProofs(origin string, maxAge, leeway time.Duration, replaySize int, counted *prometheus.CounterVec, log hclog.Logger) *dpopProofs {
	return &dpopProofs{origin: origin, maxAge: maxAge, leeway: leeway, replay: dpopreplay.New(replaySize),
		keys: jwtverify.NewProofKeys(proofKeysSize), counted: counted, log: log}
}

func (a dpopBound) authenticate(ctx context.Context, p presentation) (*identity, decision) {
	if a.proofs == nil {
		return nil, refuseProof(a.counted, contract.ReasonDPoPDisabled)
	}
	id, d := a.kind.check(ctx, p)
	switch {
	case id == nil:
		d.dpop = true
		return nil, d
	case id.jkt == "":
		return nil, refuseProof(a.counted, contract.ReasonDPoPNotBound)
	case p.proof == "":
		return nil, refuseProof(a.counted, contract.ReasonInvalidProof)
	}
	proofID, refusal := a.proofs.check(p, id)
	if refusal != "" {
		return nil, refuseProof(a.counted, refusal)
	}
	d.proofID = proofID
	return id, d
}

// refuseProof counts a refused DPoP request and answers it with the DPoP
// challenge.
func refuseProof(counted *prometheus.CounterVec, reason string) decision {
	counted.WithLabelValues(reason).Inc()
	return decision{status: http.StatusUnauthorized, reason: reason, dpop: true}
}

// check verifies p's proof for the credential id, and returns what the
// replay cache is to remember of it, or why it is refused.
func (pp *dpopProofs) check(p presentation, id *identity) (proofID, refusal string) {
	now := time.Now()
	proof, err := jwtverify.VerifyProof(p.proof, jwtverify.ProofCheck{
		Method: p.method, URL: pp.origin + p.rawPath, AccessToken: p.cred, JKT: id.jkt,
		Now: now, MaxAge: pp.maxAge, Leeway: pp.leeway, Keys: pp.keys,
	})
	if err != nil {
		pp.log.Debug("dpop proof refused", "id", id.id, "error", err)
		return "", contract.ReasonInvalidProof
	}
	// A replay is refused now, before the rate limits (a captured proof
	// must not spend its holder's requests); the proof itself is
	// remembered only once the request is otherwise allowed, after the
	// rate limits and the budget (record), so that a revoked, expired,
	// rate-limited or spent credential cannot fill the replay cache. Of
	// two requests racing with one proof, the one recorded first passes;
	// the other is refused there.
	proofID = id.jkt + "\x00" + proof.JTI
	if pp.replay.Seen(proofID, now) {
		return "", contract.ReasonProofReplayed
	}
	pp.counted.WithLabelValues("ok").Inc()
	return proofID, ""
}

// record remembers an accepted proof until it could no longer pass the iat
// check (an iat up to leeway ahead passes until maxAge after it), and
// refuses it when it was seen before (a request with the same proof that got
// here first) or when the lineage or the client address holds its share of
// the cache.
func (pp *dpopProofs) record(proofID string, id *identity, client netip.Addr) (decision, bool) {
	now := time.Now()
	window := pp.maxAge + pp.leeway + time.Second
	switch err := pp.replay.Add(proofID, id.lineage(), clientkey.Of(client), now.Add(window), now); err {
	case nil:
		return decision{}, true
	case dpopreplay.ErrReplayed:
		return refuseProof(pp.counted, contract.ReasonProofReplayed), false
	case dpopreplay.ErrLineageQuota, dpopreplay.ErrClientQuota:
		label := "replay_quota"
		if err == dpopreplay.ErrClientQuota {
			label = "replay_quota_client"
		}
		pp.counted.WithLabelValues(label).Inc()
		return decision{status: http.StatusTooManyRequests, reason: contract.ReasonRateLimited, retryAfter: window}, false
	}
	pp.counted.WithLabelValues("replay_cache_full").Inc()
	pp.log.Warn("dpop replay cache full; refusing proofs until entries expire (raise dpop_replay_cache_size)")
	return deny(http.StatusServiceUnavailable, contract.ReasonUnavailable), false
}
