package backend

import (
	"context"
	"crypto/subtle"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
)

// Reasons a verification gives. A bad credential is an answer, not an error.
const (
	reasonOK                = "ok"
	reasonMalformed         = "malformed"
	reasonNotFound          = "not_found"
	reasonExpired           = "expired"
	reasonRevoked           = "revoked"
	reasonCIDRDenied        = "cidr_denied"
	reasonInsufficientScope = "insufficient_scope"
)

func pathVerify(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "verify$",
		Fields: map[string]*framework.FieldSchema{
			"key": {
				Type:        framework.TypeString,
				Description: "The API key to verify.",
				Required:    true,
			},
			"remote_addr": {
				Type:        framework.TypeString,
				Description: "IP address (optionally with port) the credential was presented from; checked against its bound_cidrs. A credential with bound_cidrs is denied when this is empty.",
			},
			"scopes": {
				Type:        framework.TypeCommaStringSlice,
				Description: "Scopes the credential must all carry.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathVerifyWrite},
		},
		HelpSynopsis: "Verify a credential.",
		HelpDescription: `Answers whether a credential is valid for a request from remote_addr that
needs the given scopes. An invalid credential is an answer (valid=false and a
reason: malformed, not_found, expired, revoked, cidr_denied or
insufficient_scope), not an error. An unknown key and a wrong secret for a
known key_id both answer not_found. When valid, the answer carries key_id,
role, scopes, tenant, expires_at and metadata.`,
	}
}

func (b *backend) pathVerifyWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := validateRequest(d); resp != nil {
		return resp, nil
	}
	key := d.Get("key").(string)
	if key == "" {
		return logical.ErrorResponse("key is required"), nil
	}
	addr, err := parseRemoteAddr(d.Get("remote_addr").(string))
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	required, err := validateScopes("scopes", d.Get("scopes").([]string))
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}

	parsed, err := apikey.Parse(key)
	if err != nil {
		return verifyAnswer(reasonMalformed), nil
	}
	k, err := b.getKey(ctx, req.Storage, parsed.ID)
	if err != nil {
		return nil, err
	}
	hash := apikey.Hash(key)
	if k == nil || subtle.ConstantTimeCompare(hash[:], k.Hash) != 1 {
		return verifyAnswer(reasonNotFound), nil
	}
	switch {
	case k.revoked():
		return verifyAnswer(reasonRevoked), nil
	case !time.Now().Before(k.ExpiresAt):
		return verifyAnswer(reasonExpired), nil
	case !cidrsAllow(k.BoundCIDRs, addr):
		return verifyAnswer(reasonCIDRDenied), nil
	case len(subset(required, k.Scopes)) > 0:
		return verifyAnswer(reasonInsufficientScope), nil
	}
	data := k.publicData()
	data["valid"] = true
	data["reason"] = reasonOK
	return &logical.Response{Data: data}, nil
}

func verifyAnswer(reason string) *logical.Response {
	return &logical.Response{Data: map[string]interface{}{"valid": false, "reason": reason}}
}
