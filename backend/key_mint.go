package backend

import (
	"context"

	"github.com/hashicorp/vault/sdk/logical"
)

// Minting an API key, keys/<role>, one step after the other: the role's
// opening (under its lock), the approved request a redemption opens, the
// key narrowed to the role (narrow.go), approval, and the stored keyEntry and
// its answer.

// mintKey mints the key m asks for, narrowed to what its role allows; for
// a redemption the key the approved request stored; a pending approval
// request instead when m asks for scopes the role keeps for approval. The
// role's lock is held for reading from the suspension check to the key's
// write: a suspension waits for the mints under way, and no mint passes
// the check once it returned.
func (b *backend) mintKey(ctx context.Context, req *logical.Request, m keyMintRequest) (*logical.Response, error) {
	r, release, resp, err := b.openMint(ctx, req.Storage, mintOpening{role: m.role, locked: true, unsuspended: true})
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
		if m, err = storedKeyMint(m.role, a); err != nil {
			return logical.ErrorResponse(err.Error()), nil
		}
	}
	entry, needs, err := r.keyFor(m)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	ttl, warnings, err := b.mintTTL(m.ttl, r.TTL, r.MaxTTL, !r.Orphan, r, a)
	if err != nil {
		return nil, err
	}
	if resp, err := b.approvals.needsApproval(ctx, req, r, m.role, entry.Scopes, needs, m.approvalAsk, a, b.Logger()); resp != nil || err != nil {
		return resp, err
	}
	resp, err = b.issueKey(ctx, req, r, entry, ttl, a)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return b.approvals.redeemed(ctx, req.Storage, a, resp, b.Logger())
}
