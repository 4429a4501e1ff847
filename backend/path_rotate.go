package backend

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathRotate is keybroker/rotate: an operator's rotation of the signing
// key, by default through the same lead as the periodic one.
func pathRotate(b *backend) *framework.Path {
	return &framework.Path{
		Pattern:      "rotate$",
		DisplayAttrs: pathAttrs("signing-key"),
		Fields: map[string]*framework.FieldSchema{
			"immediate": {
				Type:        framework.TypeBool,
				Description: "Sign with a new key at once, without next_key_lead. The cost: verifiers that cached the JWKS refuse tokens it signs until they refetch it (jose up to its 30s cooldown, jwx's jwk.Cache until its next refresh, 15m by default). For a key that must stop signing now.",
			},
			"drop_old_keys": {
				Type:        framework.TypeBool,
				Description: "With immediate: also remove every other key from the JWKS, so that tokens they signed stop verifying once verifiers refetch it. For a leaked signing key: every token minted before fails, and caching verifiers keep the old keys until their next refetch.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("rotate", "", b.pathRotateWrite, answers(map[string]*framework.FieldSchema{
				"kid":      out(framework.TypeString, "Key id of the new signing key, as in the JWK Set and the JWT header."),
				"alg":      out(framework.TypeString, "Algorithm of the new signing key: EdDSA, ES256 or RS256."),
				"signs_at": out(framework.TypeTime, "When the new key starts signing (RFC 3339): next_key_lead from its publication, now with immediate."),
			})),
		},
		HelpSynopsis: "Rotate the signing key: publish the next key, which signs next_key_lead later.",
		HelpDescription: `Publishes a new signing key of the configured algorithm in the JWKS; it
signs from signs_at, next_key_lead later, so verifiers that cache the JWKS
know it before its first token. Until then the current key signs. When a next
key is already published (by an earlier rotate, a change of
signing_algorithm or the periodic rotation), rotate answers with it and
changes nothing. The old key stops signing at signs_at and stays in the JWKS
for verification_ttl, so tokens it signed keep verifying until they expire.
Rotation also happens by itself every rotation_period, on the active node.

immediate=true signs with a new key at once: verifiers that cached the JWKS
refuse its tokens until they refetch. Add drop_old_keys=true when a signing
key leaked: every older key leaves the JWKS, so every token minted before
stops verifying.`,
	}
}

func (b *backend) pathRotateWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	how := takeover{immediate: d.Get("immediate").(bool), dropOld: d.Get("drop_old_keys").(bool), keepPending: true}
	if how.dropOld && !how.immediate {
		return logical.ErrorResponse("drop_old_keys needs immediate=true: the keys it drops would verify the tokens signed until the new key takes over"), nil
	}
	k, err := b.signer.rotate(ctx, req.Storage, time.Now(), b.Logger(), how)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{"kid": k.KID, "alg": k.Alg, "signs_at": k.signsFrom().UTC().Format(time.RFC3339Nano)}}, nil
}
