package backend

import (
	"context"

	"github.com/hashicorp/vault/sdk/logical"
)

// Minting an agent JWT, token/<role>, one step after the other: the role's
// opening, the approved request a redemption opens, the grant narrowed to
// the role (narrow.go), approval, and the signed token with its meter and,
// where the role gives one, its refresh family. issueToken is shared with
// refresh and exchange.

// mintToken mints the token m asks for, narrowed to what its role allows;
// for a redemption the token the approved request stored; a pending
// approval request instead when m asks for scopes the role keeps for
// approval. Tokens do not wait for a role's suspension (it holds keys).
func (b *backend) mintToken(ctx context.Context, req *logical.Request, m tokenMintRequest) (*logical.Response, error) {
	r, release, resp, err := b.openMint(ctx, req.Storage, mintOpening{role: m.role, audiences: true})
	if r == nil {
		return resp, err
	}
	defer release()
	a, unlock, resp, err := b.approvals.redeeming(ctx, req, r, m.role, m.approvalAsk)
	if resp != nil || err != nil {
		return resp, err
	}
	defer unlock()
	if a != nil {
		if m, err = storedTokenMint(m.role, a, m.read); err != nil {
			return logical.ErrorResponse(err.Error()), nil
		}
	}
	g, needs, err := b.tokenGrant(req, r, m)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	ttl, warnings, err := b.mintTTL(m.ttl, r.TokenTTL, r.TokenMaxTTL, true, r, a)
	if err != nil {
		return nil, err
	}
	if resp, err := b.approvals.needsApproval(ctx, req, r, m.role, g.Scopes, needs, m.approvalAsk, a, b.Logger()); resp != nil || err != nil {
		return resp, err
	}
	resp, err = b.issueWithRefresh(ctx, req, r, g, ttl, mintsRefresh(req, r, m, a))
	if err != nil || resp.IsError() {
		return resp, err
	}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return b.approvals.redeemed(ctx, req.Storage, a, resp, b.Logger())
}

// mintsRefresh says whether a mint starts a refresh family. Refresh needs
// an identity to bind the family to: callers without an entity (root,
// orphan tokens) all look alike. An approved token gets none: a refresh
// would outlive what was approved. A read (Vault Agent's template) gets
// none either: Agent mints again rather than refresh, so each render would
// leave a family behind.
func mintsRefresh(req *logical.Request, r *role, m tokenMintRequest, approved *approvalRequest) bool {
	return r.RefreshTTL > 0 && req.EntityID != "" && approved == nil && !m.read
}
