package backend

import (
	"context"
	"fmt"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"
)

// Minting an agent JWT: from a tokenMintRequest and the role its path
// opened to the signed token, its meter and, where the role gives one, its
// refresh family.

// tokenOpening opens token/<role>: a role without audiences mints no
// token. Tokens do not wait for a role's suspension (it holds keys).
func tokenOpening(roleName string) mintOpening {
	return mintOpening{role: roleName, refuse: func(r *role) string {
		if len(r.Audiences) == 0 {
			return fmt.Sprintf("role %q has no audiences; set audiences on the role to mint tokens from it", roleName)
		}
		return ""
	}}
}

// mintTokenAsked is what token/<role> does with m: it opens the role,
// then mints a token, or redeems the approved request m names for the
// token it stored.
func (b *backend) mintTokenAsked(ctx context.Context, req *logical.Request, m tokenMintRequest) (*logical.Response, error) {
	r, release, resp, err := b.openMint(ctx, req.Storage, tokenOpening(m.role))
	if r == nil {
		return resp, err
	}
	defer release()
	if m.approvalID == "" {
		return b.mintToken(ctx, req, r, m)
	}
	return b.redeemApproval(ctx, req, r, m.role, m.approvalAsk, func(a *approvalRequest) (*logical.Response, error) {
		return b.mintToken(ctx, req, r, storedTokenMint(m.role, a, m.read))
	})
}

// mintToken mints an agent JWT from role r: what m asks, narrowed to what r
// allows; a pending approval request instead when m asks for scopes r
// keeps for approval and redeems none.
func (b *backend) mintToken(ctx context.Context, req *logical.Request, r *role, m tokenMintRequest) (*logical.Response, error) {
	g, err := b.tokenGrant(req, r, m)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	if resp, err := b.needsApproval(ctx, req, r, m.role, g.Scopes, m.approvalAsk); resp != nil || err != nil {
		return resp, err
	}
	ttl, warnings, err := b.mintTTL(m.ttl, r.TokenTTL, r.TokenMaxTTL, r, m.approved)
	if err != nil {
		return nil, err
	}
	resp, err := b.issueWithRefresh(ctx, req, r, g, ttl, mintsRefresh(req, r, m))
	if err != nil || resp.IsError() {
		return resp, err
	}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}

// tokenGrant is the grant m asks for, as role r allows it, for the
// caller of req. The error is the caller's mistake.
func (b *backend) tokenGrant(req *logical.Request, r *role, m tokenMintRequest) (grant, error) {
	g := grant{Role: m.role, Tenant: r.Tenant, EntityID: req.EntityID, AuthTime: time.Now().UTC().Truncate(time.Second)}
	n, err := r.narrow(m.grantAsk)
	if err != nil {
		return g, err
	}
	g.Scopes, g.CIDRs, g.limits = n.scopes, n.cidrs, n.limits
	aud, err := roleAudience(m.role, r, m.audience)
	if err != nil {
		return g, err
	}
	g.Audiences = []string{aud}
	if g.Subject, err = b.subject(req, r.Subject); err != nil {
		return g, err
	}
	g.JKT, err = r.binding(m.grantAsk, "tokens", "agent's")
	return g, err
}

// mintsRefresh says whether a mint starts a refresh family. Refresh needs
// an identity to bind the family to: callers without an entity (root,
// orphan tokens) all look alike. An approved token gets none: a refresh
// would outlive what was approved. A read (Vault Agent's template) gets
// none either: Agent mints again rather than refresh, so each render would
// leave a family behind.
func mintsRefresh(req *logical.Request, r *role, m tokenMintRequest) bool {
	return r.RefreshTTL > 0 && req.EntityID != "" && m.approved == nil && !m.read
}

// issueWithRefresh issues g's token and, when refresh, the first refresh
// token of a new family with it.
func (b *backend) issueWithRefresh(ctx context.Context, req *logical.Request, r *role, g grant, ttl time.Duration, refresh bool) (*logical.Response, error) {
	family := ""
	if refresh {
		var err error
		if family, err = uuid.GenerateUUID(); err != nil {
			return nil, fmt.Errorf("generating family id: %w", err)
		}
	}
	resp, err := b.issueToken(ctx, req, g, ttl, family, "")
	if err != nil || resp.IsError() {
		return resp, err
	}
	if !refresh {
		if r.RefreshTTL > 0 && req.EntityID == "" {
			resp.AddWarning("no refresh_token: the caller has no Vault entity (a root or orphan token), and refresh tokens are bound to one")
		}
		return resp, nil
	}
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	rt, err := b.newRefreshToken(ctx, req.Storage, g, family, resp.Secret.InternalData, r.RefreshTTL, r.familyMaxTTL())
	if err != nil {
		return nil, err
	}
	resp.Data["refresh_token"] = rt
	return resp, nil
}
