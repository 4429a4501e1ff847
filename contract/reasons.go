package contract

// Reasons only a verifier gives (keybroker-sidecar, or a service embedding
// its middleware), in X-Keybroker-Reason, the JSON body of a denial and the
// decision log. Those a credential check shares with keybroker/verify are
// with its answer (contract.go). Gateways, clients and keybroker-audit read
// them.
const (
	ReasonNoCredential      = "no_credential"
	ReasonCredentialInQuery = "credential_in_query"
	ReasonCredentialInPath  = "credential_in_path"
	// A _method query parameter: frameworks (Laravel, Symfony, Spring,
	// Express's method-override) would serve another method than the one
	// checked.
	ReasonMethodOverride   = "method_override_in_query"
	ReasonBadRequest       = "bad_request"
	ReasonNonCanonicalPath = "non_canonical_path"
	ReasonNoRoute          = "no_route"
	ReasonMethodNotAllowed = "method_not_allowed"
	ReasonUntrustedGateway = "untrusted_gateway"
	ReasonBodyTooLarge     = "body_too_large"
	// ReasonInvalid: an API key that is unknown, or whose secret does not
	// match (the same answer for both, so a guess learns nothing). A JWT
	// says which check refused it (below, and contract.go's expired,
	// not_yet_valid, invalid_signature, invalid_claims).
	ReasonInvalid         = "invalid"
	ReasonUnavailable     = "unavailable"
	ReasonBudgetExhausted = "budget_exhausted"
	ReasonRateLimited     = "rate_limited"
	ReasonTooManyFailures = "too_many_failures"
	// The revocation feed (every credential) or, with key_replica, the
	// key-record feed (API keys) has not been read to its end yet: what
	// was revoked or suspended is unknown, so nothing is let through.
	ReasonRevocationsUnknown = "revocations_unknown"
	ReasonKeyRecordsUnknown  = "key_records_unknown"
	// A route's delegation setting refused the credential: it needs an
	// exchanged token (someone acting for the subject), or refuses one.
	ReasonDelegationRequired  = "delegation_required"
	ReasonDelegationForbidden = "delegation_forbidden"

	// Why a JWT that is keybroker's in shape was refused, each answered
	// with error="invalid_token": its aud names none of the audiences
	// this verifier accepts (a token minted for another service, or an
	// audiences/resource setting that misses it), its iss is not this
	// verifier's issuer (another Vault or mount), its typ is not at+jwt
	// (an ID token or another issuer's JWT), or no key of the JWKS signed
	// it (another issuer's token, or a key retired from the JWKS). The
	// decision log's expected says what the verifier expected.
	ReasonAudienceMismatch = "audience_mismatch"
	ReasonIssuerMismatch   = "issuer_mismatch"
	ReasonWrongTokenType   = "wrong_token_type"
	ReasonUnknownKey       = "unknown_signing_key"
	// ReasonKindNotAccepted: a JWT or an API key came to a verifier whose
	// credential_kinds leave that kind out (an API-key-only deployment
	// refuses JWTs).
	ReasonKindNotAccepted = "credential_kind_not_accepted"

	// DPoP (RFC 9449). invalid_dpop_proof and dpop_proof_replayed answer
	// with error="invalid_dpop_proof"; the others with invalid_token.
	ReasonDPoPNotBound  = "dpop_not_bound"   // DPoP scheme, but the credential is not bound
	ReasonDPoPDisabled  = "dpop_not_enabled" // no public_origin: proofs cannot be checked
	ReasonInvalidProof  = "invalid_dpop_proof"
	ReasonProofReplayed = "dpop_proof_replayed"
)
