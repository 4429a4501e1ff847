package backend

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/jwtverify"
)

// maxApprovers bounds approvals_required.
const maxApprovers = 10

// role is what an operator allows credentials minted from it to carry.
type role struct {
	Scopes        []string      `json:"scopes"`
	DefaultScopes []string      `json:"default_scopes,omitempty"` // nil: all of Scopes
	TTL           time.Duration `json:"ttl"`
	MaxTTL        time.Duration `json:"max_ttl"`
	BoundCIDRs    []string      `json:"bound_cidrs,omitempty"`
	Tenant        string        `json:"tenant,omitempty"`
	KeyPrefix     string        `json:"key_prefix"`
	Orphan        bool          `json:"orphan"`
	// NotRenewable: the keys' leases cannot be renewed, so Vault Agent
	// mints a successor before the key expires instead of renewing it
	// until max_ttl (stored negated: roles written before it stay
	// renewable).
	NotRenewable bool              `json:"not_renewable,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`

	// Agent JWTs.
	Audiences   []string      `json:"audiences,omitempty"`
	TokenTTL    time.Duration `json:"token_ttl"`
	TokenMaxTTL time.Duration `json:"token_max_ttl"`
	Subject     string        `json:"subject"`
	RefreshTTL  time.Duration `json:"refresh_ttl"`
	// RefreshMaxTTL bounds a refresh family's whole life, from its first
	// mint: refreshing cannot keep a grant alive forever.
	RefreshMaxTTL time.Duration `json:"refresh_max_ttl,omitempty"`
	// RequireDPoP: every agent JWT of the role is bound to a key the agent
	// holds (RFC 9449); a mint without one is refused.
	RequireDPoP bool `json:"require_dpop,omitempty"`

	// Delegation (keybroker/token/exchange, RFC 8693): callers of this
	// role may act for the subjects of tokens of these roles, in chains
	// of at most MaxDelegationDepth actors.
	AllowedSubjectRoles []string `json:"allowed_subject_roles,omitempty"`
	MaxDelegationDepth  int      `json:"max_delegation_depth,omitempty"`

	// Approval (keybroker/approvals): a mint asking for one of these
	// scopes waits for ApprovalsRequired distinct approvers.
	ApprovalScopes    []string      `json:"approval_scopes,omitempty"`
	ApprovalsRequired int           `json:"approvals_required,omitempty"`
	ApprovalTTL       time.Duration `json:"approval_ttl,omitempty"`
	ApprovalRedeemTTL time.Duration `json:"approval_redeem_ttl,omitempty"`
	ApprovedMaxTTL    time.Duration `json:"approved_max_ttl,omitempty"`

	// Suspended (roles/<name>/suspend): its keys are suspended, and no key
	// is minted from it until it is resumed; verifiers learn it from the
	// role's entry under suspendedRolePrefix (path_role_suspend.go).
	Suspended   bool      `json:"suspended,omitempty"`
	SuspendedAt time.Time `json:"suspended_at,omitzero"`

	// Budgets and rate limits, copied into each credential.
	limits
}

// How a token's sub claim is derived from the caller's Vault identity.
const (
	subjectEntityID   = "entity_id"
	subjectEntityName = "entity_name"
	subjectAliasName  = "alias_name"
)

const (
	defaultTokenTTL    = 15 * time.Minute
	defaultTokenMaxTTL = time.Hour
	maxAudiences       = 16
	maxAudienceLength  = 256
)

// applyDefaults fills fields a role stored by an older version lacks.
func (r *role) applyDefaults() {
	if r.KeyPrefix == "" {
		r.KeyPrefix = apikey.DefaultPrefix
	}
	if r.TokenTTL == 0 {
		r.TokenTTL = defaultTokenTTL
	}
	if r.TokenMaxTTL == 0 {
		r.TokenMaxTTL = max(defaultTokenMaxTTL, r.TokenTTL)
	}
	if r.Subject == "" {
		r.Subject = subjectEntityID
	}
	r.limits.applyDefaults()
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
	data := map[string]interface{}{
		"scopes":          nonNil(r.Scopes),
		"default_scopes":  nonNil(r.defaultScopes()),
		"ttl":             int64(r.TTL.Seconds()),
		"max_ttl":         int64(r.MaxTTL.Seconds()),
		"bound_cidrs":     nonNil(r.BoundCIDRs),
		"tenant":          r.Tenant,
		"key_prefix":      r.KeyPrefix,
		"orphan":          r.Orphan,
		"renewable":       !r.NotRenewable,
		"metadata":        md,
		"audiences":       nonNil(r.Audiences),
		"token_ttl":       int64(r.TokenTTL.Seconds()),
		"token_max_ttl":   int64(r.TokenMaxTTL.Seconds()),
		"subject":         r.Subject,
		"refresh_ttl":     int64(r.RefreshTTL.Seconds()),
		"refresh_max_ttl": int64(r.familyMaxTTL().Seconds()),
		"require_dpop":    r.RequireDPoP,

		"allowed_subject_roles": nonNil(r.AllowedSubjectRoles),
		"max_delegation_depth":  r.delegationDepth(),
		"approval_scopes":       nonNil(r.ApprovalScopes),
		"approvals_required":    r.approvalsRequired(),
		"approval_ttl":          int64(r.approvalTTL().Seconds()),
		"approval_redeem_ttl":   int64(r.approvalRedeemTTL().Seconds()),
		"approved_max_ttl":      int64(r.approvedMaxTTL().Seconds()),
		"suspended":             r.Suspended,
	}
	r.limits.responseData(data)
	return data
}

// defaultRefreshMaxTTL is a family's longest life when the role sets none.
const defaultRefreshMaxTTL = 24 * time.Hour

// familyMaxTTL is the role's refresh_max_ttl, or the default.
func (r *role) familyMaxTTL() time.Duration {
	if r.RefreshMaxTTL > 0 {
		return r.RefreshMaxTTL
	}
	return max(defaultRefreshMaxTTL, r.RefreshTTL)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func pathRoles(b *backend) []*framework.Path {
	fields := map[string]*framework.FieldSchema{
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
			Type:         framework.TypeDurationSecond,
			Description:  "Default lifetime of credentials minted from this role. Default: the mount's default lease TTL.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "TTL"},
		},
		"max_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "Longest lifetime, including renewals, of credentials minted from this role. Default: the mount's max lease TTL.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Max TTL"},
		},
		"bound_cidrs": {
			Type:         framework.TypeCommaStringSlice,
			Description:  fmt.Sprintf("CIDR blocks (IPv4 or IPv6) the role's credentials may be used from. Empty: anywhere. At most %d.", maxCIDRs),
			DisplayAttrs: &framework.DisplayAttributes{Name: "Bound CIDRs"},
		},
		"tenant": {
			Type:        framework.TypeString,
			Description: "Tenant the role's credentials belong to; verifiers pass it upstream.",
		},
		"key_prefix": {
			Type:         framework.TypeString,
			Description:  "Prefix of API keys minted from this role: 2 to 16 lowercase letters and digits, starting with a letter.",
			Default:      apikey.DefaultPrefix,
			DisplayAttrs: &framework.DisplayAttributes{Value: apikey.DefaultPrefix},
		},
		"orphan": {
			Type:        framework.TypeBool,
			Description: "If true, keys are not Vault leases: they outlive the token that minted them, expire at their expires_at and are revoked through keybroker/keys/id/<key_id>.",
		},
		"renewable": {
			Type: framework.TypeBool,
			Description: "If false, the keys' leases cannot be renewed: Vault Agent then mints a successor at its template_config lease_renewal_threshold (default 0.9) of the TTL " +
				"while the old key stays valid until its own expiry, so consumers overlap instead of getting a new key in the last seconds of max_ttl.",
			Default:      true,
			DisplayAttrs: &framework.DisplayAttributes{Value: true},
		},
		"metadata": {
			Type:        framework.TypeKVPairs,
			Description: fmt.Sprintf("Metadata returned with every verification of the role's credentials (at most %d entries).", maxMetadataPairs),
		},
		"audiences": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Allowed aud values of agent JWTs minted from this role. A role needs at least one to mint tokens.",
		},
		"token_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "Default lifetime of agent JWTs. Default: 15m.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Token TTL", Value: "15m"},
		},
		"token_max_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "Longest lifetime of agent JWTs; must not exceed keybroker/config verification_ttl. Default: 1h.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Token max TTL", Value: "1h"},
		},
		"subject": {
			Type:          framework.TypeString,
			Description:   "How a JWT's sub is derived from the caller's Vault identity: entity_id (default), entity_name or alias_name. Never from the request.",
			AllowedValues: []interface{}{subjectEntityID, subjectEntityName, subjectAliasName},
		},
		"refresh_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "Lifetime of refresh tokens issued with agent JWTs; 0 (default) issues none. Only callers with a Vault entity get refresh tokens.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Refresh TTL"},
		},
		"require_dpop": {
			Type:         framework.TypeBool,
			Description:  "If true, every credential minted from the role, API key or agent JWT, is DPoP-bound (RFC 9449): the mint must give dpop_jkt or dpop_jwk. Setting it reaches existing refresh families (an unbound one can no longer refresh), not keys already minted.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Require DPoP"},
		},
		"refresh_max_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "Longest life of a refresh family, from its first mint; no refresh after it. Lowering it reaches existing families. Default: 24h; at least refresh_ttl.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Refresh max TTL", Value: "24h"},
		},
		"allowed_subject_roles": {
			Type:         framework.TypeCommaStringSlice,
			Description:  "Delegation (keybroker/token/exchange): roles whose tokens callers of this role may exchange, to act for their subjects. Default: none, so the role cannot act for anyone.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Allowed subject roles"},
		},
		"max_delegation_depth": {
			Type:         framework.TypeInt,
			Description:  fmt.Sprintf("Longest delegation chain (actors in act) of a token exchanged under this role, 1 to %d. Default: 1 (acting for a subject directly, not for an actor).", jwtverify.MaxActors),
			DisplayAttrs: &framework.DisplayAttributes{Name: "Max delegation depth", Value: 1},
		},
		"approval_scopes": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Scopes too risky to mint alone: a mint (key or token) asking for one returns a pending approval request instead of a credential (keybroker/approvals). Must be among scopes, and not in default_scopes.",
		},
		"approvals_required": {
			Type:         framework.TypeInt,
			Description:  fmt.Sprintf("Distinct approvers (Vault entities other than the requester) an approval request needs, 1 to %d. Default: 1.", maxApprovers),
			DisplayAttrs: &framework.DisplayAttributes{Value: 1},
		},
		"approval_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "How long an approval request waits for its approvers before it expires. Default: 1h.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Approval TTL", Value: "1h"},
		},
		"approval_redeem_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "How long the requester has, once the request is approved, to redeem it for the credential. Default: 15m.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Approval redeem TTL", Value: "15m"},
		},
		"approved_max_ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "Longest lifetime of a credential minted through an approval; its ttl is capped to it. Default: 1h.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Approved max TTL", Value: "1h"},
		},
	}
	for k, f := range limitFields() {
		fields[k] = f
	}
	list, item := pathAttrs("roles"), pathAttrs("role")
	list.Navigation, list.ItemType = true, "Role"
	item.ItemType = "Role"
	return []*framework.Path{
		{
			Pattern:      "roles/?$",
			DisplayAttrs: list,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: operation(b.pathRoleList, listAnswer("Names of the roles.", "")),
			},
			HelpSynopsis:    "List keybroker roles.",
			HelpDescription: "Lists the names of all roles credentials can be minted from.",
		},
		{
			Pattern:        "roles/" + framework.GenericNameRegex("name"),
			Fields:         fields,
			ExistenceCheck: b.roleExists,
			DisplayAttrs:   item,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: operation(b.pathRoleWrite, noContent()),
				logical.UpdateOperation: operation(b.pathRoleWrite, noContent()),
				// The role as it is, defaults filled in.
				logical.ReadOperation:   operation(b.pathRoleRead, answers(merged(echoed(fields, "name"), map[string]*framework.FieldSchema{"suspended": out(framework.TypeBool, "Whether the role is suspended (roles/<name>/suspend): its keys refused, no key mints.")}))),
				logical.DeleteOperation: operation(b.pathRoleDelete, noContent()),
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

// roleLocks are the locks of roles, one per name: role writes and
// suspensions take it, key mints hold it for reading from the suspension
// check to the key's write, so that no key is minted from a role once its
// suspension returns.
type roleLocks []*locksutil.LockEntry

// of is the lock of role name.
func (rl roleLocks) of(name string) *locksutil.LockEntry {
	return locksutil.LockForKey(rl, name)
}

// getRole reads role name from storage, for a writer, which changes it;
// readers read b.roles.get, which shares one in memory.
func getRole(ctx context.Context, s logical.Storage, name string) (*role, error) {
	r, err := getJSON[role](ctx, s, rolePath(name))
	if r != nil {
		r.applyDefaults()
	}
	return r, err
}

func (b *backend) roleExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	r, err := b.roles.get(ctx, req.Storage, d.Get("name").(string))
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
	r, err := b.roles.get(ctx, req.Storage, d.Get("name").(string))
	if err != nil || r == nil {
		return nil, err
	}
	return &logical.Response{Data: r.responseData()}, nil
}

func (b *backend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	l := b.roleLocks.of(d.Get("name").(string))
	l.Lock()
	defer l.Unlock()
	defer b.roles.forget(d.Get("name").(string)) // once deleted, under the lock
	if err := req.Storage.Delete(ctx, rolePath(d.Get("name").(string))); err != nil {
		return nil, fmt.Errorf("deleting role: %w", err)
	}
	return nil, nil
}

func (b *backend) pathRoleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := validateRoleName("name", name); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	l := b.roleLocks.of(name)
	l.Lock()
	defer l.Unlock()
	// Dropped once written, under the lock: the next read reads storage
	// (what is stored, through getRole, is what a read must see).
	defer b.roles.forget(name)
	r, err := b.roleToWrite(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	// Only the fields given change; the whole role is then checked as one.
	for field, set := range roleFieldSetters {
		if v, ok := d.GetOk(field); ok {
			set(r, v)
		}
	}
	r.limits.setFromRequest(d)
	return b.saveRole(ctx, req.Storage, name, r)
}

// roleToWrite is the role a write changes: as stored, or a new one. A new
// role of a name whose role was deleted while suspended starts suspended:
// its keys stay refused, and so do this role's until it is resumed (a read
// shows suspended).
func (b *backend) roleToWrite(ctx context.Context, s logical.Storage, name string) (*role, error) {
	r, err := getRole(ctx, s, name)
	if err != nil || r != nil {
		return r, err
	}
	r = &role{}
	if r.SuspendedAt, err = roleSuspendedAt(ctx, s, name); err != nil {
		return nil, err
	}
	if r.Suspended = !r.SuspendedAt.IsZero(); r.Suspended {
		b.Logger().Warn("a role deleted while suspended was created again and starts suspended: resume it with roles/<name>/resume", "role", name)
	}
	return r, nil
}

// saveRole checks role r as a whole, with its defaults, against the mount
// and keybroker/config, and stores it. resp is the operator's mistake.
func (b *backend) saveRole(ctx context.Context, s logical.Storage, name string, r *role) (*logical.Response, error) {
	if r.RefreshMaxTTL < 0 || (r.RefreshTTL > 0 && r.familyMaxTTL() < r.RefreshTTL) {
		return logical.ErrorResponse("refresh_max_ttl (%s) must be at least refresh_ttl (%s)", r.familyMaxTTL(), r.RefreshTTL), nil
	}
	r.applyDefaults()
	if err := r.normalize(b.System().MaxLeaseTTL()); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	cfg, err := b.configs.get(ctx, s, "")
	if err != nil {
		return nil, err
	}
	if r.TokenMaxTTL > cfg.VerificationTTL {
		return logical.ErrorResponse("token_max_ttl (%s) exceeds keybroker/config verification_ttl (%s): tokens would outlive the keys that verify them; raise verification_ttl first",
			r.TokenMaxTTL, cfg.VerificationTTL), nil
	}
	return nil, putJSON(ctx, s, rolePath(name), r)
}

// seconds is a TypeDurationSecond field's value.
func seconds(v interface{}) time.Duration { return time.Duration(v.(int)) * time.Second }

// roleFieldSetters set, for each field of roles/<name> but the limits
// (limits.setFromRequest), the role's value from the request's.
var roleFieldSetters = map[string]func(r *role, v interface{}){
	"scopes":                func(r *role, v interface{}) { r.Scopes = v.([]string) },
	"default_scopes":        func(r *role, v interface{}) { r.DefaultScopes = v.([]string) },
	"ttl":                   func(r *role, v interface{}) { r.TTL = seconds(v) },
	"max_ttl":               func(r *role, v interface{}) { r.MaxTTL = seconds(v) },
	"bound_cidrs":           func(r *role, v interface{}) { r.BoundCIDRs = v.([]string) },
	"tenant":                func(r *role, v interface{}) { r.Tenant = v.(string) },
	"key_prefix":            func(r *role, v interface{}) { r.KeyPrefix = v.(string) },
	"orphan":                func(r *role, v interface{}) { r.Orphan = v.(bool) },
	"renewable":             func(r *role, v interface{}) { r.NotRenewable = !v.(bool) },
	"metadata":              func(r *role, v interface{}) { r.Metadata = v.(map[string]string) },
	"audiences":             func(r *role, v interface{}) { r.Audiences = v.([]string) },
	"token_ttl":             func(r *role, v interface{}) { r.TokenTTL = seconds(v) },
	"token_max_ttl":         func(r *role, v interface{}) { r.TokenMaxTTL = seconds(v) },
	"subject":               func(r *role, v interface{}) { r.Subject = v.(string) },
	"refresh_ttl":           func(r *role, v interface{}) { r.RefreshTTL = seconds(v) },
	"require_dpop":          func(r *role, v interface{}) { r.RequireDPoP = v.(bool) },
	"refresh_max_ttl":       func(r *role, v interface{}) { r.RefreshMaxTTL = seconds(v) },
	"allowed_subject_roles": func(r *role, v interface{}) { r.AllowedSubjectRoles = v.([]string) },
	"max_delegation_depth":  func(r *role, v interface{}) { r.MaxDelegationDepth = v.(int) },
	"approval_scopes":       func(r *role, v interface{}) { r.ApprovalScopes = v.([]string) },
	"approvals_required":    func(r *role, v interface{}) { r.ApprovalsRequired = v.(int) },
	"approval_ttl":          func(r *role, v interface{}) { r.ApprovalTTL = seconds(v) },
	"approval_redeem_ttl":   func(r *role, v interface{}) { r.ApprovalRedeemTTL = seconds(v) },
	"approved_max_ttl":      func(r *role, v interface{}) { r.ApprovedMaxTTL = seconds(v) },
}

// grantFields are the request fields of every path that mints a credential
// from a role; noun ("key", "token") and ttlDefault fill in the help.
func grantFields(noun, ttlDefault string) map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"role": {
			Type:        framework.TypeString,
			Description: "Role to mint the " + noun + " from.",
			Required:    true,
		},
		"scopes": {
			Type:        framework.TypeCommaStringSlice,
			Description: "Scopes for the " + noun + "; must be a subset of the role's scopes. Default: the role's default_scopes.",
		},
		"ttl": {
			Type:         framework.TypeDurationSecond,
			Description:  "Lifetime of the " + noun + ". " + ttlDefault,
			DisplayAttrs: &framework.DisplayAttributes{Name: "TTL"},
		},
		"bound_cidrs": {
			Type:         framework.TypeCommaStringSlice,
			Description:  "CIDR blocks the " + noun + " may be used from; each must lie within the role's bound_cidrs. Default: the role's.",
			DisplayAttrs: &framework.DisplayAttributes{Name: "Bound CIDRs"},
		},
		"budget": {
			Type:        framework.TypeInt64,
			Description: "Units the " + noun + " may spend per budget_period; at most the role's budget (any, when the role has none). Default: the role's.",
		},
	}
}

// normalize validates the role as a whole and puts lists in canonical form.
func (r *role) normalize(mountMaxTTL time.Duration) error {
	if err := r.normalizeKeys(mountMaxTTL); err != nil {
		return err
	}
	if err := r.normalizeTokens(mountMaxTTL); err != nil {
		return err
	}
	if r.Orphan && r.NotRenewable {
		return fmt.Errorf("renewable=false means nothing with orphan=true: orphan keys have no lease to renew")
	}
	if err := r.normalizeDelegation(); err != nil {
		return err
	}
	if err := r.normalizeApproval(); err != nil {
		return err
	}
	return r.limits.normalize()
}

// normalizeKeys checks what every credential of the role carries: scopes,
// lifetimes, CIDRs, tenant, key prefix and metadata.
func (r *role) normalizeKeys(mountMaxTTL time.Duration) error {
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

// normalizeTokens checks what agent JWTs of the role carry: audiences,
// lifetimes and how sub is derived.
func (r *role) normalizeTokens(mountMaxTTL time.Duration) error {
	if len(r.Audiences) > maxAudiences {
		return fmt.Errorf("audiences: at most %d, got %d", maxAudiences, len(r.Audiences))
	}
	for _, a := range r.Audiences {
		if a == "" {
			return fmt.Errorf("audiences must not be empty strings")
		}
		if err := validateText("audience", a, maxAudienceLength); err != nil {
			return err
		}
	}
	if r.TokenTTL > r.TokenMaxTTL {
		return fmt.Errorf("token_ttl (%s) must not exceed token_max_ttl (%s)", r.TokenTTL, r.TokenMaxTTL)
	}
	if mountMaxTTL > 0 && r.TokenMaxTTL > mountMaxTTL {
		return fmt.Errorf("token_max_ttl (%s) exceeds the mount's max lease TTL (%s)", r.TokenMaxTTL, mountMaxTTL)
	}
	switch r.Subject {
	case subjectEntityID, subjectEntityName, subjectAliasName:
		return nil
	}
	return fmt.Errorf("subject must be %s, %s or %s, got %q", subjectEntityID, subjectEntityName, subjectAliasName, r.Subject)
}

// normalizeDelegation checks allowed_subject_roles and max_delegation_depth.
func (r *role) normalizeDelegation() error {
	if len(r.AllowedSubjectRoles) > maxScopes {
		return fmt.Errorf("allowed_subject_roles: at most %d, got %d", maxScopes, len(r.AllowedSubjectRoles))
	}
	seen := map[string]bool{}
	out := r.AllowedSubjectRoles[:0]
	for _, n := range r.AllowedSubjectRoles {
		if err := validateRoleName("allowed_subject_roles", n); err != nil {
			return err
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	r.AllowedSubjectRoles = out
	if len(out) == 0 {
		r.AllowedSubjectRoles = nil
	}
	if r.MaxDelegationDepth < 0 || r.MaxDelegationDepth > jwtverify.MaxActors {
		return fmt.Errorf("max_delegation_depth must be between 1 and %d, got %d", jwtverify.MaxActors, r.MaxDelegationDepth)
	}
	return nil
}

// normalizeApproval checks the approval settings: approval_scopes are
// among scopes and never granted by default (a mint naming no scopes would
// otherwise always wait for approvers).
func (r *role) normalizeApproval() error {
	var err error
	if r.ApprovalScopes, err = validateScopes("approval_scopes", r.ApprovalScopes); err != nil {
		return err
	}
	if len(r.ApprovalScopes) == 0 {
		r.ApprovalScopes = nil
	}
	if missing := subset(r.ApprovalScopes, r.Scopes); len(missing) > 0 {
		return fmt.Errorf("approval_scopes %s are not in the role's scopes", strings.Join(missing, ", "))
	}
	if risky := subset(r.ApprovalScopes, subset(r.ApprovalScopes, r.defaultScopes())); len(risky) > 0 {
		return fmt.Errorf("approval_scopes %s are in default_scopes: set default_scopes to the scopes a mint may get without approval", strings.Join(risky, ", "))
	}
	switch {
	case r.ApprovalsRequired < 0 || r.ApprovalsRequired > maxApprovers:
		return fmt.Errorf("approvals_required must be between 1 and %d, got %d", maxApprovers, r.ApprovalsRequired)
	case r.ApprovalTTL < 0, r.ApprovalRedeemTTL < 0, r.ApprovedMaxTTL < 0:
		return fmt.Errorf("approval_ttl, approval_redeem_ttl and approved_max_ttl must not be negative")
	}
	return nil
}

// The approval and delegation settings with their defaults.
func (r *role) delegationDepth() int {
	return cmp.Or(r.MaxDelegationDepth, 1)
}

func (r *role) approvalsRequired() int { return cmp.Or(r.ApprovalsRequired, 1) }

func (r *role) approvalTTL() time.Duration { return cmp.Or(r.ApprovalTTL, time.Hour) }

func (r *role) approvalRedeemTTL() time.Duration { return cmp.Or(r.ApprovalRedeemTTL, 15*time.Minute) }

func (r *role) approvedMaxTTL() time.Duration { return cmp.Or(r.ApprovedMaxTTL, time.Hour) }
