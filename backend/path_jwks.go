package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// jwksMaxAge is the longest Cache-Control max-age of the JWKS, in seconds
// (config.jwksMaxAge lowers it under a short next_key_lead). Verifiers
// refetch on an unknown kid anyway, so a short value only costs requests.
const jwksMaxAge = 60

func pathJWKS(b *backend) []*framework.Path {
	issuer := map[string]*framework.FieldSchema{
		"issuer":   out(framework.TypeString, "iss of the mount's agent JWTs."),
		"jwks_uri": out(framework.TypeString, "URL of the JWK Set: <issuer>/jwks."),
	}
	return []*framework.Path{
		{
			Pattern:      contract.PathJWKS + "$",
			DisplayAttrs: pathAttrs("jwks"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathJWKSRead, rawJSONAnswer(map[string]*framework.FieldSchema{
					"keys": out(framework.TypeSlice, "The public keys, each a JWK with kty, kid, alg, use=sig and its public parameters (crv, x and y, or n and e)."),
				})),
			},
			HelpSynopsis: "The JWK Set that verifies agent JWTs (unauthenticated).",
			HelpDescription: `Returns, as a raw JSON JWK Set, the public keys of the current signing key,
of the next one (published next_key_lead before it signs) and of rotated-out
keys still within verification_ttl, each with kid, alg and use=sig. Needs no
Vault token, like an OIDC provider's jwks_uri. Cache-Control max-age is half
of next_key_lead, at most 60s.`,
		},
		{
			Pattern:      regexp.QuoteMeta(contract.PathOpenIDDiscovery) + "$",
			DisplayAttrs: pathAttrs("openid-configuration"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathDiscoveryRead, rawJSONAnswer(merged(issuer, map[string]*framework.FieldSchema{
					"id_token_signing_alg_values_supported": out(framework.TypeStringSlice, "Every algorithm in the JWK Set, the current signing algorithm first."),
				}))),
			},
			HelpSynopsis:    "Discovery document with issuer and jwks_uri (unauthenticated).",
			HelpDescription: "Returns issuer, jwks_uri and id_token_signing_alg_values_supported (every algorithm in the JWKS, the current one first) as raw JSON, so verifiers can be configured with the issuer alone.",
		},
		{
			Pattern:      `\.well-known/oauth-authorization-server$`,
			DisplayAttrs: pathAttrs("oauth-authorization-server-metadata"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathASMetadataRead, rawJSONAnswer(merged(issuer, map[string]*framework.FieldSchema{
					"access_token_signing_alg_values_supported": out(framework.TypeStringSlice, "Every algorithm in the JWK Set, the current signing algorithm first."),
					"dpop_signing_alg_values_supported":         out(framework.TypeStringSlice, "Algorithms accepted for DPoP proofs (RFC 9449)."),
					"response_types_supported":                  out(framework.TypeStringSlice, "Empty: tokens come from Vault requests, not from an authorization endpoint."),
					"grant_types_supported":                     out(framework.TypeStringSlice, "Empty: there is no token endpoint."),
					"token_endpoint_auth_methods_supported":     out(framework.TypeStringSlice, "Empty: there is no token endpoint."),
				}))),
			},
			HelpSynopsis: "OAuth 2.0 authorization server metadata, RFC 8414 (unauthenticated).",
			HelpDescription: `Returns issuer, jwks_uri, the signing algorithms of the JWKS and the DPoP
proof algorithms accepted (dpop_signing_alg_values_supported, RFC 9449) as
raw JSON. Tokens are minted by authenticated Vault requests
(keybroker/token/<role>), not at an OAuth endpoint: the document names no
authorization or token endpoint, and response_types_supported and
grant_types_supported are empty. Vault serves it under the mount
(<issuer>/.well-known/oauth-authorization-server), not at the host's root.`,
		},
	}
}

// rawJSONAnswer is the answer of a path that returns a raw JSON document
// (rawJSON), not Vault's envelope: fields are the document's top-level keys.
func rawJSONAnswer(fields map[string]*framework.FieldSchema) map[int][]framework.Response {
	return map[int][]framework.Response{http.StatusOK: {{Description: "The JSON document itself, not in Vault's response envelope.", MediaType: "application/json", Fields: fields}}}
}

// rawJSON answers body, which caches may keep for maxAge seconds.
func rawJSON(body []byte, maxAge int) *logical.Response {
	return &logical.Response{Data: map[string]interface{}{
		logical.HTTPStatusCode:         http.StatusOK,
		logical.HTTPRawBody:            body,
		logical.HTTPContentType:        "application/json",
		logical.HTTPCacheControlHeader: fmt.Sprintf("max-age=%d", maxAge),
	}}
}

func (b *backend) pathJWKSRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	st, err := b.signer.current(ctx, req.Storage, b.Logger())
	if err != nil {
		return nil, err
	}
	return rawJSON(st.jwks, st.maxAge), nil
}

func (b *backend) pathDiscoveryRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	return b.metadata(ctx, req, func(iss string, algs []string) map[string]interface{} {
		return map[string]interface{}{
			"issuer":                                iss,
			"jwks_uri":                              iss + "/jwks",
			"id_token_signing_alg_values_supported": algs,
		}
	})
}

// pathASMetadataRead answers RFC 8414. It tells the truth about what the
// mount is: an issuer with keys, whose tokens come from Vault requests. An
// OAuth client that finds no token endpoint stops there, rather than trying
// a flow nothing here serves.
func (b *backend) pathASMetadataRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	return b.metadata(ctx, req, func(iss string, algs []string) map[string]interface{} {
		return map[string]interface{}{
			"issuer":                                    iss,
			"jwks_uri":                                  iss + "/jwks",
			"response_types_supported":                  []string{},
			"grant_types_supported":                     []string{},
			"token_endpoint_auth_methods_supported":     []string{},
			"dpop_signing_alg_values_supported":         jwtverify.ProofAlgorithms(),
			"access_token_signing_alg_values_supported": algs,
		}
	})
}

// metadata renders a discovery document from the issuer and every
// algorithm a verifier may meet in the JWKS, the current one first: after a
// change of signing_algorithm, the new one is listed from when its key is
// published, and tokens signed with the old one still verify until
// verification_ttl.
func (b *backend) metadata(ctx context.Context, req *logical.Request, doc func(iss string, algs []string) map[string]interface{}) (*logical.Response, error) {
	iss, userErr, err := b.issuer(ctx, req, false)
	if userErr != nil || err != nil {
		return userErr, err
	}
	st, err := b.signer.current(ctx, req.Storage, b.Logger())
	if err != nil {
		return nil, err
	}
	algs := []string{st.alg}
	for _, k := range st.public {
		if !slices.Contains(algs, k.Alg) {
			algs = append(algs, k.Alg)
		}
	}
	body, err := json.Marshal(doc(iss, algs))
	if err != nil {
		return nil, fmt.Errorf("encoding metadata: %w", err)
	}
	return rawJSON(body, st.maxAge), nil
}
