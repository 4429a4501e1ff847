package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// identity is who a valid credential says the caller is.
type identity struct {
	jwt       bool
	id        string // key_id or jti
	subject   string
	role      string
	tenant    string
	scopes    []string
	cidrs     []netip.Prefix
	expiresAt time.Time
	budget    *jwtverify.Budget    // nil: not metered
	rate      *jwtverify.RateLimit // nil: no rate limit
	// jkt is the thumbprint of the key the credential is bound to (DPoP),
	// "" for a bearer credential.
	jkt string
	// actors is the delegation chain of an exchanged token (RFC 8693
	// act), the current actor first; nil when nobody acts for the subject.
	actors []string
	// replacedBy: an API key rotated to this key_id, working until
	// expiresAt (the end of its grace); its clients are told.
	replacedBy string
	// lineageKey is what the rate limit is kept by, made once with the
	// identity (which is cached), not per request.
	lineageKey string
}

// Deny reasons, also the X-Keybroker-Reason header and the JSON body's
// reason. The ones a credential check shares with keybroker/verify come from
// the contract package.
const (
	reasonOK                = contract.ReasonOK
	reasonMalformed         = contract.ReasonMalformed
	reasonExpired           = contract.ReasonExpired
	reasonRevoked           = contract.ReasonRevoked
	reasonCIDRDenied        = contract.ReasonCIDRDenied
	reasonInsufficientScope = contract.ReasonInsufficientScope
	reasonSuspended         = contract.ReasonSuspended

	reasonNoCredential      = "no_credential"
	reasonCredentialInQuery = "credential_in_query"
	reasonCredentialInPath  = "credential_in_path"
	// A _method query parameter: frameworks (Laravel, Symfony, Spring,
	// Express's method-override) would serve another method than the one
	// checked.
	reasonMethodOverride   = "method_override_in_query"
	reasonBadRequest       = "bad_request"
	reasonNonCanonicalPath = "non_canonical_path"
	reasonNoRoute          = "no_route"
	reasonMethodNotAllowed = "method_not_allowed"
	reasonUntrustedGateway = "untrusted_gateway"
	reasonBodyTooLarge     = "body_too_large"
	reasonInvalid          = "invalid"
	reasonUnavailable      = "unavailable"
	reasonBudgetExhausted  = "budget_exhausted"
	reasonRateLimited      = "rate_limited"
	reasonTooManyFailures  = "too_many_failures"
	// The revocation feed (every credential) or, with key_replica, the
	// key-record feed (API keys) has not been read to its end yet: what
	// was revoked or suspended is unknown, so nothing is let through.
	reasonRevocationsUnknown = "revocations_unknown"
	reasonKeyRecordsUnknown  = "key_records_unknown"
	// A route's delegation setting refused the credential: it needs an
	// exchanged token (someone acting for the subject), or refuses one.
	reasonDelegationRequired  = "delegation_required"
	reasonDelegationForbidden = "delegation_forbidden"

	// DPoP (RFC 9449). invalid_dpop_proof and dpop_proof_replayed answer
	// with error="invalid_dpop_proof"; the others with invalid_token.
	reasonDPoPRequired  = contract.ReasonDPoPRequired // a bound credential presented as a bearer
	reasonDPoPNotBound  = "dpop_not_bound"            // DPoP scheme, but the credential is not bound
	reasonDPoPDisabled  = "dpop_not_enabled"          // no public_origin: proofs cannot be checked
	reasonInvalidProof  = "invalid_dpop_proof"
	reasonProofReplayed = "dpop_proof_replayed"
)

// keyMintFallbackWindow: a key whose record the replica lacks is asked of
// Vault only when its key_id says it was minted within this of now (either
// side, for clock skew between Vault and the sidecar), widened by how long
// ago the replica was last confirmed (a key minted since may be missing);
// every other unknown key_id is refused offline. Records arrive within
// milliseconds of a mint.
const keyMintFallbackWindow = 30 * time.Second

// decision is the outcome for one request.
type decision struct {
	status int
	reason string
	scope  string // the route's scopes, for insufficient_scope
	allow  string // the Allow header, for method_not_allowed
	// id is the caller; on a denial (made after the credential verified)
	// it is only for the decision log.
	id       *identity
	degraded bool
	// path is the canonical path decided on and query the raw query: what
	// goes upstream. A denial has its path (once canonical) and route
	// too, for the decision log, never its query.
	path, query string
	// retryAfter goes with 429s; hold is the budget an allowed request
	// holds until it settles (nil when not metered); rt is the route.
	retryAfter time.Duration
	hold       *hold
	rt         *route
	// dpop: the 401 challenges with the DPoP scheme (and its algs).
	dpop bool
	// proofID is what the replay cache is to remember of a valid DPoP
	// proof once the request is allowed.
	proofID string
	// openai: the route meters OpenAI-compatible answers, so its clients
	// are OpenAI SDKs: a 429 then also speaks their error format.
	openai bool
}

func (d decision) allowed() bool { return d.status == http.StatusOK }

func deny(status int, reason string) decision { return decision{status: status, reason: reason} }

// request is what a decision looks at, wherever it came from: the proxied
// request itself, or the request a gateway asks about on /verify.
type request struct {
	method string
	// target is the raw request-target, still percent-encoded, as the
	// client sent it (or as the gateway reports it).
	target   string
	header   http.Header
	clientIP netip.Addr
}

// decide is the only way to a decision: it canonicalises the target, finds
// the route and checks the credential.
func (sc *Sidecar) decide(ctx context.Context, r request) (d decision) {
	rawPath, rawQuery, ok := splitTarget(r.target)
	if !ok {
		return deny(http.StatusBadRequest, reasonNonCanonicalPath)
	}
	path, ok := canonicalPath(rawPath)
	if !ok {
		return deny(http.StatusBadRequest, reasonNonCanonicalPath)
	}
	// A denial from here on says its path, its route and, once the
	// credential verified, whose it is: for the decision log.
	var rt *route
	var who *identity
	defer func() {
		if d.path == "" {
			d.path = path
		}
		if d.rt == nil {
			d.rt = rt
		}
		if d.id == nil {
			d.id = who
		}
	}()
	rt, g := sc.s.match(r.method, path)
	switch {
	case rt == nil && g != nil:
		return decision{status: http.StatusMethodNotAllowed, reason: reasonMethodNotAllowed, allow: g.allow}
	case rt == nil && !sc.s.allowUnmatched:
		return deny(http.StatusForbidden, reasonNoRoute)
	case rt == nil:
		rt = &defaultRoute
	}
	if rt.public {
		return decision{status: http.StatusOK, reason: reasonOK, path: path, query: rawQuery, rt: rt}
	}
	if reason := queryDenial(rawQuery); reason != "" {
		return deny(http.StatusBadRequest, reason)
	}
	if credentialInPath(path) {
		// Never forwarded, and the decision log writes the path with
		// the credential cut out.
		return deny(http.StatusBadRequest, reasonCredentialInPath)
	}
	p, ok := presentedFrom(r.header)
	if !ok {
		return deny(http.StatusBadRequest, reasonBadRequest)
	}
	if p.cred == "" {
		// The route's scopes go in the challenge: what to ask a token for.
		return decision{status: http.StatusUnauthorized, reason: reasonNoCredential, dpop: sc.dpop != nil, scope: strings.Join(rt.scopes, " ")}
	}
	if d, ok := sc.feedsKnown(p.cred); !ok {
		return d
	}
	if sc.s.requireDPoP && !p.dpop {
		return decision{status: http.StatusUnauthorized, reason: reasonDPoPRequired, dpop: true}
	}
	p.method, p.rawPath, p.clientIP = r.method, rawPath, r.clientIP
	id, d := sc.authenticatorFor(&p).authenticate(ctx, p)
	if id == nil {
		return d
	}
	who = id
	// Challenges answer in the scheme the credential came with.
	switch {
	case sc.revoked.has(id.id):
		return decision{status: http.StatusUnauthorized, reason: reasonRevoked, dpop: p.dpop}
	case !time.Now().Before(id.expiresAt):
		return decision{status: http.StatusUnauthorized, reason: reasonExpired, dpop: p.dpop}
	case !prefixesAllow(id.cidrs, r.clientIP):
		return decision{status: http.StatusUnauthorized, reason: reasonCIDRDenied, dpop: p.dpop}
	}
	for _, need := range rt.scopes {
		if !slices.Contains(id.scopes, need) {
			return decision{status: http.StatusForbidden, reason: reasonInsufficientScope, scope: strings.Join(rt.scopes, " "), dpop: p.dpop}
		}
	}
	switch {
	case rt.delegation == delegationRequire && len(id.actors) == 0:
		return decision{status: http.StatusForbidden, reason: reasonDelegationRequired, dpop: p.dpop}
	case rt.delegation == delegationForbid && len(id.actors) > 0:
		return decision{status: http.StatusForbidden, reason: reasonDelegationForbidden, dpop: p.dpop}
	}
	allowed := decision{status: http.StatusOK, reason: reasonOK, id: id, degraded: d.degraded, rt: rt, path: path, query: rawQuery}
	if id.rate != nil {
		if wait, ok := sc.rateAllow(id); !ok {
			return decision{status: http.StatusTooManyRequests, reason: reasonRateLimited, retryAfter: wait, openai: rt.openaiUsage}
		}
		if sc.cluster != nil {
			if wait, ok := sc.cluster.allow(ctx, id); !ok {
				return decision{status: http.StatusTooManyRequests, reason: reasonRateLimited, retryAfter: wait, openai: rt.openaiUsage}
			}
		}
	}
	if id.budget != nil && (rt.cost > 0 || rt.usageHeader != "" || rt.openaiUsage) {
		amount := id.budget.MaxCost
		if rt.usageHeader == "" && !rt.openaiUsage {
			amount = rt.cost // known before the request runs
		}
		h, denied := sc.budgets.acquire(ctx, id, max(1, amount))
		if h == nil {
			denied.openai = rt.openaiUsage
			return denied
		}
		allowed.hold = h
	}
	// Last, once everything else allowed the request: a proof is recorded
	// for nothing that is refused. Recording is what makes a proof spent
	// (atomically: of two requests with one proof, one passes), so what
	// it refuses gives back the budget held.
	if d.proofID != "" {
		if refused, ok := sc.recordProof(d.proofID, id, r.clientIP); !ok {
			allowed.hold.settle(0)
			refused.openai = rt.openaiUsage
			return refused
		}
	}
	return allowed
}

// feedsKnown refuses a credential whose check depends on a feed not yet
// read to its end: every credential on the revocation feed (the revoked set
// is checked for both kinds), an API key on the key-record feed when
// key_replica is on (suspensions and revocations of keys arrive there; the
// plugin's verify would be asked about keys a replica should hold).
// Refused before any check, so no Vault call is made for it.
func (sc *Sidecar) feedsKnown(cred string) (decision, bool) {
	switch {
	case !sc.revFeed.known():
		return decision{status: http.StatusServiceUnavailable, reason: reasonRevocationsUnknown, retryAfter: feedRetryAfter}, false
	case sc.replica != nil && !contract.LooksLikeJWT(cred) && !sc.keyFeed.known():
		return decision{status: http.StatusServiceUnavailable, reason: reasonKeyRecordsUnknown, retryAfter: feedRetryAfter}, false
	}
	return decision{}, true
}

// feedRetryAfter is the Retry-After of a refusal for a feed not yet read:
// a feed that answers is read within a second or two.
const feedRetryAfter = 5 * time.Second

// rateAllow takes one request from the bucket of the credential's lineage,
// or says how long until one is free. An API key's lineage is its key_id; a
// JWT's is its subject within its role, so a new or refreshed token does not
// bring a fresh bucket. Tokens of one lineage may carry different limits
// (narrowed at mint or refresh): the bucket keeps the strictest it has seen.
func (sc *Sidecar) rateAllow(id *identity) (time.Duration, bool) {
	key := id.lineage()
	lim, ok := sc.limiters.Get(key)
	perSecond, burst := rate.Limit(id.rate.PerSecond), max(1, id.rate.Burst)
	if !ok {
		lim = rate.NewLimiter(perSecond, burst)
		if prev, found, _ := sc.limiters.PeekOrAdd(key, lim); found {
			lim = prev
		}
	}
	if perSecond < lim.Limit() {
		lim.SetLimit(perSecond)
	}
	if burst < lim.Burst() {
		lim.SetBurst(burst)
	}
	if lim.Allow() {
		return 0, true
	}
	wait := (1 - lim.Tokens()) / float64(lim.Limit())
	return time.Duration(wait * float64(time.Second)), false
}

// lineage is what a credential's rate limit is kept by.
func (id *identity) lineage() string {
	switch {
	case id.lineageKey != "":
		return id.lineageKey
	case id.jwt:
		return "jwt\x00" + id.role + "\x00" + id.subject
	}
	return "key\x00" + id.id
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

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
