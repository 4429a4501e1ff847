package sidecar

import (
	"errors"
	"net/http"
	"strings"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// What a denial tells its client and its operator beyond the reason code:
// a sentence (error_description, in WWW-Authenticate and the JSON body)
// and, when a setting decides it, what the credential was measured
// against (the decision log's expected). Every string is made before
// requests arrive (the table below, or jwtHints once the issuer is known),
// so a denial formats nothing it did not already have.

// refusalHint goes with a denial whose description depends on the
// configuration: an audience or issuer mismatch.
type refusalHint struct {
	expected    string // for the decision log and the log: the audiences, the issuer
	description string // error_description, header-safe
	// log is the operator's sentence, which may say more than the client's
	// (the audiences this service accepts: a holder of a token for
	// another service need not learn which ones pass here).
	log string
}

// jwtHints are the hints of one verifier, made with it.
type jwtHints struct {
	audience, issuer refusalHint
}

func newJWTHints(audiences []string, issuer string) *jwtHints {
	aud := strings.Join(audiences, " ")
	audLog := "the token's aud names none of the audiences this service accepts: " + aud + "; mint it with audience set to one of them"
	if aud == "" {
		audLog = "the token has no aud"
	}
	// The issuer is public (the discovery document); the accepted
	// audiences are the operator's to tell.
	iss := headerSafe("the token's iss is not this service's issuer " + issuer + "; it was minted by another Vault or mount")
	return &jwtHints{
		audience: refusalHint{expected: aud, log: audLog,
			description: "the token's aud names none of the audiences this service accepts: mint it for this service (audience=)"},
		issuer: refusalHint{expected: issuer, description: iss, log: iss},
	}
}

// headerSafe keeps what a quoted error_description may hold (RFC 6750
// §3: printable ASCII but '"' and '\'), so a configured audience cannot
// break the challenge.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '?'
		}
		return r
	}, s)
}

// jwtRefusal is the denial of a JWT the verifier refused with err: the
// check that failed, and for a mismatch what was expected (h nil: not
// known yet, the reason alone).
func jwtRefusal(err error, h *jwtHints) decision {
	d := deny(http.StatusUnauthorized, jwtReason(err))
	if h != nil {
		switch d.reason {
		case contract.ReasonAudienceMismatch:
			d.hint = &h.audience
		case contract.ReasonIssuerMismatch:
			d.hint = &h.issuer
		}
	}
	return d
}

// jwtReason names the check that refused a JWT: each is its own reason,
// so a token minted for another service does not read as a forged one.
func jwtReason(err error) string {
	switch {
	case errors.Is(err, jwtverify.ErrExpired):
		return contract.ReasonExpired
	case errors.Is(err, jwtverify.ErrNotYetValid):
		return contract.ReasonNotYetValid
	case errors.Is(err, jwtverify.ErrTooLarge), errors.Is(err, jwtverify.ErrMalformed), errors.Is(err, jwtverify.ErrHeader):
		return contract.ReasonMalformed
	case errors.Is(err, jwtverify.ErrAudience):
		return contract.ReasonAudienceMismatch
	case errors.Is(err, jwtverify.ErrIssuer):
		return contract.ReasonIssuerMismatch
	case errors.Is(err, jwtverify.ErrType):
		return contract.ReasonWrongTokenType
	case errors.Is(err, jwtverify.ErrUnknownKey):
		return contract.ReasonUnknownKey
	case errors.Is(err, jwtverify.ErrAlgorithm), errors.Is(err, jwtverify.ErrSignature):
		return contract.ReasonInvalidSignature
	}
	return contract.ReasonInvalidClaims
}

// description is a denial's error_description: its hint's, or the
// reason's sentence, or the reason itself.
func (d *decision) description() string {
	if d.hint != nil {
		return d.hint.description
	}
	if s, ok := reasonDescriptions[d.reason]; ok {
		return s
	}
	return d.reason
}

// reasonDescriptions say, for a client reading a denial, what happened and
// what to do. Header-safe by construction (TestReasonDescriptions).
var reasonDescriptions = map[string]string{
	contract.ReasonNoCredential:        "no credential: send the API key or token in the Authorization header as Bearer",
	contract.ReasonCredentialInQuery:   "a credential in the query string is refused: send it in the Authorization header",
	contract.ReasonCredentialInPath:    "a credential in the path is refused: send it in the Authorization header",
	contract.ReasonMethodOverride:      "a _method query parameter is refused",
	contract.ReasonBadRequest:          "the request cannot be read",
	contract.ReasonNonCanonicalPath:    "the path is not canonical (dot segments, encoded slashes or the like)",
	contract.ReasonNoRoute:             "no route of this service covers this path",
	contract.ReasonMethodNotAllowed:    "the route does not allow this method",
	contract.ReasonUntrustedGateway:    "the gateway asking is not in trusted_proxies",
	contract.ReasonBodyTooLarge:        "the request body is larger than this service accepts",
	contract.ReasonInvalid:             "the API key is unknown or its secret does not match",
	contract.ReasonUnavailable:         "the credential cannot be checked right now; retry",
	contract.ReasonBudgetExhausted:     "the credential's budget is spent until its period resets",
	contract.ReasonRateLimited:         "the credential's rate limit is reached; retry after Retry-After seconds",
	contract.ReasonTooManyFailures:     "too many failed attempts from this address; retry later",
	contract.ReasonRevocationsUnknown:  "the verifier has not read the revocation list yet; retry",
	contract.ReasonKeyRecordsUnknown:   "the verifier has not read the API key records yet; retry",
	contract.ReasonDelegationRequired:  "this route needs a delegated (exchanged) token",
	contract.ReasonDelegationForbidden: "this route refuses delegated (exchanged) tokens",
	contract.ReasonDPoPNotBound:        "the DPoP scheme needs a credential bound to a key",
	contract.ReasonDPoPDisabled:        "DPoP is not enabled on this service; send the credential as Bearer",
	contract.ReasonInvalidProof:        "the DPoP proof is invalid for this request",
	contract.ReasonProofReplayed:       "the DPoP proof was used before; make a fresh proof per request",
	contract.ReasonDPoPRequired:        "the credential is bound to a key: send it with the DPoP scheme and a proof",
	contract.ReasonMalformed:           "the credential is not a keybroker API key or JWT",
	contract.ReasonExpired:             "the credential expired; get a new one",
	contract.ReasonRevoked:             "the credential was revoked",
	contract.ReasonSuspended:           "the API key is suspended",
	contract.ReasonCIDRDenied:          "the credential may not be used from this address",
	contract.ReasonInsufficientScope:   "the credential lacks a scope this route requires (scope names them)",
	contract.ReasonNotYetValid:         "the token is not valid yet (nbf or iat in the future): check the clocks",
	contract.ReasonInvalidSignature:    "the token's signature does not verify",
	contract.ReasonInvalidClaims:       "the token's claims are not those of a keybroker access token",
	contract.ReasonWrongTokenType:      "the token's typ is not at+jwt: send a keybroker access token, not an ID token",
	contract.ReasonUnknownKey:          "no key of the issuer's JWKS signed the token: it is another issuer's, or its key was retired",
	contract.ReasonKindNotAccepted:     "this service does not accept this kind of credential (credential_kinds): an API key or a JWT",
	contract.ReasonAudienceMismatch:    "the token's aud names none of the audiences this service accepts",
	contract.ReasonIssuerMismatch:      "the token's iss is not this service's issuer",
}
