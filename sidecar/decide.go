package sidecar

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/keybroker/keybroker/apikey"
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

	reasonNoCredential      = "no_credential"
	reasonCredentialInQuery = "credential_in_query"
	reasonBadRequest        = "bad_request"
	reasonNonCanonicalPath  = "non_canonical_path"
	reasonNoRoute           = "no_route"
	reasonMethodNotAllowed  = "method_not_allowed"
	reasonUntrustedGateway  = "untrusted_gateway"
	reasonBodyTooLarge      = "body_too_large"
	reasonInvalid           = "invalid"
	reasonUnavailable       = "unavailable"
	reasonBudgetExhausted   = "budget_exhausted"
	reasonRateLimited       = "rate_limited"
	reasonTooManyFailures   = "too_many_failures"
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
	status   int
	reason   string
	scope    string // the route's scopes, for insufficient_scope
	allow    string // the Allow header, for method_not_allowed
	id       *identity
	degraded bool
	// path is the canonical path decided on and query the raw query: what
	// goes upstream.
	path, query string
	// retryAfter goes with 429s; hold is the budget an allowed request
	// holds until it settles (nil when not metered); rt is the route.
	retryAfter time.Duration
	hold       *hold
	rt         *route
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
func (sc *Sidecar) decide(ctx context.Context, r request) decision {
	rawPath, rawQuery, ok := splitTarget(r.target)
	if !ok {
		return deny(http.StatusBadRequest, reasonNonCanonicalPath)
	}
	path, ok := canonicalPath(rawPath)
	if !ok {
		return deny(http.StatusBadRequest, reasonNonCanonicalPath)
	}
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
	if found, ok := credentialInQuery(rawQuery); found || !ok {
		return deny(http.StatusBadRequest, reasonCredentialInQuery)
	}
	cred, ok := credentialFrom(r.header)
	if !ok {
		return deny(http.StatusBadRequest, reasonBadRequest)
	}
	if cred == "" {
		return deny(http.StatusUnauthorized, reasonNoCredential)
	}

	var id *identity
	var d decision
	if strings.Count(cred, ".") == 2 {
		id, d = sc.checkJWT(ctx, cred)
	} else {
		id, d = sc.checkKey(ctx, cred, r.clientIP)
	}
	if id == nil {
		return d
	}
	switch {
	case sc.revoked.has(id.id):
		return deny(http.StatusUnauthorized, reasonRevoked)
	case !time.Now().Before(id.expiresAt):
		return deny(http.StatusUnauthorized, reasonExpired)
	case !prefixesAllow(id.cidrs, r.clientIP):
		return deny(http.StatusUnauthorized, reasonCIDRDenied)
	}
	for _, need := range rt.scopes {
		if !slices.Contains(id.scopes, need) {
			return decision{status: http.StatusForbidden, reason: reasonInsufficientScope, scope: strings.Join(rt.scopes, " ")}
		}
	}
	allowed := decision{status: http.StatusOK, reason: reasonOK, id: id, degraded: d.degraded, rt: rt, path: path, query: rawQuery}
	if id.rate != nil {
		if wait, ok := sc.rateAllow(id); !ok {
			return decision{status: http.StatusTooManyRequests, reason: reasonRateLimited, retryAfter: wait}
		}
		if sc.cluster != nil {
			if wait, ok := sc.cluster.allow(ctx, id); !ok {
				return decision{status: http.StatusTooManyRequests, reason: reasonRateLimited, retryAfter: wait}
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
			return denied
		}
		allowed.hold = h
	}
	return allowed
}

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

// credentialFrom reads Authorization: Bearer or X-API-Key. ok is false for a
// request that is malformed: another auth scheme, two different credentials,
// or either header repeated (a later component might read the other copy).
func credentialFrom(h http.Header) (cred string, ok bool) {
	auth, ok1 := single(h, "Authorization")
	key, ok2 := single(h, "X-API-Key")
	if !ok1 || !ok2 {
		return "", false
	}
	bearer := ""
	if auth != "" {
		scheme, rest, found := strings.Cut(auth, " ")
		if !found || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) == "" {
			return "", false
		}
		bearer = strings.TrimSpace(rest)
	}
	key = strings.TrimSpace(key)
	switch {
	case bearer != "" && key != "" && bearer != key:
		return "", false
	case bearer != "":
		return bearer, true
	}
	return key, true
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
		scopes: c.Scopes(), expiresAt: c.ExpiresAt.Time.Add(sc.s.leeway), budget: c.Budget, rate: c.Rate}
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

// checkKey checks an API key: the checksum offline, then the record in the
// key replica and the key's hash against it, in constant time. Without a
// usable replica (not read yet, key_replica = false, or not confirmed
// current within max_stale), and for a key minted moments ago whose record
// has not arrived, it goes on to the caches, then keybroker/verify within
// the flood guard's limits. When Vault cannot be reached, a cached answer
// serves for up to max_stale, then the sidecar fails closed.
func (sc *Sidecar) checkKey(ctx context.Context, key string, ip netip.Addr) (*identity, decision) {
	parsed, err := apikey.Parse(key)
	if err != nil {
		return nil, deny(http.StatusUnauthorized, reasonMalformed)
	}
	h := apikey.Hash(key)
	now := time.Now()
	if r := sc.replica; r != nil && r.usable(now, sc.s.maxStale) {
		rec, metered := r.lookup(parsed.ID)
		switch {
		case rec != nil && subtle.ConstantTimeCompare(rec.hash[:], h[:]) == 1:
			sc.m.replicaHit.Inc()
			if !sc.s.keyFilter.passes(rec.shape.role, rec.shape.tenant) {
				// The plugin filters too; this holds whatever it sends.
				return nil, deny(http.StatusUnauthorized, reasonInvalid)
			}
			if rec.revoked {
				return nil, deny(http.StatusUnauthorized, reasonRevoked)
			}
			return rec.identity(strings.Clone(parsed.ID), metered), decision{degraded: r.failing.Load()}
		case rec != nil:
			// Same answer as for an unknown key.
			sc.m.replicaHit.Inc()
			return nil, deny(http.StatusUnauthorized, reasonInvalid)
		case !apikey.MintedNear(parsed.ID, now, keyMintFallbackWindow+now.Sub(r.currentAsOf(now))):
			// No key has this key_id: one minted longer ago would be
			// held. Forged keys end here, without a Vault call.
			sc.m.replicaRefused.Inc()
			return nil, deny(http.StatusUnauthorized, reasonInvalid)
		}
		// Minted moments ago, its record may be on its way: ask Vault,
		// once, within the flood guard's limits.
		sc.m.replicaFallback.Inc()
	}
	e, cached := sc.positive.Get(h)
	if cached && now.Sub(e.fetched) < sc.s.keyCacheTTL {
		sc.m.keyHit.Inc()
		return e.id, decision{}
	}
	sc.m.keyMiss.Inc()
	if n, ok := sc.negative.Get(h); ok && now.Before(n.expires) {
		sc.m.negativeHit.Inc()
		return nil, deny(http.StatusUnauthorized, n.reason)
	}
	if exp, ok := sc.unknownIDs.Get(parsed.ID); ok && now.Before(exp) {
		sc.m.negativeHit.Inc()
		return nil, deny(http.StatusUnauthorized, reasonInvalid)
	}

	var ans *contract.VerifyAnswer
	if d := sc.flood.lookup(ctx, ip, func() bool {
		// One Vault call per key however many requests carry it at
		// once. The call must not die with the first caller's request:
		// it answers them all.
		v, verr, _ := sc.vaultSF.Do(string(h[:]), func() (interface{}, error) {
			return sc.vault.verifyKey(context.WithoutCancel(ctx), key, ipString(ip))
		})
		err = verr
		if err == nil {
			ans = v.(*contract.VerifyAnswer)
		}
		return err == nil && ans.Reason != reasonOK
	}); d != nil {
		return nil, *d
	}
	if err != nil {
		sc.m.vaultCalls.WithLabelValues("verify", "error").Inc()
		if cached && now.Sub(e.fetched) < sc.s.maxStale {
			return e.id, decision{degraded: true}
		}
		sc.log.Warn("cannot verify an API key: Vault unreachable and no fresh cache entry", "error", err)
		return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
	}
	sc.m.vaultCalls.WithLabelValues("verify", "ok").Inc()
	switch {
	case ans.Reason == reasonOK && !sc.s.keyFilter.passes(ans.Role, ans.Tenant):
		// A key outside key_replica_roles/tenants: this sidecar does not
		// serve it, whether its record has arrived or not.
		sc.negative.Add(h, negEntry{reason: reasonInvalid, expires: now.Add(sc.s.negativeCacheTTL)})
		return nil, deny(http.StatusUnauthorized, reasonInvalid)
	}
	switch ans.Reason {
	case reasonOK:
	case reasonCIDRDenied:
		// Depends on the address, so not cached.
		return nil, deny(http.StatusUnauthorized, reasonCIDRDenied)
	default:
		reason := ans.Reason
		if reason == contract.ReasonNotFound {
			reason = reasonInvalid // same answer for an unknown key and a wrong one
		}
		if ans.UnknownKeyID {
			sc.unknownIDs.Add(parsed.ID, now.Add(sc.s.negativeCacheTTL))
		}
		sc.negative.Add(h, negEntry{reason: reason, expires: now.Add(sc.s.negativeCacheTTL)})
		sc.positive.Remove(h)
		return nil, deny(http.StatusUnauthorized, reason)
	}
	id := &identity{id: ans.KeyID, subject: "key:" + ans.KeyID, role: ans.Role, tenant: ans.Tenant, scopes: ans.Scopes,
		budget: ans.Budget, rate: ans.RateLimit}
	if id.expiresAt, err = time.Parse(time.RFC3339, ans.ExpiresAt); err != nil {
		return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
	}
	for _, s := range ans.BoundCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			// A bound the sidecar cannot read must not become no bound.
			return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
		}
		id.cidrs = append(id.cidrs, p)
	}
	id.lineageKey = id.lineage()
	sc.positive.Add(h, &keyEntry{id: id, fetched: now})
	return id, decision{}
}

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
