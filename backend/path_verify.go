package backend

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// verifyLeeway is the clock skew the plugin allows for nbf, iat and exp: the
// token was minted by this cluster, whose nodes share a clock within seconds.
const verifyLeeway = 30 * time.Second

func pathVerify(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: contract.PathVerify + "$",
		Fields: map[string]*framework.FieldSchema{
			contract.FieldCredential: {
				Type:         framework.TypeString,
				Description:  "The API key or agent JWT to verify.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"key": {
				Type:         framework.TypeString,
				Description:  "Alias of credential, kept for API key callers.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"audience": {
				Type:        framework.TypeString,
				Description: "JWTs only: the token's aud must contain this. Default: any audience.",
			},
			contract.FieldRemoteAddr: {
				Type:        framework.TypeString,
				Description: "IP address (optionally with port) the credential was presented from; checked against its bound_cidrs. A credential with bound_cidrs is denied when this is empty.",
			},
			"scopes": {
				Type:        framework.TypeCommaStringSlice,
				Description: "Scopes the credential must all carry.",
			},
		},
		DisplayAttrs: pathAttrs("credential"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("verify", "", b.pathVerifyWrite, answers(verifyAnswerFields())),
		},
		HelpSynopsis: "Verify a credential.",
		HelpDescription: `Answers whether a credential is valid for a request from remote_addr that
needs the given scopes. An invalid credential is an answer (valid=false and a
reason: malformed, not_found, expired, revoked, cidr_denied,
insufficient_scope or dpop_required, for a DPoP-bound credential that only a
verifier checking its proof accepts; for JWTs also invalid_signature,
invalid_claims and not_yet_valid), not an error. An unknown key and a wrong secret for a known
key_id both answer not_found; when no key has the key_id at all, the answer
also carries unknown_key_id=true, so a verifier can refuse that key_id
without asking again. When valid, the answer carries role, scopes,
tenant and expires_at, with key_id and metadata for an API key, or jti, sub,
audience and actors (the delegation chain of an exchanged token) for a JWT.`,
	}
}

// verifyAnswerFields describe a verification: valid and reason always;
// when valid, what the credential carries, with the fields of an API key
// (key_id, name, metadata, dpop_jkt) or of a JWT (jti, sub, audience).
func verifyAnswerFields() map[string]*framework.FieldSchema {
	reason := withAllowed(out(framework.TypeString, "ok, or why the credential is refused: malformed, not_found, expired, revoked, cidr_denied, insufficient_scope, "+
		"dpop_required (a DPoP-bound credential, which only a verifier checking its proof accepts); for JWTs also invalid_signature, invalid_claims, not_yet_valid."),
		contract.ReasonOK, contract.ReasonMalformed, contract.ReasonNotFound, contract.ReasonExpired, contract.ReasonRevoked, contract.ReasonCIDRDenied, contract.ReasonInsufficientScope,
		contract.ReasonDPoPRequired, contract.ReasonSuspended, contract.ReasonInvalidSignature, contract.ReasonInvalidClaims, contract.ReasonNotYetValid)
	return merged(keyAnswerFields(), pick(tokenAnswerFields(), "jti", "sub", "audience"), map[string]*framework.FieldSchema{
		"valid":          out(framework.TypeBool, "Whether the credential is valid for the request."),
		"reason":         reason,
		"unknown_key_id": out(framework.TypeBool, "With not_found: no key has the key_id at all, so a verifier may refuse it without asking again."),
		"role":           out(framework.TypeString, "Role the credential was minted from."),
		"scopes":         out(framework.TypeStringSlice, "Scopes the credential carries."),
		"bound_cidrs":    out(framework.TypeStringSlice, "CIDR blocks the credential may be used from; empty: anywhere."),
		"tenant":         out(framework.TypeString, "Tenant the credential belongs to; empty: none."),
		"expires_at":     out(framework.TypeTime, "When the credential expires."),
		"budget":         out(framework.TypeMap, "For a metered credential (a budget of its own, or its tenant's ceiling): units per period (0: none of its own), period in seconds and max_cost; null otherwise."),
		"rate_limit":     out(framework.TypeMap, "For a credential with a rate limit: per_second and burst, per verifier; null otherwise."),
		"replaced_by":    out(framework.TypeString, "API keys: the key was rotated to this key_id; it works until expires_at, the end of its grace."),
		"actors":         out(framework.TypeStringSlice, "JWTs: who acts for sub (RFC 8693 act, from keybroker/token/exchange), the current actor first; empty when the token is used by its own subject."),
	})
}

func (b *backend) pathVerifyWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	key, alias := d.Get(contract.FieldCredential).(string), d.Get("key").(string)
	switch {
	case key == "":
		key = alias
	case alias != "" && alias != key:
		return logical.ErrorResponse("credential and key differ; send one of them"), nil
	}
	if key == "" {
		return logical.ErrorResponse("credential (or key) is required"), nil
	}
	addr, err := parseRemoteAddr(d.Get(contract.FieldRemoteAddr).(string))
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	required, err := validateScopes("scopes", d.Get("scopes").([]string))
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	if contract.LooksLikeJWT(key) {
		return b.verifyJWT(ctx, req, key, addr, required, d.Get("audience").(string))
	}

	k, reason, unknownID, err := keyByValue(ctx, req.Storage, key)
	switch {
	case err != nil:
		return nil, err
	case unknownID:
		// No key has this key_id: a verifier may refuse it without asking
		// again. key_ids are public handles, so this reveals nothing.
		resp := verifyAnswer(contract.ReasonNotFound)
		resp.Data["unknown_key_id"] = true
		return resp, nil
	case reason != "":
		return verifyAnswer(reason), nil
	case k.revoked():
		return verifyAnswer(contract.ReasonRevoked), nil
	case !time.Now().Before(k.ExpiresAt):
		return verifyAnswer(contract.ReasonExpired), nil
	}
	if err := withRoleSuspension(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	switch {
	case k.suspended():
		return verifyAnswer(contract.ReasonSuspended), nil
	case k.JKT != "":
		return verifyAnswer(contract.ReasonDPoPRequired), nil
	case !cidrsAllow(k.BoundCIDRs, addr):
		return verifyAnswer(contract.ReasonCIDRDenied), nil
	case len(subset(required, k.Scopes)) > 0:
		return verifyAnswer(contract.ReasonInsufficientScope), nil
	}
	metered, err := isMetered(ctx, req.Storage, k.limits, k.Tenant)
	if err != nil {
		return nil, err
	}
	data := k.publicData()
	data["valid"] = true
	data["reason"] = contract.ReasonOK
	data["budget"], data["rate_limit"] = k.limits.claims(metered)
	if k.ReplacedBy != "" {
		data["replaced_by"] = k.ReplacedBy // and expires_at is the end of its grace
	}
	return &logical.Response{Data: data}, nil
}

// keyByValue finds the key a plaintext API key is: reason is malformed or
// not_found (unknownID when no key has its key_id) when it is none. The
// secret is compared in constant time, and never kept.
func keyByValue(ctx context.Context, s logical.Storage, key string) (k *keyEntry, reason string, unknownID bool, err error) {
	parsed, perr := apikey.Parse(key)
	if perr != nil {
		return nil, contract.ReasonMalformed, false, nil
	}
	if k, err = getKey(ctx, s, parsed.ID); err != nil || k == nil {
		return nil, contract.ReasonNotFound, k == nil && err == nil, err
	}
	hash := apikey.Hash(key)
	if subtle.ConstantTimeCompare(hash[:], k.Hash) != 1 {
		return nil, contract.ReasonNotFound, false, nil
	}
	return k, "", false, nil
}

func (b *backend) verifyJWT(ctx context.Context, req *logical.Request, token string, addr netip.Addr, required []string, audience string) (*logical.Response, error) {
	c, reason, userErr, err := b.ownJWT(ctx, req, token, audience)
	switch {
	case userErr != nil || err != nil:
		return userErr, err
	case reason != "":
		return verifyAnswer(reason), nil
	case c.BoundKey() != "":
		return verifyAnswer(contract.ReasonDPoPRequired), nil
	case !cidrsAllow(c.CIDR, addr):
		return verifyAnswer(contract.ReasonCIDRDenied), nil
	case len(subset(required, c.Scopes())) > 0:
		return verifyAnswer(contract.ReasonInsufficientScope), nil
	}
	return &logical.Response{Data: map[string]interface{}{
		"valid":       true,
		"reason":      contract.ReasonOK,
		"jti":         c.ID,
		"sub":         c.Subject,
		"role":        c.Role,
		"scopes":      nonNil(c.Scopes()),
		"tenant":      c.Tenant,
		"audience":    []string(c.Audience),
		"bound_cidrs": nonNil(c.CIDR),
		"expires_at":  c.ExpiresAt.UTC().Format(time.RFC3339),
		"budget":      c.Budget,
		"rate_limit":  c.Rate,
		"actors":      nonNil(c.Actors()),
	}}, nil
}

// ownJWT checks a token this plugin signed: signature with one of its
// keys, issuer, audience when given, times, and revocation. reason is ""
// for a valid token, else why it is not (a verify reason); userErr is a
// configuration the caller must fix. Bound tokens pass: what to make of the
// binding is the caller's to decide, after the revocation check, so a
// revoked one says revoked.
func (b *backend) ownJWT(ctx context.Context, req *logical.Request, token, audience string) (c *jwtverify.Claims, reason string, userErr *logical.Response, err error) {
	iss, userErr, err := b.issuer(ctx, req, false)
	if userErr != nil || err != nil {
		return nil, "", userErr, err
	}
	st, err := b.signer.current(ctx, req.Storage, b.Logger())
	if err != nil {
		return nil, "", nil, err
	}
	vc := jwtverify.Config{Issuer: iss, Leeway: verifyLeeway, AcceptBound: true}
	if audience != "" {
		vc.Audiences = []string{audience}
	}
	v, err := jwtverify.NewVerifier(vc)
	if err != nil {
		return nil, "", nil, err
	}
	c, err = v.Verify(token, st.keys)
	switch {
	case err == nil:
	case errors.Is(err, jwtverify.ErrExpired):
		return nil, contract.ReasonExpired, nil, nil
	case errors.Is(err, jwtverify.ErrNotYetValid):
		return nil, contract.ReasonNotYetValid, nil, nil
	case errors.Is(err, jwtverify.ErrUnknownKey), errors.Is(err, jwtverify.ErrAlgorithm), errors.Is(err, jwtverify.ErrSignature):
		return nil, contract.ReasonInvalidSignature, nil, nil
	case errors.Is(err, jwtverify.ErrType), errors.Is(err, jwtverify.ErrClaims), errors.Is(err, jwtverify.ErrIssuerOrAudience):
		return nil, contract.ReasonInvalidClaims, nil, nil
	default:
		return nil, contract.ReasonMalformed, nil, nil
	}
	revoked, err := req.Storage.Get(ctx, revokedJTIPrefix+c.ID)
	if err != nil {
		return nil, "", nil, fmt.Errorf("reading revoked jti: %w", err)
	}
	if revoked != nil {
		return nil, contract.ReasonRevoked, nil, nil
	}
	return c, "", nil, nil
}

func verifyAnswer(reason string) *logical.Response {
	return &logical.Response{Data: map[string]interface{}{"valid": false, "reason": reason}}
}
