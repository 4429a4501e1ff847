package backend

import (
	"context"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Token exchange (RFC 8693): a caller authenticated to Vault acts for the
// subject of a keybroker token it was given. The new token keeps the
// subject's sub, names the caller in act (the earlier actors nested in it),
// and carries no more than the subject token had, the caller's role allows,
// and the actor token (when given) holds.

// Token type URIs of RFC 8693 section 3.
const (
	tokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	tokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
)

func pathExchange(b *backend) *framework.Path {
	f := grantFields("token", "Default: the role's token_ttl. Capped at token_max_ttl and at the subject token's expiry.")
	f["role"].Description = "Role the caller exchanges under: a role name (not a path), which must list the subject token's role in allowed_subject_roles."
	f["scopes"].Description = "Scopes for the new token: within the subject token's, the role's and the actor token's. Default: the subject token's that are also in the role's default_scopes (and the actor token's)."
	f["bound_cidrs"].Description = "CIDR blocks the new token may be used from, within the subject token's and the role's. Default: where both allow."
	delete(f, "budget") // a metered subject's budget is shared, never chosen
	f["audience"] = &framework.FieldSchema{Type: framework.TypeString, Description: "The new token's one aud: one of the subject token's audiences that the role also allows (an exchange never moves a token to another resource server). Default: the only such audience; with several, name one."}
	f["subject_token"] = &framework.FieldSchema{
		Type:         framework.TypeString,
		Description:  "The keybroker JWT of the subject to act for: valid, not revoked, not DPoP-bound, of a role in the role's allowed_subject_roles.",
		Required:     true,
		DisplayAttrs: &framework.DisplayAttributes{Name: "Subject token", Sensitive: true},
	}
	f["subject_token_type"] = &framework.FieldSchema{
		Type:          framework.TypeString,
		Description:   "RFC 8693 subject_token_type; when given, " + tokenTypeAccessToken + " or " + tokenTypeJWT + ".",
		AllowedValues: []interface{}{tokenTypeAccessToken, tokenTypeJWT},
	}
	f["actor_token"] = &framework.FieldSchema{
		Type:         framework.TypeString,
		Description:  "Optional keybroker JWT of the caller itself (its sub must be the caller's, under the role's subject setting): the new token's scopes are then also within its scopes.",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Actor token", Sensitive: true},
	}
	f["actor_token_type"] = &framework.FieldSchema{
		Type:          framework.TypeString,
		Description:   "RFC 8693 actor_token_type; when given, " + tokenTypeAccessToken + " or " + tokenTypeJWT + ".",
		AllowedValues: []interface{}{tokenTypeAccessToken, tokenTypeJWT},
	}
	f["requested_token_type"] = &framework.FieldSchema{
		Type:          framework.TypeString,
		Description:   "RFC 8693 requested_token_type; when given, " + tokenTypeAccessToken + ".",
		AllowedValues: []interface{}{tokenTypeAccessToken},
	}
	for k, v := range dpopFields("new token", "Bind it to the caller's own key: the subject's binding cannot pass to another holder.") {
		f[k] = v
	}
	answer := merged(tokenAnswerFields(), map[string]*framework.FieldSchema{
		"issued_token_type": out(framework.TypeString, "RFC 8693 issued_token_type: "+tokenTypeAccessToken+"."),
		"actors":            out(framework.TypeStringSlice, "The new token's delegation chain (its act claim), the caller first."),
	})
	delete(answer, "refresh_token") // exchanged tokens are not refreshed: exchange again
	return &framework.Path{
		Pattern:      "token/exchange$",
		Fields:       f,
		DisplayAttrs: pathAttrs("token"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("exchange", "", b.pathExchangeWrite, answers(answer)),
		},
		HelpSynopsis: "Exchange a keybroker token to act for its subject (RFC 8693).",
		HelpDescription: `The caller acts for the subject of subject_token: the new token's sub is the
subject's, its act claim names the caller (as the role's subject setting
derives it from the caller's Vault identity), with the subject token's own
act nested inside (RFC 8693 section 4.1), and its client_id is the caller's
entity. The role must list the subject token's role in
allowed_subject_roles, and the chain may be at most its max_delegation_depth
actors long, and an actor appears in it at most once: the caller's Vault
entity may be neither the subject's nor an actor's already in it, whatever
subject setting each role of the chain spelled them with (the plugin keeps
each exchanged token's chain as entities), and the sub this role derives for
the caller may not already be the chain's sub or an actor's (the token would
name it twice). The new token's scopes are
within the subject token's and the role's (and the actor token's), its one
audience is one of the subject token's that the role allows, its
bound_cidrs within both, and it expires no later than the subject token.
Each caller may hold up to 1000 live tokens exchanged from one subject
token, apart from other callers'; a refused exchange mints nothing.
A metered subject's budget is shared: the new token spends from the same
meter. Revoking a token revokes every token exchanged from it, through the
revocation feed. DPoP-bound subject tokens cannot be exchanged (the caller
cannot prove their key); the new token can be bound to the caller's key.
Exchanged tokens get no refresh token: exchange again.

role is a field, not part of the path: pin it in each agent's policy
(allowed_parameters = { "role" = ["<role>"], "*" = [] }), or the agent may
exchange under any role that delegates.`,
	}
}

func (b *backend) pathExchangeWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	m, err := exchangeRequestFrom(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	return b.exchange(ctx, req, m)
}
