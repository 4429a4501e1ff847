package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar/internal/credscan"
	"github.com/keybroker/keybroker/sidecar/internal/reqtarget"
)

// decider is the decision core: every front end (the proxy, /verify, Envoy
// ext_authz, the middleware) hands it a request and gets a decision. It
// holds no pointer to the Sidecar, only the components it asks, each through
// the narrow interface it uses below, made once in New. This file reads in
// the order a request meets them: where it goes (target and route), what it
// presents (credential), whose it is (authenticator), whether it still
// stands (revocation, expiry, CIDR), what it may do here (scope,
// delegation), then what it spends (rate, budget, DPoP proof).
type decider struct {
	opts   decideOptions
	routes router
	// revocationFeed and keyRecordFeed say whether a feed was read to its
	// end; keyRecordFeed is nil without key_replica.
	revocationFeed, keyRecordFeed feedGate
	authn                         authenticators
	revoked                       revokedIDs
	// rate is this sidecar's own bucket; cluster (nil unless
	// rate_limit_scope = "cluster") the window shared across sidecars,
	// asked only when the own bucket allows, which bounds how often.
	rate, cluster rateLimiter
	budgets       budgetHolder
	proofs        proofRecorder // nil: DPoP is off
	rec           decisionRecorder
}

// decideOptions are the settings a decision reads itself.
type decideOptions struct {
	allowUnmatched bool // a path no route matches gets defaultRoute
	requireDPoP    bool // a bearer credential is refused
	dpop           bool // DPoP is on: a 401 offers its scheme
}

// The components the core asks, as it uses them.
type (
	router interface {
		match(method, path string) (*route, *routeGroup)
	}
	feedGate interface {
		known() bool
	}
	revokedIDs interface {
		has(id string) bool
	}
	// rateLimiter takes one request of id's lineage, or says how long
	// until one is free.
	rateLimiter interface {
		allow(ctx context.Context, id *identity) (time.Duration, bool)
	}
	// budgetHolder holds amount of id's budget for a request, or refuses.
	budgetHolder interface {
		acquire(ctx context.Context, id *identity, amount int64) (*hold, decision)
	}
	// proofRecorder spends a DPoP proof: refused when it was spent before.
	proofRecorder interface {
		record(proofID string, id *identity, client netip.Addr) (decision, bool)
	}
	// decisionRecorder counts and logs a decision (by value: a pointer
	// through an interface would move every request's to the heap).
	decisionRecorder interface {
		decided(mode string, start time.Time, req request, d decision)
	}
)

// decideAs is decide timed and recorded, for the front end named by mode.
func (c *decider) decideAs(ctx context.Context, mode string, req request) decision {
	start := time.Now()
	d := c.decide(ctx, req)
	c.rec.decided(mode, start, req, d)
	return d
}

// decide is the only way to a decision.
func (c *decider) decide(ctx context.Context, r request) decision {
	t, d := c.locate(r)
	if t.rt != nil {
		d = c.decideOn(ctx, r, &t)
	}
	// A denial says its path (once canonical) and its route too, for the
	// decision log.
	if d.path == "" {
		d.path = t.path
	}
	if d.rt == nil {
		d.rt = t.rt
	}
	return d
}

// located is where a request goes: its raw path as sent, its canonical
// path, its raw query, and the route that path is under.
type located struct {
	rawPath, path, query string
	rt                   *route
}

// locate canonicalises the target and finds its route; rt is nil when the
// request is refused here.
func (c *decider) locate(r request) (located, decision) {
	var t located
	var ok bool
	if t.rawPath, t.query, ok = reqtarget.Split(r.target); !ok {
		return t, deny(http.StatusBadRequest, contract.ReasonNonCanonicalPath)
	}
	if t.path, ok = reqtarget.CanonicalPath(t.rawPath); !ok {
		return t, deny(http.StatusBadRequest, contract.ReasonNonCanonicalPath)
	}
	rt, g := c.routes.match(r.method, t.path)
	switch {
	case rt == nil && g != nil:
		return t, decision{status: http.StatusMethodNotAllowed, reason: contract.ReasonMethodNotAllowed, allow: g.allow}
	case rt == nil && !c.opts.allowUnmatched:
		return t, deny(http.StatusForbidden, contract.ReasonNoRoute)
	case rt == nil:
		rt = &defaultRoute
	}
	t.rt = rt
	return t, decision{}
}

// decideOn decides a request on its route: a public one lets it through;
// any other needs a credential, which its authenticator checks, then what
// it may do.
func (c *decider) decideOn(ctx context.Context, r request, t *located) decision {
	if t.rt.public {
		return decision{status: http.StatusOK, reason: contract.ReasonOK, path: t.path, query: t.query, rt: t.rt}
	}
	p, d, ok := c.presented(r, t)
	if !ok {
		return d
	}
	id, d := c.authn.of(&p).authenticate(ctx, p)
	if id == nil {
		return d
	}
	d = c.authorize(ctx, r, t, id, p.dpop, d)
	if d.id == nil {
		d.id = id // whose denial it is, for the decision log
	}
	return d
}

// presented is the credential as the request presents it, refused before
// any check when it is where a credential must never be (the query, the
// path), absent or unreadable, when a feed its check depends on was not read
// yet, or when a bearer credential is not enough here.
func (c *decider) presented(r request, t *located) (presentation, decision, bool) {
	if reason := credscan.QueryDenial(t.query); reason != "" {
		return presentation{}, deny(http.StatusBadRequest, reason), false
	}
	if credscan.InPath(t.path) {
		// Never forwarded, and the decision log writes the path with the
		// credential cut out.
		return presentation{}, deny(http.StatusBadRequest, contract.ReasonCredentialInPath), false
	}
	p, ok := presentedFrom(r.header)
	switch {
	case !ok:
		return p, deny(http.StatusBadRequest, contract.ReasonBadRequest), false
	case p.cred == "":
		// The route's scopes go in the challenge: what to ask a token for.
		return p, decision{status: http.StatusUnauthorized, reason: contract.ReasonNoCredential, dpop: c.opts.dpop, scope: strings.Join(t.rt.scopes, " ")}, false
	}
	// A credential whose check depends on a feed not yet read to its end
	// is refused before any check, so no Vault call is made for it: every
	// credential on the revocation feed (the revoked set is checked for
	// both kinds), an API key on the key-record feed when key_replica is
	// on (suspensions and revocations of keys arrive there; the plugin's
	// verify would be asked about keys a replica should hold).
	switch {
	case !c.revocationFeed.known():
		return p, decision{status: http.StatusServiceUnavailable, reason: contract.ReasonRevocationsUnknown, retryAfter: feedRetryAfter}, false
	case c.keyRecordFeed != nil && !contract.LooksLikeJWT(p.cred) && !c.keyRecordFeed.known():
		return p, decision{status: http.StatusServiceUnavailable, reason: contract.ReasonKeyRecordsUnknown, retryAfter: feedRetryAfter}, false
	case c.opts.requireDPoP && !p.dpop:
		return p, decision{status: http.StatusUnauthorized, reason: contract.ReasonDPoPRequired, dpop: true}, false
	}
	p.method, p.rawPath, p.clientIP = r.method, t.rawPath, r.clientIP
	return p, decision{}, true
}

// feedRetryAfter is the Retry-After of a refusal for a feed not yet read:
// a feed that answers is read within a second or two.
const feedRetryAfter = 5 * time.Second

// authorize decides what a verified credential may do here. authd is its
// authenticator's word (degraded, a DPoP proof to spend); dpop: challenges
// answer in the scheme the credential came with.
func (c *decider) authorize(ctx context.Context, r request, t *located, id *identity, dpop bool, authd decision) decision {
	switch {
	case c.revoked.has(id.id):
		return decision{status: http.StatusUnauthorized, reason: contract.ReasonRevoked, dpop: dpop}
	case !time.Now().Before(id.expiresAt):
		return decision{status: http.StatusUnauthorized, reason: contract.ReasonExpired, dpop: dpop}
	case !prefixesAllow(id.cidrs, r.clientIP):
		return decision{status: http.StatusUnauthorized, reason: contract.ReasonCIDRDenied, dpop: dpop}
	}
	rt := t.rt
	for _, need := range rt.scopes {
		if !slices.Contains(id.scopes, need) {
			return decision{status: http.StatusForbidden, reason: contract.ReasonInsufficientScope, scope: strings.Join(rt.scopes, " "), dpop: dpop}
		}
	}
	switch {
	case rt.delegation == delegationRequire && len(id.actors) == 0:
		return decision{status: http.StatusForbidden, reason: contract.ReasonDelegationRequired, dpop: dpop}
	case rt.delegation == delegationForbid && len(id.actors) > 0:
		return decision{status: http.StatusForbidden, reason: contract.ReasonDelegationForbidden, dpop: dpop}
	}
	return c.admit(ctx, r, t, id, authd)
}

func prefixesAllow(cidrs []netip.Prefix, ip netip.Addr) bool {
	if len(cidrs) == 0 {
		return true
	}
	for _, p := range cidrs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// admit spends what an allowed request spends, in this order:
//   - a request of its rate limits: this sidecar's own bucket, then the
//     cluster's window (asked only when the own bucket allows, which bounds
//     how often);
//   - a hold on its budget, when it is metered and the route charges: the
//     route's cost when it is known before the request runs, else the most
//     one request may cost;
//   - its DPoP proof, last, once everything else allowed the request, so a
//     proof is recorded for nothing that is refused. Recording is what makes
//     a proof spent (atomically: of two requests with one proof, one
//     passes), so what it refuses gives back the budget held.
func (c *decider) admit(ctx context.Context, r request, t *located, id *identity, authd decision) decision {
	rt := t.rt
	if id.rate != nil {
		wait, ok := c.rate.allow(ctx, id)
		if ok && c.cluster != nil {
			wait, ok = c.cluster.allow(ctx, id)
		}
		if !ok {
			return decision{status: http.StatusTooManyRequests, reason: contract.ReasonRateLimited, retryAfter: wait, openai: rt.openaiUsage}
		}
	}
	var h *hold
	if id.budget != nil && (rt.cost > 0 || rt.usageHeader != "" || rt.openaiUsage) {
		amount := id.budget.MaxCost
		if rt.usageHeader == "" && !rt.openaiUsage {
			amount = rt.cost
		}
		var denied decision
		if h, denied = c.budgets.acquire(ctx, id, max(1, amount)); h == nil {
			denied.openai = rt.openaiUsage
			return denied
		}
	}
	if authd.proofID != "" {
		if refused, ok := c.proofs.record(authd.proofID, id, r.clientIP); !ok {
			h.settle(0)
			refused.openai = rt.openaiUsage
			return refused
		}
	}
	return decision{status: http.StatusOK, reason: contract.ReasonOK, id: id, degraded: authd.degraded, rt: rt, path: t.path, query: t.query, hold: h}
}
