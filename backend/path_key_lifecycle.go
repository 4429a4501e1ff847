package backend

import (
	"cmp"
	"context"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// An operator's tools for a key's life: rotation with a grace period, and
// suspension and resumption of a key (a role's: path_role_suspend.go).
// Revocation by value is in path_revoke.go.

// rotation is a rotated key's entry (rotationPath) until its grace ends, so
// that the active node revokes it then, through the feed.
type rotation struct {
	GraceEnds time.Time `json:"grace_ends"`
}

const defaultRotationGrace = 24 * time.Hour

func pathKeyLifecycle(b *backend) []*framework.Path {
	keyID := &framework.FieldSchema{Type: framework.TypeString, Description: "The key's key_id.", Required: true}
	roleField := &framework.FieldSchema{Type: framework.TypeString, Description: "The role the key was minted from: a key of another role is answered as one that does not exist.", Required: true}
	// Every change to a key is under keys/<role>/id/<key_id>, so that a
	// policy on keybroker/keys/<role>/* grants that role's keys and no
	// others.
	keyPath := "keys/" + framework.GenericNameRegex("role") + "/id/" + framework.GenericNameRegex("key_id")
	rotated := merged(keyAnswerFields(), echoed(limitFields()), map[string]*framework.FieldSchema{
		"key":        secretOut("The successor API key. Returned once; only its hash is stored.", "Key"),
		"replaces":   out(framework.TypeString, "The key_id of the key it replaces."),
		"grace_ends": out(framework.TypeTime, "When the replaced key stops working (and is revoked)."),
	})
	delete(rotated, "metadata")
	suspension := map[string]*framework.FieldSchema{
		"key_id":       out(framework.TypeString, "The key."),
		"suspended":    out(framework.TypeBool, "Whether it is suspended now."),
		"suspended_at": out(framework.TypeTime, "When it was suspended."),
		"suspended_by": out(framework.TypeStringSlice, "What holds it suspended: key (itself), role (with its role's keys), or both; each is resumed apart."),
	}
	return []*framework.Path{
		{
			Pattern: keyPath + "/rotate$",
			Fields: map[string]*framework.FieldSchema{
				"role":   roleField,
				"key_id": keyID,
				"grace": {
					Type:         framework.TypeDurationSecond,
					Description:  "How long the replaced key keeps working beside its successor; at most its remaining life. Default: 24h.",
					Default:      int(defaultRotationGrace.Seconds()),
					DisplayAttrs: &framework.DisplayAttributes{Value: "24h"},
				},
			},
			DisplayAttrs: pathAttrs("api-key"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: operationAs("rotate", "", b.pathKeyRotate, answers(rotated)),
			},
			HelpSynopsis: "Rotate an API key with a grace period.",
			HelpDescription: `Mints the key's successor (same role, name, scopes, bound CIDRs, tenant,
metadata, limits, DPoP binding, and the same expiry) and keeps the old key
working until grace ends, then revokes it through the revocation feed. The
successor spends from the old key's budget: rotating never resets spend.
Verifications of the old key answer replaced_by, and the sidecar tells its
clients (X-Keybroker-Key-Replaced-By, X-Keybroker-Key-Expires). A leased
key's successor is a lease of the token that rotated it (under this path,
so "vault lease revoke -prefix keybroker/keys/<role>" reaches it); it renews
up to the old key's max_ttl, never beyond. Update here mints keys of the
role: grant it as you grant keys/<role>.`,
		},
		{
			Pattern: keyPath + "/(?P<action>suspend|resume)$",
			Fields: map[string]*framework.FieldSchema{
				"role":   roleField,
				"key_id": keyID,
				"action": {Type: framework.TypeString, Description: "suspend or resume."},
			},
			DisplayAttrs: pathAttrs("api-key"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: operationAs("suspend-or-resume", "", b.pathKeySuspend, answers(suspension)),
			},
			HelpSynopsis: "Suspend or resume an API key.",
			HelpDescription: `A suspended key is refused (reason suspended) by every verifier until it is
resumed, within the key-record feed's latency; it is not revoked, and
resuming it makes it work again. A key suspended on its own and with its
role stays refused until both are resumed: resume takes off only the key's
own suspension.`,
		},
	}
}

// rotateRequest is a rotation (keys/<role>/id/<key_id>/rotate).
type rotateRequest struct {
	role, keyID string
	grace       time.Duration
}

func (b *backend) pathKeyRotate(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.rotateKey(ctx, req, rotateRequest{role: pathRole(d), keyID: d.Get("key_id").(string), grace: time.Duration(d.Get("grace").(int)) * time.Second})
}

// rotateKey mints the successor of the key m names, which keeps working
// until its grace ends.
func (b *backend) rotateKey(ctx context.Context, req *logical.Request, m rotateRequest) (*logical.Response, error) {
	if m.grace < 0 {
		return logical.ErrorResponse("grace must not be negative"), nil
	}
	// As a mint does: the role's lock for reading, so that no successor is
	// minted once the role's suspension has answered. A key's role never
	// changes, and keyOf refuses a key of another role than the path's.
	rl := b.roleLocks.of(m.role)
	rl.RLock()
	defer rl.RUnlock()
	unlock := b.revocations.lockOnce()
	defer unlock()
	now := time.Now().UTC().Truncate(time.Second)
	old, r, resp, err := rotatable(ctx, req.Storage, m, now)
	if old == nil {
		return resp, err
	}
	next := old.successor(r, req.EntityID, now, b.System().MaxLeaseTTL())
	key, err := b.keyIDs.create(ctx, req.Storage, r.KeyPrefix, next)
	if err != nil {
		return nil, err
	}
	graceEnds := minTime(now.Add(m.grace), old.ExpiresAt)
	old.ReplacedBy, old.ExpiresAt = next.ID, graceEnds
	root, err := b.storeRotation(ctx, req.Storage, old, next, graceEnds)
	if err != nil {
		return nil, err
	}
	unlock()
	// One meter for both, living as long as the successor.
	if root != "" {
		if err := b.meters.extendMeter(ctx, req.Storage, root, next.ExpiresAt); err != nil {
			return nil, err
		}
	}
	b.Logger().Info("key rotated", "key_id", old.ID, "successor", next.ID, "grace_ends", graceEnds)
	return b.rotated(key, old, next, r, graceEnds, now), nil
}

// rotatable reads the key m names and its role, nil with why when the key
// cannot be rotated now.
func rotatable(ctx context.Context, s logical.Storage, m rotateRequest, now time.Time) (*keyEntry, *role, *logical.Response, error) {
	old, resp, err := keyOf(ctx, s, m.role, m.keyID)
	if resp != nil || err != nil {
		return nil, nil, resp, err
	}
	id := m.keyID
	switch {
	case old == nil:
		return nil, nil, noSuchKeyIn(m.role, id), nil
	case old.revoked():
		return nil, nil, logical.ErrorResponse("key %s is revoked: mint a new key", id), nil
	case !now.Before(old.ExpiresAt):
		return nil, nil, logical.ErrorResponse("key %s has expired: mint a new key", id), nil
	case old.ReplacedBy != "":
		return nil, nil, logical.ErrorResponse("key %s was already rotated to %s; rotate that one", id, old.ReplacedBy), nil
	}
	r, err := getRole(ctx, s, old.Role)
	switch {
	case err != nil:
		return nil, nil, nil, err
	case r == nil:
		return nil, nil, logical.ErrorResponse("role %q of key %s was deleted: its keys cannot be rotated", old.Role, id), nil
	case r.Suspended:
		return nil, nil, logical.ErrorResponse("role %q is suspended: resume it to rotate its keys", old.Role), nil
	}
	if why := r.refusesSuccessor(old); why != "" {
		return nil, nil, logical.ErrorResponse("key %s cannot be rotated: %s; mint a new key from role %q instead", id, why, old.Role), nil
	}
	return old, r, nil, nil
}

// successor is old's successor as role r mints it for entity: the same
// grant and expiry, and no renewal past what old could have reached (the
// role's max_ttl, or the mount's max lease TTL, from old's mint). A
// suspended key's successor is as suspended. Its id is not yet set.
func (old *keyEntry) successor(r *role, entity string, now time.Time, mountMaxTTL time.Duration) *keyEntry {
	next := &keyEntry{Name: old.Name, Role: old.Role, Scopes: old.Scopes, BoundCIDRs: old.BoundCIDRs, Tenant: old.Tenant,
		Metadata: old.Metadata, Orphan: old.Orphan, JKT: old.JKT, limits: old.limits,
		EntityID: entity, CreatedAt: now, ExpiresAt: old.ExpiresAt, Replaces: old.ID, NotAfter: old.NotAfter,
		SuspendedAt: old.SuspendedAt}
	if maxTTL := cmp.Or(r.MaxTTL, mountMaxTTL); next.NotAfter.IsZero() && maxTTL > 0 {
		next.NotAfter = old.CreatedAt.Add(maxTTL)
	}
	return next
}

// storeRotation writes a rotation: the successor's meter linked to the old
// key's (before either key changes: a failure there leaves the old key as
// it was), both keys, and the rotation record the grace's end is revoked
// from. root is the shared meter, "" when the key is not metered.
func (b *backend) storeRotation(ctx context.Context, s logical.Storage, old, next *keyEntry, graceEnds time.Time) (root string, err error) {
	if old.Budget > 0 || old.Tenant != "" {
		if root, _, err = meterRoot(ctx, s, old.ID); err != nil {
			return "", err
		}
		if err := putJSON(ctx, s, meterPath(next.ID), &meter{Link: root, ExpiresAt: next.ExpiresAt}); err != nil {
			return "", err
		}
	}
	if err := b.keyRecords.put(ctx, s, next); err != nil {
		return "", err
	}
	if err := b.keyRecords.put(ctx, s, old); err != nil {
		return "", err
	}
	if err := putJSON(ctx, s, rotationPath(old.ID), rotation{GraceEnds: graceEnds}); err != nil {
		return "", err
	}
	return root, nil
}

// rotated is a rotation's answer: the successor once, and unless it is an
// orphan key its lease, renewable no further than its NotAfter.
func (b *backend) rotated(key string, old, next *keyEntry, r *role, graceEnds, now time.Time) *logical.Response {
	data := next.publicData()
	delete(data, "metadata")
	data["key"], data["replaces"], data["grace_ends"] = key, old.ID, graceEnds.Format(time.RFC3339)
	next.limits.responseData(data)
	if next.Orphan {
		return &logical.Response{Data: data}
	}
	resp := b.Secret(secretTypeAPIKey).Response(data, map[string]interface{}{"key_id": next.ID})
	resp.Secret.TTL = next.ExpiresAt.Sub(now)
	resp.Secret.Renewable = !r.NotRenewable && next.Approval == ""
	if !next.NotAfter.IsZero() {
		resp.Secret.MaxTTL = next.NotAfter.Sub(now)
	}
	return resp
}

// refusesSuccessor says why the role, as it is now, would not mint old's
// successor ("" when it would). A rotation copies the old key and asks no
// one: it must not carry what a mint from the role now needs approval,
// DPoP, or a scope, address or tenant the role no longer gives.
func (r *role) refusesSuccessor(old *keyEntry) string {
	if old.Approval != "" {
		return "it was minted by approval request " + old.Approval + ", which its requester alone redeemed, once"
	}
	if needs := subset(old.Scopes, subset(old.Scopes, r.ApprovalScopes)); len(needs) > 0 {
		return "scopes " + strings.Join(needs, ", ") + " now need approval under the role"
	}
	if missing := subset(old.Scopes, r.Scopes); len(missing) > 0 {
		return "the role no longer allows scopes " + strings.Join(missing, ", ")
	}
	if old.Tenant != r.Tenant {
		return "the role's tenant is no longer the key's"
	}
	if r.RequireDPoP && old.JKT == "" {
		return "the role now requires DPoP-bound keys"
	}
	if len(r.BoundCIDRs) > 0 {
		inner, err1 := parseCIDRs("bound_cidrs", old.BoundCIDRs)
		outer, err2 := parseCIDRs("bound_cidrs", r.BoundCIDRs)
		if err1 != nil || err2 != nil || len(inner) == 0 || len(narrows(inner, outer)) > 0 {
			return "its bound_cidrs are not within the role's"
		}
	}
	return ""
}

func (b *backend) pathKeySuspend(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id, suspend := d.Get("key_id").(string), d.Get("action").(string) == "suspend"
	b.revocations.lock()
	defer b.revocations.unlock()
	k, resp, err := keyOfRole(ctx, req.Storage, d)
	if resp != nil || err != nil {
		return resp, err
	}
	switch {
	case k == nil:
		return noSuchKey(d), nil
	case k.revoked():
		return logical.ErrorResponse("key %s is revoked: suspension would change nothing", id), nil
	}
	if err := withRoleSuspension(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	if suspend && k.SuspendedAt.IsZero() {
		k.SuspendedAt = time.Now().UTC().Truncate(time.Second)
	} else if !suspend {
		k.SuspendedAt = time.Time{} // a role's suspension stays
	}
	if err := b.keyRecords.put(ctx, req.Storage, k); err != nil {
		return nil, err
	}
	b.Logger().Info(map[bool]string{true: "key suspended", false: "key resumed"}[suspend], "key_id", id, "entity_id", req.EntityID)
	data := map[string]interface{}{"key_id": id, "suspended": k.suspended()}
	k.lifecycleData(data)
	delete(data, "replaced_by")
	delete(data, "replaces")
	return &logical.Response{Data: data}, nil
}
