package backend

import (
	"context"
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
	return approvalAsk{kind: kind, fields: fields, approved: approved}
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
		audience: d.Get("audience").(string), read: req.Operation == logical.ReadOperation}
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

// redeemFrom redeems the approval request d names (approval_id) on a mint
// path whose role r is open: the request's stored fields are read as this
// path reads a mint's, and minted with the approval.
func (b *backend) redeemFrom(ctx context.Context, req *logical.Request, d *framework.FieldData, r *role, kind string,
	mint func(d *framework.FieldData, approved *approvalRequest) (*logical.Response, error)) (*logical.Response, error) {
	for k := range d.Raw {
		if k != "approval_id" && k != "role" {
			return logical.ErrorResponse("with approval_id give no other field (%s): the approved request's fields apply", k), nil
		}
	}
	roleName := d.Get("role").(string)
	return b.redeemApproval(ctx, req, r, approvalRedemption{kind: kind, role: roleName, id: d.Get("approval_id").(string)},
		func(a *approvalRequest) (*logical.Response, error) {
			raw := maps.Clone(a.Data)
			if raw == nil {
				raw = map[string]interface{}{}
			}
			raw["role"] = roleName
			return mint(&framework.FieldData{Raw: raw, Schema: d.Schema}, a)
		})
}
