package backend

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// A key as the plugin keeps it: its keyEntry, stored under keys/<key_id>,
// what reads may show of it, and a new key's storing and answer (the last
// step of keys/<role>).

// keyEntry is what storage holds for a minted key: a snapshot of what it may
// do, and the hash of the key, never the key.
type keyEntry struct {
	ID         string            `json:"key_id"`
	Hash       []byte            `json:"hash"`
	Name       string            `json:"name"`
	Role       string            `json:"role"`
	Scopes     []string          `json:"scopes"`
	BoundCIDRs []string          `json:"bound_cidrs,omitempty"`
	Tenant     string            `json:"tenant,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	Orphan     bool              `json:"orphan"`
	EntityID   string            `json:"entity_id,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	ExpiresAt  time.Time         `json:"expires_at"`
	RevokedAt  time.Time         `json:"revoked_at,omitzero"`
	// JKT binds the key to a key pair its holder keeps (DPoP): verifiers
	// accept it only with a proof signed by it.
	JKT string `json:"jkt,omitempty"`
	// Approval is the approval request the key was redeemed from; such a
	// key is never renewed past its approved lifetime.
	Approval string `json:"approval,omitempty"`
	// Suspension: refused while suspended on its own (SuspendedAt) or with
	// its role (roleSuspendedAt, read from the role's suspension for a
	// read or a verification, never stored with the key); the two are
	// undone apart, so resuming the role leaves a key suspended on its own
	// alone, and the other way. Keys stored by versions that wrote a
	// role's suspension into each key carry role_suspended_at
	// (LegacyRoleSuspendedAt): read once, by migrateRoleSuspensions, which
	// turns it into the role's own entry, then ignored.
	SuspendedAt           time.Time `json:"suspended_at,omitzero"`
	LegacyRoleSuspendedAt time.Time `json:"role_suspended_at,omitzero"`
	roleSuspendedAt       time.Time
	// Rotation: ReplacedBy is the successor's key_id; the key then expires
	// at the end of its grace. Replaces is the predecessor's. NotAfter
	// bounds renewals: a successor lives no longer than its predecessor's
	// max_ttl allowed.
	ReplacedBy string    `json:"replaced_by,omitempty"`
	Replaces   string    `json:"replaces,omitempty"`
	NotAfter   time.Time `json:"not_after,omitzero"`
	// Last use, as sidecars reported it (key-usage) to versions that kept
	// it here; now kept in shards (path_key_usage.go) and added to these
	// for reads only (withUsage).
	LastUsedAt   time.Time `json:"last_used_at,omitzero"`
	LastUsedFrom string    `json:"last_used_from,omitempty"`
	Uses         []keyUse  `json:"uses,omitempty"`
	limits
}

func (k *keyEntry) revoked() bool { return !k.RevokedAt.IsZero() }

func (k *keyEntry) suspended() bool { return !k.SuspendedAt.IsZero() || !k.roleSuspendedAt.IsZero() }

// suspendedBy says what holds a key suspended: "key", "role", or both.
func (k *keyEntry) suspendedBy() []string {
	var by []string
	if !k.SuspendedAt.IsZero() {
		by = append(by, "key")
	}
	if !k.roleSuspendedAt.IsZero() {
		by = append(by, "role")
	}
	return by
}

// publicData is what reads and verifications may show: never Hash.
func (k *keyEntry) publicData() map[string]interface{} {
	md := k.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return map[string]interface{}{
		"key_id":      k.ID,
		"name":        k.Name,
		"role":        k.Role,
		"scopes":      nonNil(k.Scopes),
		"bound_cidrs": nonNil(k.BoundCIDRs),
		"tenant":      k.Tenant,
		"metadata":    md,
		"expires_at":  k.ExpiresAt.UTC().Format(time.RFC3339),
		"dpop_jkt":    k.JKT,
	}
}

// lifecycleData adds what an operator's read shows of a key's life:
// suspension and rotation, where they apply.
func (k *keyEntry) lifecycleData(data map[string]interface{}) {
	if k.suspended() {
		at := k.SuspendedAt
		if at.IsZero() || (!k.roleSuspendedAt.IsZero() && k.roleSuspendedAt.Before(at)) {
			at = k.roleSuspendedAt
		}
		data["suspended_at"], data["suspended_by"] = at.UTC().Format(time.RFC3339), k.suspendedBy()
	}
	if k.ReplacedBy != "" {
		data["replaced_by"] = k.ReplacedBy
	}
	if k.Replaces != "" {
		data["replaces"] = k.Replaces
	}
}

// keyAnswerFields describe publicData; a mint answers all of them but
// metadata.
func keyAnswerFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"key_id":      out(framework.TypeString, "The key's public id: the 12 characters between the first and second '_' of the key."),
		"name":        out(framework.TypeString, "Human-readable name of the key."),
		"role":        out(framework.TypeString, "Role the key was minted from."),
		"scopes":      out(framework.TypeStringSlice, "Scopes the key carries."),
		"bound_cidrs": out(framework.TypeStringSlice, "CIDR blocks the key may be used from; empty: anywhere."),
		"tenant":      out(framework.TypeString, "Tenant the key belongs to; empty: none."),
		"metadata":    out(framework.TypeMap, "Metadata returned with every verification of the key: the key's and its role's."),
		"expires_at":  out(framework.TypeTime, "When the key expires."),
		"dpop_jkt":    out(framework.TypeString, "Thumbprint of the key pair the key is bound to (DPoP, RFC 9449); empty: a bearer key."),
	}
}

func getKey(ctx context.Context, s logical.Storage, id string) (*keyEntry, error) {
	return getJSON[keyEntry](ctx, s, apiKeyPath(id))
}

func putKey(ctx context.Context, s logical.Storage, k *keyEntry) error {
	return putJSON(ctx, s, apiKeyPath(k.ID), k)
}

// issueKey stores entry as a new key of role r, for the caller of req, for
// ttl (redeeming a, when not nil), and answers with the key.
func (b *backend) issueKey(ctx context.Context, req *logical.Request, r *role, entry *keyEntry, ttl time.Duration, a *approvalRequest) (*logical.Response, error) {
	now := time.Now().UTC().Truncate(time.Second)
	entry.EntityID, entry.CreatedAt, entry.ExpiresAt = req.EntityID, now, now.Add(ttl)
	if a != nil {
		entry.Approval = a.ID
	}
	key, err := b.keyIDs.create(ctx, req.Storage, r.KeyPrefix, entry)
	if err != nil {
		return nil, err
	}
	if err := putKey(ctx, req.Storage, entry); err != nil {
		return nil, err
	}
	b.keyRecords.stored(entry) // indexed: no snapshot reads it from storage
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
