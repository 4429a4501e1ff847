package backend

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

const (
	secretTypeJWT = "jwt"
)

// grant is what one access token carries. A refresh token keeps its grant so
// the tokens it mints carry exactly the same.
type grant struct {
	Role      string   `json:"role"`
	Scopes    []string `json:"scopes"`
	Audiences []string `json:"audiences"`
	CIDRs     []string `json:"cidrs,omitempty"`
	Tenant    string   `json:"tenant,omitempty"`
	Subject   string   `json:"subject"`
	EntityID  string   `json:"entity_id,omitempty"`
	// JKT is the thumbprint of the key the tokens are bound to (DPoP);
	// a refresh keeps it.
	JKT string `json:"jkt,omitempty"`
	// AuthTime is when the caller authenticated to get the first token of
	// the grant: its mint. Refreshes keep it (RFC 9068 auth_time).
	AuthTime time.Time `json:"auth_time,omitzero"`
	// Act is who acts for Subject (an exchanged token, RFC 8693), the
	// current actor outermost.
	Act *jwtverify.Actor `json:"act,omitempty"`
	limits
}

func pathToken(b *backend) *framework.Path {
	return &framework.Path{
		Pattern:      "token/" + framework.GenericNameRegex("role"),
		Fields:       mintTokenFields(),
		DisplayAttrs: pathAttrs("token"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("mint", "", b.pathTokenMint, answers(merged(tokenAnswerFields(), pendingAnswerFields()))),
			// A read mints with the role's defaults, as database/creds
			// does, so Vault Agent's natural template works:
			// {{ with secret "keybroker/token/<role>" }}.
			logical.ReadOperation: operation(b.pathTokenMint, answers(merged(withoutFields(tokenAnswerFields(), "refresh_token"), pendingAnswerFields()))),
		},
		HelpSynopsis: "Mint a short-lived agent JWT from a role.",
		HelpDescription: `Returns a JWT (typ at+jwt) signed by the plugin's current key, with iss, sub,
aud, exp, iat, nbf, jti, client_id, auth_time, scope, role, tenant and cidr
claims (client_id: the caller's Vault entity id; auth_time: the first mint of
the token's refresh family). sub comes from
the caller's Vault identity as the role's subject setting says, never from the
request. The token is a Vault lease: revoking it, or the Vault token that asked
for it, puts its jti in keybroker/revocations until it expires. When the role
has a refresh_ttl, a refresh_token comes with it (see keybroker/token/refresh).

With dpop_jkt or dpop_jwk the token is DPoP-bound (RFC 9449): it carries
cnf.jkt, token_type is DPoP, and a verifier accepts it only with a proof
signed by that key for each request. A role with require_dpop mints only
bound tokens.

A read mints too, with the role's defaults (or the fields given as query
parameters), so a Vault Agent template {{ with secret "keybroker/token/<role>" }}
renders a token and re-renders it before it expires: read and update
capabilities on this path both grant minting.`,
	}
}

func mintTokenFields() map[string]*framework.FieldSchema {
	f := grantFields("token", "Default: the role's token_ttl. Capped at token_max_ttl with a warning.")
	f["audience"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "The one resource server the token is for (its aud, RFC 8707): one of the role's audiences. Default: the role's audience when it has only one; a role with several needs it named.",
	}
	for k, v := range dpopFields("token", "The token then carries cnf.jkt and token_type is DPoP.") {
		f[k] = v
	}
	f["approval_id"] = approvalIDField()
	return f
}

func secretJWT(b *backend) *framework.Secret {
	return &framework.Secret{
		Type: secretTypeJWT,
		Fields: map[string]*framework.FieldSchema{
			"token": {Type: framework.TypeString, Description: "The agent JWT."},
			"jti":   {Type: framework.TypeString, Description: "The token's unique id."},
		},
		Revoke: b.revokeJWTLease,
	}
}

// pathTokenMint mints a token from the role the path names, or redeems
// the approved request approval_id names.
func (b *backend) pathTokenMint(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	m, err := tokenMintRequestFrom(req, d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	return b.mintToken(ctx, req, m)
}

// tokenAnswerFields describe what a mint or a refresh of an agent JWT
// answers: issueToken's fields, and refresh_token.
func tokenAnswerFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"token":         secretOut("The agent JWT (typ at+jwt).", "Token"),
		"token_type":    out(framework.TypeString, "Bearer, or DPoP for a DPoP-bound token: the Authorization scheme to send it with."),
		"expires_in":    out(framework.TypeInt64, "Seconds until the token expires."),
		"expires_at":    out(framework.TypeTime, "When the token expires (its exp)."),
		"jti":           out(framework.TypeString, "The token's unique id, as revocations and budgets name it."),
		"sub":           out(framework.TypeString, "The token's sub, derived from the caller's Vault identity."),
		"role":          out(framework.TypeString, "Role the token was minted from."),
		"scopes":        out(framework.TypeStringSlice, "Scopes the token carries."),
		"audience":      out(framework.TypeStringSlice, "The token's aud values."),
		"refresh_token": secretOut("Refresh token for keybroker/token/refresh, usable once; only when the role has a refresh_ttl and the caller a Vault entity.", "Refresh token"),
	}
}

// dpopFields are a mint's fields that bind the credential to a key.
func dpopFields(noun, then string) map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"dpop_jkt": {
			Type:         framework.TypeString,
			Description:  "Bind the " + noun + " to the holder's key (DPoP, RFC 9449): the key's RFC 7638 SHA-256 thumbprint, base64url. " + then + " Verifiers accept it only with a proof signed by that key. Or give dpop_jwk.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "DPoP JKT"},
		},
		"dpop_jwk": {
			Type:         framework.TypeString,
			Description:  "Bind the " + noun + " to this public JWK (EC P-256 or P-384, Ed25519, or RSA of 2048 bits or more), as a JSON object or a string holding one (the CLI: dpop_jwk=@jwk.json); the plugin computes its thumbprint. Never send the private key: a JWK with \"d\" is refused.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "DPoP JWK", EditType: "textarea"},
		},
	}
}

// subject derives sub from the caller's Vault identity. A caller without an
// entity (a root token, say) gets a sub that says so.
func (b *backend) subject(req *logical.Request, how string) (string, error) {
	sub, err := b.rawSubject(req, how)
	if err != nil {
		return "", err
	}
	// It goes into headers and logs: no control characters, and no
	// spaces around it that a header reader would trim away.
	if err := validateText("the caller's subject", sub, 512); err != nil || strings.TrimSpace(sub) != sub || sub == "" {
		return "", fmt.Errorf("the caller's Vault identity gives subject %q, which cannot be a token's sub (empty, control characters, spaces around it, or over 512 characters)", sub)
	}
	return sub, nil
}

func (b *backend) rawSubject(req *logical.Request, how string) (string, error) {
	if req.EntityID == "" {
		return "no-entity:" + req.DisplayName, nil
	}
	if how == subjectEntityID {
		return req.EntityID, nil
	}
	ent, err := b.System().EntityInfo(req.EntityID)
	if err != nil {
		return "", fmt.Errorf("looking up the caller's entity: %w", err)
	}
	if ent == nil {
		return "", fmt.Errorf("the caller's entity %s was not found", req.EntityID)
	}
	if how == subjectEntityName {
		return ent.Name, nil
	}
	if len(ent.Aliases) != 1 {
		return "", fmt.Errorf("subject=alias_name needs an entity with exactly one alias; the caller's has %d (use entity_id or entity_name)", len(ent.Aliases))
	}
	return ent.Aliases[0].Name, nil
}

// revokeJWTLease runs when an access token's lease ends. At exp that is
// expiry; otherwise the token's family (when it has refresh tokens) is
// revoked with it, so a refresh token cannot bring a revoked grant back.
func (b *backend) revokeJWTLease(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	jti, _ := req.Secret.InternalData["jti"].(string)
	exp, err := internalUnix(req.Secret.InternalData["exp"])
	if jti == "" || err != nil {
		return nil, fmt.Errorf("lease has no jti or exp in its internal data")
	}
	if !time.Now().Before(exp) {
		return nil, nil // the lease ended with the token: expiry, not a revocation
	}
	if family, _ := req.Secret.InternalData["family"].(string); family != "" {
		b.refreshMu.Lock()
		defer b.refreshMu.Unlock()
		return nil, b.revokeFamilyLocked(ctx, req.Storage, family)
	}
	return nil, b.revoker.revokeJTI(ctx, req.Storage, jti, exp)
}

// internalUnix reads a Unix time from lease internal data, which comes back
// from Vault as a JSON number.
func internalUnix(v interface{}) (time.Time, error) {
	switch n := v.(type) {
	case int64:
		return time.Unix(n, 0), nil
	case float64:
		return time.Unix(int64(n), 0), nil
	case int:
		return time.Unix(int64(n), 0), nil
	}
	return time.Time{}, fmt.Errorf("not a unix time: %T", v)
}
