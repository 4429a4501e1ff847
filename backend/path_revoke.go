package backend

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// Revocation by value: for the moment a credential turns up where it
// should not (a public repository, a log), revoked without knowing its id.

// maxRevokeByValue bounds one revoke request.
const maxRevokeByValue = 100

func pathRevoke(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "revoke$",
		Fields: map[string]*framework.FieldSchema{
			"key": {
				Type:         framework.TypeString,
				Description:  "An API key, agent JWT or refresh token (kbrt_...), in plaintext, to revoke: for when one is found in a public repository. It is not stored or logged.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"keys": {
				Type:         framework.TypeCommaStringSlice,
				Description:  fmt.Sprintf("Several, at most %d.", maxRevokeByValue),
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
		},
		DisplayAttrs: pathAttrs("by-value"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("revoke", "", b.pathRevokeByValue, answers(map[string]*framework.FieldSchema{
				"results": out(framework.TypeSlice, "One per credential given, in order: index, kind (api_key, jwt, refresh_token), id (key_id, jti or refresh token id, when it names one), result (revoked, already_revoked, expired, not_found, malformed). Never the credential."),
			})),
		},
		HelpSynopsis: "Revoke API keys, JWTs or refresh tokens by their value.",
		HelpDescription: `Revokes each credential given (key, or keys) without knowing its id, and
everything it stands for: an API key whose secret matches its key_id's; a
JWT this plugin signed, with its refresh family (every live token of the
family, and no refresh token of it works again), as revoking its lease
does, and the tokens exchanged from it; a refresh token (kbrt_...), with
its family, as presenting it twice does. A credential already expired is
answered expired and changes nothing; one whose revocation is already in
place, already_revoked. The answer names only ids and results; the values
are HMAC'd in the audit log like every string. A secret-scanning alert can
call this path directly.`,
	}
}

func (b *backend) pathRevokeByValue(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	creds := d.Get("keys").([]string)
	if k := d.Get("key").(string); k != "" {
		creds = append([]string{k}, creds...)
	}
	switch {
	case len(creds) == 0:
		return logical.ErrorResponse("give key (or keys): the credential(s) to revoke"), nil
	case len(creds) > maxRevokeByValue:
		return logical.ErrorResponse("at most %d credentials per request, got %d", maxRevokeByValue, len(creds)), nil
	}
	results := make([]map[string]interface{}, 0, len(creds))
	for i, c := range creds {
		res, err := b.revokeOneByValue(ctx, req, strings.TrimSpace(c))
		if err != nil {
			return nil, err
		}
		res["index"] = i
		results = append(results, res)
	}
	b.Logger().Info("revoke by value", "count", len(creds), "entity_id", req.EntityID)
	return &logical.Response{Data: map[string]interface{}{"results": results}}, nil
}

// Results of a revocation by value, one per credential.
const (
	revokeRevoked   = "revoked"
	revokeAlready   = "already_revoked"
	revokeExpired   = "expired"
	revokeNotFound  = "not_found"
	revokeMalformed = "malformed"
	// kindRefreshToken is the kind of a refresh token given by value.
	kindRefreshToken = "refresh_token"
)

func revokeResult(kind, id, result string) map[string]interface{} {
	res := map[string]interface{}{"kind": kind, "result": result}
	if id != "" {
		res["id"] = id
	}
	return res
}

// revokeOneByValue revokes what one credential stands for: an API key; a
// JWT with its refresh family; a refresh token's family. A credential that
// has expired is answered expired and changes nothing.
func (b *backend) revokeOneByValue(ctx context.Context, req *logical.Request, cred string) (map[string]interface{}, error) {
	if contract.LooksLikeJWT(cred) {
		return b.revokeJWTByValue(ctx, req.Storage, cred)
	}
	parsed, perr := apikey.Parse(cred)
	if perr == nil && parsed.Prefix == refreshTokenPrefix {
		// Before the keys: a refresh token has the shape of an API key.
		// With no refresh token of that id it may still be one (a role
		// may choose kbrt as its key prefix).
		if res, err := b.revokeRefreshByValue(ctx, req.Storage, cred, parsed.ID); res != nil || err != nil {
			return res, err
		}
	}
	k, reason, _, err := keyByValue(ctx, req.Storage, cred)
	switch {
	case err != nil:
		return nil, err
	case reason == contract.ReasonNotFound && perr == nil && parsed.Prefix == refreshTokenPrefix:
		return revokeResult(kindRefreshToken, "", revokeNotFound), nil
	case reason != "":
		return revokeResult(secretTypeAPIKey, "", reason), nil
	case k.revoked():
		return revokeResult(secretTypeAPIKey, k.ID, revokeAlready), nil
	case !time.Now().Before(k.ExpiresAt):
		return revokeResult(secretTypeAPIKey, k.ID, revokeExpired), nil
	}
	if err := b.revoker.revokeKey(ctx, req.Storage, k.ID); err != nil {
		return nil, err
	}
	return revokeResult(secretTypeAPIKey, k.ID, revokeRevoked), nil
}

// revokeJWTByValue revokes a token this mount signed, whatever its issuer
// claim says (a signature by one of the mount's keys is what makes it
// ours), with its refresh family.
func (b *backend) revokeJWTByValue(ctx context.Context, s logical.Storage, token string) (map[string]interface{}, error) {
	st, err := b.signer.current(ctx, s, b.Logger())
	if err != nil {
		return nil, err
	}
	_, payload, err := jwtverify.VerifySignature(token, st.keys, 0)
	switch {
	case errors.Is(err, jwtverify.ErrUnknownKey), errors.Is(err, jwtverify.ErrAlgorithm), errors.Is(err, jwtverify.ErrSignature):
		return revokeResult(secretTypeJWT, "", revokeNotFound), nil // not signed by this mount
	case err != nil:
		return revokeResult(secretTypeJWT, "", revokeMalformed), nil
	}
	var c jwtverify.Claims
	if err := json.Unmarshal(payload, &c); err != nil || c.ID == "" || c.ExpiresAt == nil {
		return revokeResult(secretTypeJWT, "", revokeMalformed), nil
	}
	exp := c.ExpiresAt.Time
	if !time.Now().Before(contract.RevokedUntil(exp)) {
		// Nothing to do: past its exp and every verifier's leeway it
		// passes nowhere (within the leeway it still does, so it is
		// revoked), and its family's later tokens were not given.
		return revokeResult(secretTypeJWT, c.ID, revokeExpired), nil
	}
	changed, err := b.revokeTokenAndFamily(ctx, s, c.ID, exp)
	if err != nil {
		return nil, err
	}
	if !changed {
		return revokeResult(secretTypeJWT, c.ID, revokeAlready), nil
	}
	return revokeResult(secretTypeJWT, c.ID, revokeRevoked), nil
}

// revokeTokenAndFamily revokes a live token as revoking its lease does:
// with its refresh family (every live token of it, and its refresh tokens
// stop working) when it has one; and what was exchanged from it. changed
// says whether anything was not revoked already.
func (b *backend) revokeTokenAndFamily(ctx context.Context, s logical.Storage, jti string, exp time.Time) (changed bool, err error) {
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	was, err := s.Get(ctx, revokedJTIPrefix+jti)
	if err != nil {
		return false, fmt.Errorf("reading revoked jti: %w", err)
	}
	changed = was == nil
	link, err := getJSON[tokenFamily](ctx, s, tokenFamilyPrefix+jti)
	if err != nil {
		return false, err
	}
	if link != nil {
		f, err := getJSON[family](ctx, s, familyPrefix+link.Family)
		if err != nil {
			return false, err
		}
		if f != nil && f.RevokedAt.IsZero() {
			if err := b.revokeFamilyLocked(ctx, s, link.Family); err != nil {
				return false, err
			}
			changed = true
		}
	}
	return changed, b.revoker.revokeJTI(ctx, s, jti, exp)
}

// revokeRefreshByValue revokes the family of a refresh token given by value,
// as reuse detection does: every live token of it, and no refresh token of
// it works again. nil when no refresh token has the id.
func (b *backend) revokeRefreshByValue(ctx context.Context, s logical.Storage, token, id string) (map[string]interface{}, error) {
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	entry, err := getJSON[refreshEntry](ctx, s, refreshPrefix+id)
	if err != nil || entry == nil {
		return nil, err
	}
	hash := apikey.Hash(token)
	if subtle.ConstantTimeCompare(hash[:], entry.Hash) != 1 {
		return revokeResult(kindRefreshToken, "", revokeNotFound), nil
	}
	if !time.Now().Before(entry.ExpiresAt) {
		return revokeResult(kindRefreshToken, id, revokeExpired), nil
	}
	f, err := getJSON[family](ctx, s, familyPrefix+entry.Family)
	switch {
	case err != nil:
		return nil, err
	case f == nil:
		return revokeResult(kindRefreshToken, id, revokeNotFound), nil
	case !f.RevokedAt.IsZero():
		return revokeResult(kindRefreshToken, id, revokeAlready), nil
	}
	if err := b.revokeFamilyLocked(ctx, s, entry.Family); err != nil {
		return nil, err
	}
	b.Logger().Warn("refresh token revoked by value: family revoked", "family", entry.Family, "refresh_id", id)
	return revokeResult(kindRefreshToken, id, revokeRevoked), nil
}
