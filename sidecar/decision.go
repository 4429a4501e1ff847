package sidecar

import (
	"net/http"
	"net/netip"
	"time"

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

// decision is the outcome for one request.
type decision struct {
	status int
	reason string
	// hint is what a denial says beyond its reason when a setting
	// decides it (refusal.go); nil: the reason's own sentence.
	hint  *refusalHint
	scope string // the route's scopes, for insufficient_scope
	allow string // the Allow header, for method_not_allowed
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

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
