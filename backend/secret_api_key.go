package backend

import (
	"context"
	"fmt"
	"net/http"
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
		return refuseRenewal("key %s was revoked and cannot be renewed", id)
	}
	r, err := getRole(ctx, req.Storage, k.Role)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return refuseRenewal("key %s cannot be renewed: its role %q was deleted", id, k.Role)
	}
	if k.ReplacedBy != "" {
		return refuseRenewal("key %s was rotated to %s and cannot be renewed; %s", id, k.ReplacedBy, graceEnd(k.ExpiresAt))
	}
	if k.Approval != "" {
		return refuseRenewal("key %s cannot be renewed: it was minted through approval request %s and lives only as long as approved", id, k.Approval)
	}
	if needs := subset(k.Scopes, subset(k.Scopes, r.ApprovalScopes)); len(needs) > 0 && k.Approval == "" {
		return refuseRenewal("key %s cannot be renewed: role %q now needs approval for scopes %s; mint through keybroker/approvals", id, k.Role, strings.Join(needs, ", "))
	}
	if r.NotRenewable {
		// Vault refuses to renew a lease minted non-renewable; this
		// covers keys minted before the role was changed.
		return refuseRenewal("key %s cannot be renewed: role %q has renewable=false", id, k.Role)
	}
	ttl, warnings, err := framework.CalculateTTL(b.System(), req.Secret.Increment, r.TTL, 0, r.MaxTTL, 0, req.Secret.IssueTime)
	if err != nil {
		return refuseRenewal("key %s cannot be renewed: %s", id, err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	if !k.NotAfter.IsZero() && now.Add(ttl).After(k.NotAfter) {
		// A successor lives no longer than its predecessor could have.
		if ttl = k.NotAfter.Sub(now); ttl <= 0 {
			return refuseRenewal("key %s cannot be renewed: it reached the end of its predecessor's max_ttl", id)
		}
		warnings = append(warnings, "ttl capped at the rotated key's max_ttl")
	}
	k.ExpiresAt = now.Add(ttl)
	if err := b.keyRecords.put(ctx, req.Storage, k); err != nil {
		return nil, err
	}
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

// refuseRenewal refuses a renewal with an error, not an error response:
// Vault's expiration manager formats what a Renew callback returns with
// "resp: %#v err: %w", so an error response reaches the operator as a
// dump of the whole logical.Response and a "%!w(<nil>)"; an error reaches
// them as its message. Coded 400, as Vault answers every failed renewal.
// Messages name the key by its id, never the key.
func refuseRenewal(format string, args ...any) (*logical.Response, error) {
	return nil, logical.CodedError(http.StatusBadRequest, fmt.Sprintf(format, args...))
}

// graceEnd says when a rotated key's grace ends, or ended.
func graceEnd(end time.Time) string {
	if time.Now().Before(end) {
		return "its grace ends at " + end.UTC().Format(time.RFC3339)
	}
	return "its grace ended at " + end.UTC().Format(time.RFC3339)
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
