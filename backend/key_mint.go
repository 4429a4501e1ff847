package backend

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Minting an API key, keys/<role>, one step after the other: the role's
// opening (under its lock), the approved request a redemption opens, the
// key narrowed to the role (mint.go), approval, and the stored keyEntry and
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
	a, unlock, resp, err := b.redeeming(ctx, req, r, m.role, m.approvalAsk)
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
	ttl, warnings, err := b.mintTTL(m.ttl, r.TTL, r.MaxTTL, r, a)
	if err != nil {
		return nil, err
	}
	if resp, err := b.needsApproval(ctx, req, r, m.role, entry.Scopes, needs, m.approvalAsk, a); resp != nil || err != nil {
		return resp, err
	}
	resp, err = b.issueKey(ctx, req, r, entry, ttl, a)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return b.redeemed(ctx, req.Storage, a, resp, nil)
}

// issueKey stores entry as a new key of role r, for the caller of req, for
// ttl (redeeming a, when not nil), and answers with the key.
func (b *backend) issueKey(ctx context.Context, req *logical.Request, r *role, entry *keyEntry, ttl time.Duration, a *approvalRequest) (*logical.Response, error) {
	now := time.Now().UTC().Truncate(time.Second)
	entry.EntityID, entry.CreatedAt, entry.ExpiresAt = req.EntityID, now, now.Add(ttl)
	if a != nil {
		entry.Approval = a.ID
	}
	key, err := b.createKey(ctx, req.Storage, r.KeyPrefix, entry)
	if err != nil {
		return nil, err
	}
	if err := b.putKey(ctx, req.Storage, entry); err != nil {
		return nil, err
	}
	b.keyChanges.add(entry.ID)
	return b.keyMinted(key, entry, r, ttl), nil
}

// keyMinted is a mint's answer: the key once, what it may do, and unless
// the role is an orphan one its lease.
func (b *backend) keyMinted(key string, entry *keyEntry, r *role, ttl time.Duration) *logical.Response {
	data := entry.publicData()
	delete(data, "metadata")
	data["key"] = key
	data["expires_at"] = entry.ExpiresAt.Format(time.RFC3339)
	entry.limits.responseData(data)
	if r.Orphan {
		return &logical.Response{Data: data}
	}
	resp := b.Secret(secretTypeAPIKey).Response(data, map[string]interface{}{"key_id": entry.ID})
	resp.Secret.TTL = ttl
	resp.Secret.MaxTTL = r.MaxTTL
	resp.Secret.Renewable = !r.NotRenewable
	if entry.Approval != "" {
		// Approved for this long, not for renewals up to max_ttl.
		resp.Secret.MaxTTL, resp.Secret.Renewable = ttl, false
	}
	return resp
}
