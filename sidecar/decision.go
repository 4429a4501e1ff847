package sidecar

import (
	"net/http"
	"net/netip"
	"time"

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

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
