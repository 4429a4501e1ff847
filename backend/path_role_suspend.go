package backend

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Role suspension costs the same however many keys the role has: the role
// carries it, not its keys. Verifiers learn it from a list, not from key
// records: suspendedRolePrefix holds one entry per suspended role, listed
// in every page of the key-record feed (as tenant ceilings are), and
// keybroker/verify reads the key's role's entry. A key is then refused
// while it is suspended on its own (its record) or its role is (the list);
// the two are undone apart.
//
// The role record's Suspended decides mints (under the role's lock); the
// entry decides verifications. Suspending writes the entry first and
// resuming deletes it last, so that a failure between the two writes
// leaves keys refused, never served; either call, repeated, writes both.
// A suspended role that is deleted keeps its entry, so its keys stay
// refused, and a role created again under its name starts suspended.
// roleSuspension is a suspended role's entry.
type roleSuspension struct {
	At time.Time `json:"at"`
}

func pathRoleSuspend(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "roles/" + framework.GenericNameRegex("name") + "/(?P<action>suspend|resume)$",
		Fields: map[string]*framework.FieldSchema{
			"name":   {Type: framework.TypeString, Description: "Name of the role.", Required: true},
			"action": {Type: framework.TypeString, Description: "suspend or resume."},
		},
		DisplayAttrs: pathAttrs("role"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("suspend-or-resume", "", b.pathRoleSuspend, answers(map[string]*framework.FieldSchema{
				"role":         out(framework.TypeString, "The role."),
				"suspended":    out(framework.TypeBool, "Whether the role is suspended now (its keys refused, no key mints)."),
				"suspended_at": out(framework.TypeTime, "When the role was suspended; only while it is."),
			})),
		},
		HelpSynopsis: "Suspend or resume every API key of a role.",
		HelpDescription: `Suspends every key of the role (and refuses key mints and rotations from it)
or resumes them, within the key-record feed's latency. The cost is the same
however many keys the role has: the role carries the suspension, and
verifiers refuse a key whose role is suspended. Keys suspended on their own
stay suspended when the role is resumed. Agent JWTs of the role are not
affected. A suspended role that is deleted stays suspended: its keys are
refused, and a role created again under its name starts suspended.`,
	}
}

func (b *backend) pathRoleSuspend(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, suspend := d.Get("name").(string), d.Get("action").(string) == "suspend"
	l := b.roleLocks.of(name)
	l.Lock()
	defer l.Unlock()
	defer b.roles.forget(name) // once written, under the lock (storedCache)
	r, err := getRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return logical.ErrorResponse("role %q does not exist", name), nil
	}
	if suspend {
		if !r.Suspended || r.SuspendedAt.IsZero() {
			r.SuspendedAt = time.Now().UTC().Truncate(time.Second)
		}
		r.Suspended = true
		if err := putJSON(ctx, req.Storage, suspendedRolePrefix+name, &roleSuspension{At: r.SuspendedAt}); err != nil {
			return nil, err
		}
		if err := putJSON(ctx, req.Storage, rolePrefix+name, r); err != nil {
			return nil, err
		}
	} else {
		r.Suspended, r.SuspendedAt = false, time.Time{}
		if err := putJSON(ctx, req.Storage, rolePrefix+name, r); err != nil {
			return nil, err
		}
		if err := req.Storage.Delete(ctx, suspendedRolePrefix+name); err != nil {
			return nil, fmt.Errorf("deleting the suspension of role %s: %w", name, err)
		}
	}
	b.keyRecords.add("") // verifiers read the suspended roles anew
	b.Logger().Info("role suspension", "role", name, "suspended", suspend, "entity_id", req.EntityID)
	data := map[string]interface{}{"role": name, "suspended": suspend}
	if suspend {
		data["suspended_at"] = r.SuspendedAt.Format(time.RFC3339)
	}
	return &logical.Response{Data: data}, nil
}

// roleSuspendedAt is when role name was suspended; zero when it is not.
func roleSuspendedAt(ctx context.Context, s logical.Storage, name string) (time.Time, error) {
	rs, err := getJSON[roleSuspension](ctx, s, suspendedRolePrefix+name)
	if err != nil || rs == nil {
		return time.Time{}, err
	}
	return rs.At, nil
}

// withRoleSuspension fills in whether k's role is suspended, for a read or
// a verification of k (it is not stored with the key).
func withRoleSuspension(ctx context.Context, s logical.Storage, k *keyEntry) error {
	at, err := roleSuspendedAt(ctx, s, k.Role)
	k.roleSuspendedAt = at
	return err
}

// suspendedRoles lists the suspended roles a reader of the key-record feed
// with filter f serves.
func suspendedRoles(ctx context.Context, s logical.Storage, f recordFilter) ([]string, error) {
	names, err := s.List(ctx, suspendedRolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing suspended roles: %w", err)
	}
	if len(f.roles) > 0 {
		names = slices.DeleteFunc(names, func(n string) bool { return !slices.Contains(f.roles, n) })
	}
	if names == nil {
		names = []string{}
	}
	return names, nil
}

// migrateRoleSuspensions writes the entry of each role suspended before
// roles carried their suspension (when it was written into each key), once:
// without it their keys would pass.
func (b *backend) migrateRoleSuspensions(ctx context.Context, s logical.Storage) error {
	const done = "suspended-roles-migrated"
	if e, err := s.Get(ctx, done); err != nil || e != nil {
		return err
	}
	names, err := s.List(ctx, rolePrefix)
	if err != nil {
		return fmt.Errorf("listing roles: %w", err)
	}
	for _, name := range names {
		r, err := getRole(ctx, s, name)
		if err != nil {
			return err
		}
		if r == nil || !r.Suspended {
			continue
		}
		at := r.SuspendedAt
		if at.IsZero() {
			at = time.Now().UTC().Truncate(time.Second)
		}
		if err := putJSON(ctx, s, suspendedRolePrefix+name, &roleSuspension{At: at}); err != nil {
			return err
		}
	}
	// The old version wrote a role's suspension into each key of it. Where
	// the role is still suspended, its entry (above) holds those keys. Where
	// it is not any more as a role (deleted, or deleted and made again, or
	// a resume whose walk failed half-way) the old version still refused
	// those keys and no others: each becomes suspended on its own, which is
	// exactly that, and which keys/<role>/id/<key_id>/resume undoes. One
	// walk, once, at the upgrade.
	ids, err := s.List(ctx, keyPrefix)
	if err != nil {
		return fmt.Errorf("listing keys: %w", err)
	}
	now := time.Now()
	for _, id := range ids {
		k, err := getKey(ctx, s, id)
		if err != nil {
			return err
		}
		if k == nil || k.LegacyRoleSuspendedAt.IsZero() || !k.SuspendedAt.IsZero() || k.revoked() || !now.Before(k.ExpiresAt) {
			continue
		}
		if e, err := s.Get(ctx, suspendedRolePrefix+k.Role); err != nil || e != nil {
			if err != nil {
				return fmt.Errorf("reading the suspension of role %s: %w", k.Role, err)
			}
			continue
		}
		b.Logger().Warn("key suspended with its role by an older version, the role no longer suspended: the key stays suspended, on its own", "key_id", k.ID, "role", k.Role)
		k.SuspendedAt = k.LegacyRoleSuspendedAt
		if err := b.keyRecords.put(ctx, s, k); err != nil {
			return err
		}
	}
	return s.Put(ctx, &logical.StorageEntry{Key: done, Value: []byte("1")})
}
