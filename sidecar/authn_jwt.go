package sidecar

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/netip"

	"github.com/keybroker/keybroker/jwtverify"
)

// agentJWT checks an agent JWT offline, against the JWKS.
type agentJWT struct{ sc *Sidecar }

func (k agentJWT) check(ctx context.Context, p presentation) (*identity, decision) {
	return k.sc.checkJWT(ctx, p.cred)
}

// checkJWT verifies a JWT offline. A verified token's identity is cached by
// the token's hash until it expires, so a busy agent costs one signature
// check, not one per request.
func (sc *Sidecar) checkJWT(ctx context.Context, token string) (*identity, decision) {
	h := sha256.Sum256([]byte(token))
	if id, ok := sc.jwts.Get(h); ok {
		sc.m.jwtHit.Inc()
		return id, decision{}
	}
	sc.m.jwtMiss.Inc()
	v := sc.verifier.Load()
	if v == nil {
		return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
	}
	c, err := v.Verify(token, sc.keys.Load())
	if errors.Is(err, jwtverify.ErrUnknownKey) && sc.refetchForUnknownKid(ctx) {
		c, err = v.Verify(token, sc.keys.Load())
	}
	switch {
	case err == nil:
	case errors.Is(err, jwtverify.ErrExpired):
		return nil, deny(http.StatusUnauthorized, reasonExpired)
	case errors.Is(err, jwtverify.ErrTooLarge), errors.Is(err, jwtverify.ErrMalformed), errors.Is(err, jwtverify.ErrHeader):
		return nil, deny(http.StatusUnauthorized, reasonMalformed)
	default:
		return nil, deny(http.StatusUnauthorized, reasonInvalid)
	}
	// One clock rule, the verifier's: a token is good until exp + leeway,
	// on this request and on every later one served from the cache.
	id := &identity{jwt: true, id: c.ID, subject: c.Subject, role: c.Role, tenant: c.Tenant,
		scopes: c.Scopes(), expiresAt: c.ExpiresAt.Time.Add(sc.s.leeway), budget: c.Budget, rate: c.Rate, jkt: c.BoundKey(), actors: c.Actors()}
	for _, s := range c.CIDR {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, deny(http.StatusUnauthorized, reasonInvalid)
		}
		id.cidrs = append(id.cidrs, p)
	}
	id.lineageKey = id.lineage()
	sc.jwts.Add(h, id)
	return id, decision{}
}
