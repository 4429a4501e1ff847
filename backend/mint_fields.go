package backend

import (
	"maps"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// The path layer of the mints: each reads a request's fields into the
// typed request the domain takes (mint.go), and nothing past here sees
// *framework.FieldData.

// grantAskFrom reads the fields every mint path shares (grantFields,
// dpopFields); a path without budget (token/exchange) asks the role's.
func grantAskFrom(d *framework.FieldData) grantAsk {
	g := grantAsk{
		role:    d.Get("role").(string),
		ttl:     time.Duration(d.Get("ttl").(int)) * time.Second,
		dpopJKT: d.Get("dpop_jkt").(string),
		dpopJWK: d.Get("dpop_jwk").(string),
	}
	if v, ok := d.GetOk("scopes"); ok {
		g.scopes, g.scopesGiven = v.([]string), true
	}
	if v, ok := d.GetOk("bound_cidrs"); ok {
		g.cidrs = v.([]string)
	}
	if v, ok := d.GetOk("budget"); ok {
		budget := v.(int64)
		g.budget = &budget
	}
	return g
}

// approvalAskFrom is what a mint carries for approval: the fields as sent,
// and the approved request when it redeems one.
func approvalAskFrom(d *framework.FieldData, kind string, approved *approvalRequest) approvalAsk {
	fields := maps.Clone(d.Raw)
	delete(fields, "role")
	delete(fields, "approval_id")
	return approvalAsk{kind: kind, fields: fields, approvalID: d.Get("approval_id").(string), approved: approved}
}

func keyMintRequestFrom(d *framework.FieldData, approved *approvalRequest) keyMintRequest {
	m := keyMintRequest{grantAsk: grantAskFrom(d), approvalAsk: approvalAskFrom(d, approvalKindKey, approved), name: d.Get("name").(string)}
	if v, ok := d.GetOk("metadata"); ok {
		m.metadata = v.(map[string]string)
		if m.metadata == nil {
			m.metadata = map[string]string{}
		}
	}
	return m
}

func tokenMintRequestFrom(req *logical.Request, d *framework.FieldData, approved *approvalRequest) tokenMintRequest {
	return tokenMintRequest{grantAsk: grantAskFrom(d), approvalAsk: approvalAskFrom(d, approvalKindToken, approved),
		audience: d.Get("audience").(string), read: req != nil && req.Operation == logical.ReadOperation}
}

func exchangeRequestFrom(d *framework.FieldData) exchangeRequest {
	return exchangeRequest{
		grantAsk:           grantAskFrom(d),
		audience:           d.Get("audience").(string),
		subjectToken:       d.Get("subject_token").(string),
		subjectTokenType:   d.Get("subject_token_type").(string),
		actorToken:         d.Get("actor_token").(string),
		actorTokenType:     d.Get("actor_token_type").(string),
		requestedTokenType: d.Get("requested_token_type").(string),
	}
}

// storedFields are an approved request's stored fields as its mint path
// (schema) reads them: the redemption mints exactly what was approved.
func storedFields(roleName string, a *approvalRequest, schema map[string]*framework.FieldSchema) *framework.FieldData {
	raw := maps.Clone(a.Data)
	if raw == nil {
		raw = map[string]interface{}{}
	}
	raw["role"] = roleName
	return &framework.FieldData{Raw: raw, Schema: schema}
}

// storedKeyMint is the key mint an approved request stored.
func storedKeyMint(roleName string, a *approvalRequest) keyMintRequest {
	return keyMintRequestFrom(storedFields(roleName, a, mintKeyFields()), a)
}

// storedTokenMint is the token mint an approved request stored, redeemed
// by a read or not as read says.
func storedTokenMint(roleName string, a *approvalRequest, read bool) tokenMintRequest {
	m := tokenMintRequestFrom(nil, storedFields(roleName, a, mintTokenFields()), a)
	m.read = read
	return m
}
