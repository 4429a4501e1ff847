package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
)

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

func (b *backend) getKey(ctx context.Context, s logical.Storage, id string) (*keyEntry, error) {
	return getJSON[keyEntry](ctx, s, apiKeyPath(id))
}

func (b *backend) putKey(ctx context.Context, s logical.Storage, k *keyEntry) error {
	return putJSON(ctx, s, apiKeyPath(k.ID), k)
}

// createKey generates a key whose key_id is not yet in storage, and sets
// k's id and hash to it.
func (b *backend) createKey(ctx context.Context, s logical.Storage, prefix string, k *keyEntry) (string, error) {
	for attempt := 0; attempt < 3; attempt++ {
		key, id, err := apikey.Generate(nil, prefix)
		if err != nil {
			return "", fmt.Errorf("generating key: %w", err)
		}
		existing, err := s.Get(ctx, apiKeyPath(id))
		if err != nil {
			return "", fmt.Errorf("checking key_id: %w", err)
		}
		if existing == nil {
			h := apikey.Hash(key)
			k.ID, k.Hash = id, h[:]
			return key, nil
		}
	}
	// Three collisions in a row of ids stamped with the same second, each with
	// 41 random bits, mean the randomness is broken.
	return "", fmt.Errorf("generating key: key_id collided three times")
}

func pathKeys(b *backend) []*framework.Path {
	keyIDField := &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "The key's key_id: the 12 characters between the first and second '_' of the key.",
		Required:    true,
	}
	list, item := pathAttrs("api-keys"), pathAttrs("api-key")
	list.ItemType, item.ItemType = "API key", "API key"
	// The auditor's views across roles, apart in the OpenAPI document.
	listAll, itemAny := pathAttrs("api-keys-of-every-role"), pathAttrs("api-key-of-any-role")
	listAll.ItemType, itemAny.ItemType = "API key", "API key"
	minted := merged(keyAnswerFields(), echoed(limitFields()), map[string]*framework.FieldSchema{
		"key": secretOut("The API key. Returned once: only its hash is stored.", "API key"),
	})
	delete(minted, "metadata")
	read := merged(keyAnswerFields(), echoed(limitFields()), map[string]*framework.FieldSchema{
		"orphan":         out(framework.TypeBool, "Whether the key was minted from an orphan role: not a Vault lease."),
		"entity_id":      out(framework.TypeString, "Vault entity that minted the key; empty for a caller without one."),
		"created_at":     out(framework.TypeTime, "When the key was minted."),
		"revoked":        out(framework.TypeBool, "Whether the key was revoked."),
		"revoked_at":     out(framework.TypeTime, "When the key was revoked; only for a revoked key."),
		"suspended_at":   out(framework.TypeTime, "When the key was suspended; only while it is."),
		"suspended_by":   out(framework.TypeStringSlice, "What holds it suspended: key (itself), role (with its role's keys), or both; each is resumed apart."),
		"replaced_by":    out(framework.TypeString, "The successor's key_id, once the key was rotated; it works until expires_at, the end of its grace."),
		"replaces":       out(framework.TypeString, "The key_id of the key this one replaced (rotation)."),
		"last_used_at":   out(framework.TypeTime, "When a sidecar last let the key through, as sidecars report it (every usage_report_interval); absent: never."),
		"last_used_from": out(framework.TypeString, "The client address of that last use."),
		"uses":           out(framework.TypeSlice, "Requests let through per day (UTC), the last 30 days: day, count."),
	})
	roleField := &framework.FieldSchema{Type: framework.TypeString, Description: "The role the key was minted from.", Required: true}
	unusedFor := &framework.FieldSchema{
		Type:        framework.TypeDurationSecond,
		Description: "List only live keys not used for this long (never used, and minted at least this long ago, or last used this long ago), to find stale keys.",
	}
	listOp := operation(b.pathKeyList, listAnswer("key_ids of the keys in storage.", "For each key_id: its name, role and last_used_at (empty: never used)."))
	return []*framework.Path{
		{
			// Listed before keys/<role> so that "keys/id" is never a role.
			Pattern:      "keys/id/?$",
			Fields:       map[string]*framework.FieldSchema{"unused_for": unusedFor},
			DisplayAttrs: listAll,
			Operations:   map[logical.Operation]framework.OperationHandler{logical.ListOperation: listOp},
			HelpSynopsis: "List every role's API keys by key_id, with their name, role and last use.",
			HelpDescription: `Lists every key still in storage, of every role, revoked and expired ones
included until tidy removes them; with unused_for, only live keys not used
for that long. This is an auditor's view across roles: to grant one role's
keys, grant keys/<role>/id/ instead.`,
		},
		{
			Pattern:      "keys/id/" + framework.GenericNameRegex("key_id"),
			Fields:       map[string]*framework.FieldSchema{"key_id": keyIDField},
			DisplayAttrs: itemAny,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathKeyRead, answers(read)),
			},
			HelpSynopsis: "Read any role's API key's metadata (an auditor's view).",
			HelpDescription: `Returns what the key may do, when it expires and whether it is revoked;
never the key or its hash. It reads a key of any role: grant it to
auditors. Every change to a key (revoke, rotate, suspend, resume) is under
keys/<role>/id/<key_id>, so that a policy can grant one role's keys.`,
		},
		{
			Pattern:      "keys/" + framework.GenericNameRegex("role") + "/id/?$",
			Fields:       map[string]*framework.FieldSchema{"role": roleField, "unused_for": unusedFor},
			DisplayAttrs: list,
			Operations:   map[logical.Operation]framework.OperationHandler{logical.ListOperation: listOp},
			HelpSynopsis: "List a role's API keys by key_id, with their name and last use.",
			HelpDescription: `Lists the role's keys still in storage, revoked and expired ones included
until tidy removes them; with unused_for, only live keys not used for that
long.`,
		},
		{
			Pattern:      "keys/" + framework.GenericNameRegex("role") + "/id/" + framework.GenericNameRegex("key_id"),
			Fields:       map[string]*framework.FieldSchema{"role": roleField, "key_id": keyIDField},
			DisplayAttrs: item,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation:   operation(b.pathKeyRead, answers(read)),
				logical.DeleteOperation: operationAs("revoke", "", b.pathKeyRevoke, noContent()),
			},
			HelpSynopsis: "Read an API key's metadata, or revoke it.",
			HelpDescription: `Read returns what the key may do, when it expires and whether it is revoked;
never the key or its hash. Delete revokes the key at once and adds it to
keybroker/revocations; this is how keys minted from orphan roles are
revoked. A key of another role is answered as one that does not exist, so
a policy on keys/<role>/* reaches that role's keys and no others.`,
		},
		{
			Pattern:      "keys/" + framework.GenericNameRegex("role"),
			Fields:       mintKeyFields(),
			DisplayAttrs: item,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: operationAs("mint", "", b.pathKeyMint, answers(merged(minted, pendingAnswerFields()))),
			},
			HelpSynopsis: "Mint an API key from a role.",
			HelpDescription: `Returns the key once; only its hash is stored. Unless the role is an orphan
role, the key is a Vault lease: it is revoked by "vault lease revoke", by
revoking the token that minted it, or by expiry, and can be renewed up to the
role's max_ttl. With dpop_jkt or dpop_jwk the key is bound to its holder's
key pair (DPoP, RFC 9449): verifiers then accept it only with a proof.`,
		},
	}
}

// pathRole is the role a path names (keys/<role>/id/...), "" on a path
// that names none (keys/id/...).
func pathRole(d *framework.FieldData) string {
	if _, ok := d.Schema["role"]; !ok {
		return ""
	}
	return d.Get("role").(string)
}

// keyOfRole reads the key a path names (keyOf).
func (b *backend) keyOfRole(ctx context.Context, s logical.Storage, d *framework.FieldData) (k *keyEntry, resp *logical.Response, err error) {
	return b.keyOf(ctx, s, pathRole(d), d.Get("key_id").(string))
}

// keyOf reads key id: nil when there is none. Under a role (role not ""),
// a key of another role is answered as one that does not exist: a policy
// on keys/<role>/* must learn nothing of other roles' keys. resp is the
// 400 for a malformed key_id.
func (b *backend) keyOf(ctx context.Context, s logical.Storage, role, id string) (k *keyEntry, resp *logical.Response, err error) {
	if !apikey.ValidateID(id) {
		return nil, logical.ErrorResponse("%q is not a key_id (12 base62 characters)", id), nil
	}
	if k, err = b.getKey(ctx, s, id); err != nil || k == nil {
		return nil, nil, err
	}
	if role != "" && k.Role != role {
		return nil, nil, nil
	}
	return k, nil, nil
}

// noSuchKey is the 400 of a change to a key that keyOfRole did not find.
func noSuchKey(d *framework.FieldData) *logical.Response {
	return noSuchKeyIn(pathRole(d), d.Get("key_id").(string))
}

func noSuchKeyIn(role, id string) *logical.Response {
	if role != "" {
		return logical.ErrorResponse("key %s does not exist under role %q", id, role)
	}
	return logical.ErrorResponse("key %s does not exist", id)
}

func mintKeyFields() map[string]*framework.FieldSchema {
	f := grantFields("key", "Default: the role's ttl. Capped at the role's max_ttl with a warning.")
	f["name"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: fmt.Sprintf("Human-readable name of the key, shown in lists and verifications (1 to %d characters).", maxNameLength),
		Required:    true,
	}
	f["metadata"] = &framework.FieldSchema{
		Type:        framework.TypeKVPairs,
		Description: "Metadata returned with every verification of the key, in addition to the role's (keys may not repeat the role's).",
	}
	for k, v := range dpopFields("key", "The key is then sent with the DPoP scheme (Authorization: DPoP <key>) and a proof; alone, a leaked key is useless.") {
		f[k] = v
	}
	f["approval_id"] = approvalIDField()
	return f
}

// pathKeyMint mints a key from the role the path names, or redeems the
// approved request approval_id names.
func (b *backend) pathKeyMint(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	m, err := keyMintRequestFrom(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	return b.mintKey(ctx, req, m)
}

func (b *backend) pathKeyList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	unused := time.Duration(d.Get("unused_for").(int)) * time.Second
	if unused < 0 {
		return logical.ErrorResponse("unused_for must not be negative"), nil
	}
	ids, err := req.Storage.List(ctx, keyPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	role := pathRole(d)
	keys := make([]*keyEntry, 0, len(ids))
	for _, id := range ids {
		k, err := b.getKey(ctx, req.Storage, id)
		if err != nil {
			return nil, err
		}
		if k != nil && (role == "" || k.Role == role) {
			keys = append(keys, k) // not tidied between List and Get, nor another role's
		}
	}
	// Each shard of key use read once, for every listed key it holds.
	ids = ids[:0]
	for _, k := range keys {
		ids = append(ids, k.ID)
	}
	uses, err := b.usageOf(ctx, req.Storage, ids)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	listed := make([]string, 0, len(keys))
	info := make(map[string]interface{}, len(keys))
	for _, k := range keys {
		id := k.ID
		k.withUsage(uses[id])
		if unused > 0 && (k.revoked() || !now.Before(k.ExpiresAt) || !k.unusedFor(unused, now)) {
			continue
		}
		last := ""
		if !k.LastUsedAt.IsZero() {
			last = k.LastUsedAt.Format(time.RFC3339)
		}
		listed = append(listed, id)
		info[id] = map[string]interface{}{"name": k.Name, "role": k.Role, "last_used_at": last}
	}
	return logical.ListResponseWithInfo(listed, info), nil
}

func (b *backend) pathKeyRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	k, resp, err := b.keyOfRole(ctx, req.Storage, d)
	if k == nil {
		return resp, err // nil, nil: 404
	}
	if err := b.withRoleSuspension(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	uses, err := b.usageOf(ctx, req.Storage, []string{k.ID})
	if err != nil {
		return nil, err
	}
	k.withUsage(uses[k.ID])
	data := k.publicData()
	data["orphan"] = k.Orphan
	data["entity_id"] = k.EntityID
	data["created_at"] = k.CreatedAt.UTC().Format(time.RFC3339)
	data["revoked"] = k.revoked()
	k.limits.responseData(data)
	if k.revoked() {
		data["revoked_at"] = k.RevokedAt.UTC().Format(time.RFC3339)
	}
	k.lifecycleData(data)
	k.usageData(data)
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathKeyRevoke(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	// A key's role never changes, so the check holds when revokeKey runs.
	k, resp, err := b.keyOfRole(ctx, req.Storage, d)
	if k == nil && resp == nil && err == nil {
		resp = noSuchKey(d)
	}
	if k == nil {
		return resp, err
	}
	return nil, b.revokeKey(ctx, req.Storage, k.ID)
}
