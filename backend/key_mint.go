package backend

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Minting an API key: from a keyMintRequest, through its role's opening
// (openMint, under the role's lock) and, for a redemption, its approval, to
// the stored keyEntry and the answer.

// mintKeyAsked is what keys/<role> does with m: it opens the role, then
// mints a key, or redeems the approved request m names for the key it
// stored. The role's lock is held for reading from the suspension check to
// the key's write: a suspension waits for the mints under way, and no mint
// passes the check once it returned.
func (b *backend) mintKeyAsked(ctx context.Context, req *logical.Request, m keyMintRequest) (*logical.Response, error) {
	r, release, resp, err := b.openMint(ctx, req.Storage, mintOpening{role: m.role, locked: true, unsuspended: true})
	if r == nil {
		return resp, err
	}
	defer release()
	if m.approvalID == "" {
		return b.mintKey(ctx, req, r, m)
	}
	return b.redeemApproval(ctx, req, r, m.role, m.approvalAsk, func(a *approvalRequest) (*logical.Response, error) {
		stored, err := storedKeyMint(m.role, a)
		if err != nil {
			return logical.ErrorResponse(err.Error()), nil
		}
		return b.mintKey(ctx, req, r, stored)
	})
}

// mintKey mints an API key from role r: what m asks, narrowed to what r
// allows; a pending approval request instead when m asks for scopes r
// keeps for approval and redeems none.
func (b *backend) mintKey(ctx context.Context, req *logical.Request, r *role, m keyMintRequest) (*logical.Response, error) {
	entry, err := r.keyFor(m)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	ttl, warnings, err := b.mintTTL(m.ttl, r.TTL, r.MaxTTL, r, m.approved)
	if err != nil {
		return nil, err
	}
	if resp, err := b.needsApproval(ctx, req, r, m.role, entry.Scopes, m.approvalAsk); resp != nil || err != nil {
		return resp, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	entry.EntityID, entry.CreatedAt, entry.ExpiresAt = req.EntityID, now, now.Add(ttl)
	if m.approved != nil {
		entry.Approval = m.approved.ID
	}
	key, err := b.createKey(ctx, req.Storage, r.KeyPrefix, entry)
	if err != nil {
		return nil, err
	}
	if err := b.putKey(ctx, req.Storage, entry); err != nil {
		return nil, err
	}
	b.keyChanges.add(entry.ID)
	resp := b.keyMinted(key, entry, r, ttl)
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}

// keyFor is the key m asks for, as role r allows it, without its id,
// owner and times. The error is the caller's mistake.
func (r *role) keyFor(m keyMintRequest) (*keyEntry, error) {
	n, err := r.narrow(m.grantAsk)
	if err != nil {
		return nil, err
	}
	jkt, err := r.binding(m.grantAsk, "credentials", "holder's")
	if err != nil {
		return nil, err
	}
	md, err := r.keyMetadata(m.role, m.metadata)
	if err != nil {
		return nil, err
	}
	return &keyEntry{Name: m.name, Role: m.role, Scopes: n.scopes, BoundCIDRs: n.cidrs, Tenant: r.Tenant,
		Metadata: md, Orphan: r.Orphan, JKT: jkt, limits: n.limits}, nil
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
