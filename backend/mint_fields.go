package backend

import (
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// The path layer of the mints: each reads a request's fields into the
// typed request the domain takes (mint.go), and checks what the fields say
// on their own (validate.go) once, here: the domain takes values already
// well formed and only holds them against the role. Nothing past here sees
// *framework.FieldData. An error is the caller's mistake.

// grantAskFrom reads the fields every mint path shares (grantFields,
// dpopFields); a path without budget (token/exchange) asks the role's.
// roleField: the role is a request field, not a path segment the router
// matched (token/exchange), and its name is checked first, as a path's is.
func grantAskFrom(d *framework.FieldData, roleField bool) (grantAsk, error) {
	g := grantAsk{role: d.Get("role").(string), ttl: time.Duration(d.Get("ttl").(int)) * time.Second}
	if roleField {
		if err := validateRoleName("role", g.role); err != nil {
			return g, err
		}
	}
	if v, ok := d.GetOk("scopes"); ok {
		scopes, err := validateScopes("scopes", v.([]string))
		if err != nil {
			return g, err
		}
		g.scopes, g.scopesGiven = scopes, true
	}
	if v, ok := d.GetOk("bound_cidrs"); ok && len(v.([]string)) > 0 {
		cidrs, err := parseCIDRs("bound_cidrs", v.([]string))
		if err != nil {
			return g, err
		}
		g.cidrs = cidrs
	}
	if v, ok := d.GetOk("budget"); ok {
		budget := v.(int64)
		g.budget = &budget
	}
	jkt, err := dpopBinding(d.Get("dpop_jkt").(string), d.Get("dpop_jwk").(string))
	g.dpopJKT = jkt
	return g, err
}

// approvalAskFrom is what a mint carries for approval: the fields as sent,
// and the approved request it redeems, if any.
func approvalAskFrom(d *framework.FieldData, kind string) approvalAsk {
	fields := maps.Clone(d.Raw)
	delete(fields, "role")
	delete(fields, "approval_id")
	return approvalAsk{kind: kind, fields: fields, approvalID: d.Get("approval_id").(string)}
}

// keyMintRequestFrom reads keys/<role>. A redemption's other fields are
// not read: it may give none (redeeming), and mints the stored ones.
func keyMintRequestFrom(d *framework.FieldData) (keyMintRequest, error) {
	m := keyMintRequest{approvalAsk: approvalAskFrom(d, approvalKindKey), name: d.Get("name").(string)}
	if m.approvalID != "" {
		m.role = d.Get("role").(string)
		return m, nil
	}
	if strings.TrimSpace(m.name) == "" {
		return m, fmt.Errorf("name is required")
	}
	if err := validateText("name", m.name, maxNameLength); err != nil {
		return m, err
	}
	var err error
	if m.grantAsk, err = grantAskFrom(d, false); err != nil {
		return m, err
	}
	if v, ok := d.GetOk("metadata"); ok {
		m.metadata = v.(map[string]string)
		if m.metadata == nil {
			m.metadata = map[string]string{}
		}
		return m, validateMetadata("metadata", m.metadata)
	}
	return m, nil
}

// tokenMintRequestFrom reads token/<role>; a redemption's other fields, as
// a key's, are not read.
func tokenMintRequestFrom(req *logical.Request, d *framework.FieldData) (tokenMintRequest, error) {
	m := tokenMintRequest{approvalAsk: approvalAskFrom(d, approvalKindToken), audience: d.Get("audience").(string)}
	m.read = req != nil && req.Operation == logical.ReadOperation
	if m.approvalID != "" {
		m.role = d.Get("role").(string)
		return m, nil
	}
	var err error
	if m.grantAsk, err = grantAskFrom(d, false); err != nil {
		return m, err
	}
	return m, nil
}

// exchangeRequestFrom reads token/exchange, whose role is a field.
func exchangeRequestFrom(d *framework.FieldData) (exchangeRequest, error) {
	g, err := grantAskFrom(d, true)
	return exchangeRequest{
		grantAsk:           g,
		audience:           d.Get("audience").(string),
		subjectToken:       d.Get("subject_token").(string),
		subjectTokenType:   d.Get("subject_token_type").(string),
		actorToken:         d.Get("actor_token").(string),
		actorTokenType:     d.Get("actor_token_type").(string),
		requestedTokenType: d.Get("requested_token_type").(string),
	}, err
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
func storedKeyMint(roleName string, a *approvalRequest) (keyMintRequest, error) {
	d := storedFields(roleName, a, mintKeyFields())
	return keyMintRequestFrom(d)
}

// storedTokenMint is the token mint an approved request stored, redeemed
// by a read or not as read says.
func storedTokenMint(roleName string, a *approvalRequest, read bool) (tokenMintRequest, error) {
	d := storedFields(roleName, a, mintTokenFields())
	m, err := tokenMintRequestFrom(nil, d)
	m.read = read
	return m, err
}
