package backend

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
)

const rolePrefix = "roles/"

// reservedRoleNames would collide with fixed paths under keys/ and token/.
var reservedRoleNames = map[string]bool{"id": true, "refresh": true}

// role is what an operator allows credentials minted from it to carry.
type role struct {
	Scopes        []string          `json:"scopes"`
	DefaultScopes []string          `json:"default_scopes,omitempty"` // nil: all of Scopes
	TTL           time.Duration     `json:"ttl"`
	MaxTTL        time.Duration     `json:"max_ttl"`
	BoundCIDRs    []string          `json:"bound_cidrs,omitempty"`
	Tenant        string            `json:"tenant,omitempty"`
	KeyPrefix     string            `json:"key_prefix"`
	Orphan        bool              `json:"orphan"`
	Metadata      map[string]string `json:"metadata,omitempty"`
}

func (r *role) defaultScopes() []string {
	if r.DefaultScopes == nil {
		return r.Scopes
	}
	return r.DefaultScopes
}

func (r *role) responseData() map[string]interface{} {
	md := r.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return map[string]interface{}{
		"scopes":         nonNil(r.Scopes),
		"default_scopes": nonNil(r.defaultScopes()),
		"ttl":            int64(r.TTL.Seconds()),
		"max_ttl":        int64(r.MaxTTL.Seconds()),
		"bound_cidrs":    nonNil(r.BoundCIDRs),
		"tenant":         r.Tenant,
		"key_prefix":     r.KeyPrefix,
		"orphan":         r.Orphan,
		"metadata":       md,
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func pathRoles(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "roles/?$",
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{Callback: b.pathRoleList},
			},
			HelpSynopsis:    "List keybroker roles.",
			HelpDescription: "Lists the names of all roles credentials can be minted from.",
		},
		{
			Pattern: "roles/" + framework.GenericNameRegex("name"),
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeString,
					Description: "Name of the role. Used in keybroker/keys/<name> and in lease ids.",
					Required:    true,
				},
				"scopes": {
					Type:        framework.TypeCommaStringSlice,
					Description: fmt.Sprintf("Scopes credentials minted from this role may carry (RFC 6749 scope tokens, at most %d).", maxScopes),
				},
				"default_scopes": {
					Type:        framework.TypeCommaStringSlice,
					Description: "Scopes granted when a mint request names none. Must be a subset of scopes. Default: all of scopes.",
				},
				"ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Default lifetime of credentials minted from this role. Default: the mount's default lease TTL.",
				},
				"max_ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Longest lifetime, including renewals, of credentials minted from this role. Default: the mount's max lease TTL.",
				},
				"bound_cidrs": {
					Type:        framework.TypeCommaStringSlice,
					Description: fmt.Sprintf("CIDR blocks (IPv4 or IPv6) the role's credentials may be used from. Empty: anywhere. At most %d.", maxCIDRs),
				},
				"tenant": {
					Type:        framework.TypeString,
					Description: "Tenant the role's credentials belong to; verifiers pass it upstream.",
				},
				"key_prefix": {
					Type:        framework.TypeString,
					Description: "Prefix of API keys minted from this role: 2 to 16 lowercase letters and digits, starting with a letter.",
					Default:     apikey.DefaultPrefix,
				},
				"orphan": {
					Type:        framework.TypeBool,
					Description: "If true, keys are not Vault leases: they outlive the token that minted them, expire at their expires_at and are revoked through keybroker/keys/id/<key_id>.",
				},
				"metadata": {
					Type:        framework.TypeKVPairs,
					Description: fmt.Sprintf("Metadata returned with every verification of the role's credentials (at most %d entries).", maxMetadataPairs),
				},
			},
			ExistenceCheck: b.roleExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: &framework.PathOperation{Callback: b.pathRoleWrite},
				logical.UpdateOperation: &framework.PathOperation{Callback: b.pathRoleWrite},
				logical.ReadOperation:   &framework.PathOperation{Callback: b.pathRoleRead},
				logical.DeleteOperation: &framework.PathOperation{Callback: b.pathRoleDelete},
			},
			HelpSynopsis: "Manage the roles credentials are minted from.",
			HelpDescription: `A role fixes what credentials minted from it may carry. Updating a role
changes only the fields given. Deleting a role does not revoke the keys minted
from it: they stay verifiable until they expire or are revoked (use
"vault lease revoke -prefix keybroker/keys/<role>"), and they can no longer
be renewed.`,
		},
	}
}

func (b *backend) getRole(ctx context.Context, s logical.Storage, name string) (*role, error) {
	return getJSON[role](ctx, s, rolePrefix+name)
}

func (b *backend) roleExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	r, err := b.getRole(ctx, req.Storage, d.Get("name").(string))
	return r != nil, err
}

func (b *backend) pathRoleList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathRoleRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	r, err := b.getRole(ctx, req.Storage, d.Get("name").(string))
	if err != nil || r == nil {
		return nil, err
	}
	return &logical.Response{Data: r.responseData()}, nil
}

func (b *backend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if err := req.Storage.Delete(ctx, rolePrefix+d.Get("name").(string)); err != nil {
		return nil, fmt.Errorf("deleting role: %w", err)
	}
	return nil, nil
}

func (b *backend) pathRoleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := validateRequest(d); resp != nil {
		return resp, nil
	}
	name := d.Get("name").(string)
	if reservedRoleNames[name] {
		return logical.ErrorResponse("role name %q is reserved: it is a fixed path under keys/ and token/", name), nil
	}
	r, err := b.getRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		r = &role{KeyPrefix: apikey.DefaultPrefix}
	}

	// Only the fields given change; the whole role is then checked as one.
	if v, ok := d.GetOk("scopes"); ok {
		r.Scopes = v.([]string)
	}
	if v, ok := d.GetOk("default_scopes"); ok {
		r.DefaultScopes = v.([]string)
	}
	if v, ok := d.GetOk("ttl"); ok {
		r.TTL = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("max_ttl"); ok {
		r.MaxTTL = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("bound_cidrs"); ok {
		r.BoundCIDRs = v.([]string)
	}
	if v, ok := d.GetOk("tenant"); ok {
		r.Tenant = v.(string)
	}
	if v, ok := d.GetOk("key_prefix"); ok {
		r.KeyPrefix = v.(string)
	}
	if v, ok := d.GetOk("orphan"); ok {
		r.Orphan = v.(bool)
	}
	if v, ok := d.GetOk("metadata"); ok {
		r.Metadata = v.(map[string]string)
	}

	if err := r.normalize(b.System().MaxLeaseTTL()); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}

	return nil, putJSON(ctx, req.Storage, rolePrefix+name, r)
}

// normalize validates the role as a whole and puts lists in canonical form.
func (r *role) normalize(mountMaxTTL time.Duration) error {
	var err error
	if r.Scopes, err = validateScopes("scopes", r.Scopes); err != nil {
		return err
	}
	if r.DefaultScopes != nil {
		if r.DefaultScopes, err = validateScopes("default_scopes", r.DefaultScopes); err != nil {
			return err
		}
		if missing := subset(r.DefaultScopes, r.Scopes); len(missing) > 0 {
			return fmt.Errorf("default_scopes %s are not in the role's scopes", strings.Join(missing, ", "))
		}
	}
	if r.MaxTTL > 0 && r.TTL > r.MaxTTL {
		return fmt.Errorf("ttl (%s) must not exceed max_ttl (%s)", r.TTL, r.MaxTTL)
	}
	if mountMaxTTL > 0 && r.MaxTTL > mountMaxTTL {
		return fmt.Errorf("max_ttl (%s) exceeds the mount's max lease TTL (%s)", r.MaxTTL, mountMaxTTL)
	}
	cidrs, err := parseCIDRs("bound_cidrs", r.BoundCIDRs)
	if err != nil {
		return err
	}
	r.BoundCIDRs = cidrStrings(cidrs)
	if len(r.BoundCIDRs) == 0 {
		r.BoundCIDRs = nil
	}
	if err := validateTenant(r.Tenant); err != nil {
		return err
	}
	if err := apikey.ValidatePrefix(r.KeyPrefix); err != nil {
		return err
	}
	return validateMetadata("metadata", r.Metadata)
}
