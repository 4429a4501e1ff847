package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
)

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
func keyOfRole(ctx context.Context, s logical.Storage, d *framework.FieldData) (k *keyEntry, resp *logical.Response, err error) {
	return keyOf(ctx, s, pathRole(d), d.Get("key_id").(string))
}

// keyOf reads key id: nil when there is none. Under a role (role not ""),
// a key of another role is answered as one that does not exist: a policy
// on keys/<role>/* must learn nothing of other roles' keys. resp is the
// 400 for a malformed key_id.
func keyOf(ctx context.Context, s logical.Storage, role, id string) (k *keyEntry, resp *logical.Response, err error) {
	if !apikey.ValidateID(id) {
		return nil, logical.ErrorResponse("%q is not a key_id (12 base62 characters)", id), nil
	}
	if k, err = getKey(ctx, s, id); err != nil || k == nil {
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
		k, err := getKey(ctx, req.Storage, id)
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
	uses, err := usageOf(ctx, req.Storage, ids)
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
	k, resp, err := keyOfRole(ctx, req.Storage, d)
	if k == nil {
		return resp, err // nil, nil: 404
	}
	if err := withRoleSuspension(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	uses, err := usageOf(ctx, req.Storage, []string{k.ID})
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
	k, resp, err := keyOfRole(ctx, req.Storage, d)
	if k == nil && resp == nil && err == nil {
		resp = noSuchKey(d)
	}
	if k == nil {
		return resp, err
	}
	return nil, b.revoker.revokeKey(ctx, req.Storage, k.ID)
}
