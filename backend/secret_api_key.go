package backend

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const secretTypeAPIKey = "api_key"

// secretAPIKey makes every non-orphan key a Vault lease, so Vault's expiration
// manager revokes it on "vault lease revoke", on revocation of the token that
// minted it, and at the end of its TTL.
func secretAPIKey(b *backend) *framework.Secret {
	return &framework.Secret{
		Type: secretTypeAPIKey,
		Fields: map[string]*framework.FieldSchema{
			"key":    {Type: framework.TypeString, Description: "The API key. Returned once, when minted."},
			"key_id": {Type: framework.TypeString, Description: "The key's public id."},
		},
		Renew:  b.renewAPIKey,
		Revoke: b.revokeAPIKeyLease,
	}
}

func leaseKeyID(req *logical.Request) (string, error) {
	id, ok := req.Secret.InternalData["key_id"].(string)
	if !ok || id == "" {
		return "", fmt.Errorf("lease has no key_id in its internal data")
	}
	return id, nil
}

func (b *backend) renewAPIKey(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	id, err := leaseKeyID(req)
	if err != nil {
		return nil, err
	}
	// Read, changed and written under the lock revocations take, so that a
	// revocation meanwhile is never written over. Released before the
	// meter's lock is taken: budget changes take the two the other way.
	unlock := b.revocations.lockOnce()
	defer unlock()
	k, err := getKey(ctx, req.Storage, id)
	if err != nil {
		return nil, err
	}
	if k == nil || k.revoked() {
		return logical.ErrorResponse("key %s was revoked and cannot be renewed", id), nil
	}
	r, err := getRole(ctx, req.Storage, k.Role)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return logical.ErrorResponse("role %q was deleted; its keys cannot be renewed", k.Role), nil
	}
	if k.ReplacedBy != "" {
		return logical.ErrorResponse("key %s was rotated to %s: it ends with its grace, at %s", id, k.ReplacedBy, k.ExpiresAt.Format(time.RFC3339)), nil
	}
	if k.Approval != "" {
		return logical.ErrorResponse("key %s was minted through approval request %s and lives only as long as approved", id, k.Approval), nil
	}
	if needs := subset(k.Scopes, subset(k.Scopes, r.ApprovalScopes)); len(needs) > 0 && k.Approval == "" {
		return logical.ErrorResponse("role %q now needs approval for scopes %s: mint through keybroker/approvals", k.Role, strings.Join(needs, ", ")), nil
	}
	if r.NotRenewable {
		// Vault refuses to renew a lease minted non-renewable; this
		// covers keys minted before the role was changed.
		return logical.ErrorResponse("role %q has renewable=false; its keys cannot be renewed", k.Role), nil
	}
	ttl, warnings, err := framework.CalculateTTL(b.System(), req.Secret.Increment, r.TTL, 0, r.MaxTTL, 0, req.Secret.IssueTime)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	now := time.Now().UTC().Truncate(time.Second)
	if !k.NotAfter.IsZero() && now.Add(ttl).After(k.NotAfter) {
		// A successor lives no longer than its predecessor could have.
		if ttl = k.NotAfter.Sub(now); ttl <= 0 {
			return logical.ErrorResponse("key %s reached the end of its predecessor's max_ttl", id), nil
		}
		warnings = append(warnings, "ttl capped at the rotated key's max_ttl")
	}
	k.ExpiresAt = now.Add(ttl)
	if err := putKey(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	b.keyRecords.add(id)
	unlock()
	// The key's meter lives as long as the key: a renewed key keeps
	// spending from the same budget, neither refused nor reset.
	if err := b.meters.extendMeter(ctx, req.Storage, id, k.ExpiresAt); err != nil {
		return nil, err
	}
	resp := &logical.Response{Secret: req.Secret}
	resp.Secret.TTL = ttl
	resp.Secret.MaxTTL = r.MaxTTL
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}

// revokeAPIKeyLease is called by Vault when the lease ends for any reason. At
// the end of the TTL the key has expired on its own and is left for tidy;
// every other ending is a revocation.
func (b *backend) revokeAPIKeyLease(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	id, err := leaseKeyID(req)
	if err != nil {
		return nil, err
	}
	return nil, b.revoker.revokeKey(ctx, req.Storage, id)
}
