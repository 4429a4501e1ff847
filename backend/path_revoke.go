package backend

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
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
				Description:  "An API key or agent JWT, in plaintext, to revoke: for when one is found in a public repository. It is not stored or logged.",
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
				"results": out(framework.TypeSlice, "One per credential given, in order: kind (api_key, jwt), id (key_id or jti, when it names one), result (revoked, already_revoked, expired, not_found, malformed). Never the credential."),
			})),
		},
		HelpSynopsis: "Revoke API keys or JWTs by their value.",
		HelpDescription: `Revokes each credential given (key, or keys) without knowing its id: an API
key whose secret matches its key_id's, or a JWT this plugin signed. The
answer names only ids and results; the values are HMAC'd in the audit log
like every string. A secret-scanning alert can call this path directly.`,
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

func (b *backend) revokeOneByValue(ctx context.Context, req *logical.Request, cred string) (map[string]interface{}, error) {
	if contract.LooksLikeJWT(cred) {
		c, reason, userErr, err := b.ownJWT(ctx, req, cred, "")
		switch {
		case err != nil:
			return nil, err
		case userErr != nil, reason == reasonRevoked && c == nil:
			// A revoked token's claims are not returned; say so without them.
			if reason == reasonRevoked {
				return map[string]interface{}{"kind": secretTypeJWT, "result": "already_revoked"}, nil
			}
			return map[string]interface{}{"kind": secretTypeJWT, "result": "not_found"}, nil
		case reason == reasonExpired:
			return map[string]interface{}{"kind": secretTypeJWT, "result": "expired"}, nil
		case reason != "":
			return map[string]interface{}{"kind": secretTypeJWT, "result": reasonMalformed}, nil
		}
		if err := b.revokeJTI(ctx, req.Storage, c.ID, c.ExpiresAt.Time); err != nil {
			return nil, err
		}
		return map[string]interface{}{"kind": secretTypeJWT, "id": c.ID, "result": "revoked"}, nil
	}
	k, reason, _, err := b.keyByValue(ctx, req.Storage, cred)
	switch {
	case err != nil:
		return nil, err
	case reason != "":
		return map[string]interface{}{"kind": secretTypeAPIKey, "result": reason}, nil
	case k.revoked():
		return map[string]interface{}{"kind": secretTypeAPIKey, "id": k.ID, "result": "already_revoked"}, nil
	case !time.Now().Before(k.ExpiresAt):
		return map[string]interface{}{"kind": secretTypeAPIKey, "id": k.ID, "result": "expired"}, nil
	}
	if err := b.revokeKey(ctx, req.Storage, k.ID); err != nil {
		return nil, err
	}
	return map[string]interface{}{"kind": secretTypeAPIKey, "id": k.ID, "result": "revoked"}, nil
}
