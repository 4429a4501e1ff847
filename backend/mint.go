package backend

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// A mint as the domain sees it. The path layer (mint_fields.go) reads a
// request's fields into these types, as Vault's PKI engine reads a request
// into its CreationBundleInput; minting, approval and exchange are
// functions over them and never see the request's raw fields.

// grantAsk is what a mint asks of its role, each field as the request gave
// it, zero when it gave none.
type grantAsk struct {
	role        string
	scopes      []string       // well formed, each once
	scopesGiven bool           // scopes was sent, even empty
	cidrs       []netip.Prefix // empty: the role's
	budget      *int64         // nil: the role's
	ttl         time.Duration
	// dpopJKT is the thumbprint of the key the credential is asked to be
	// bound to (DPoP: dpop_jkt, or dpop_jwk's), "" for a bearer one.
	dpopJKT string
}

// approvalAsk is what a mint that may need approval carries for it.
type approvalAsk struct {
	kind string // approvalKindKey, approvalKindToken
	// fields are the request's fields as sent (role and approval_id aside):
	// an approval request stores them, and its redemption mints them again.
	fields map[string]interface{}
	// approvalID asks to redeem that approved request instead of minting
	// fields (it comes alone). The request it names, once opened
	// (redeeming), is the mint's approved parameter: it skips approval,
	// caps the lifetime at the role's approved_max_ttl and is recorded on
	// the credential.
	approvalID string
}

// keyMintRequest is a mint of an API key (keys/<role>).
type keyMintRequest struct {
	grantAsk
	approvalAsk
	name     string
	metadata map[string]string // nil: none asked
}

// tokenMintRequest is a mint of an agent JWT (token/<role>).
type tokenMintRequest struct {
	grantAsk
	approvalAsk
	audience string
	// read: minted by a read (Vault Agent's template), which mints again
	// rather than refresh, so it gets no refresh token.
	read bool
}

// mintOpening is how a mint path opens on its role: which role (a name
// already checked), whether the mint holds the role's lock, and what it
// requires of the role beyond existing.
type mintOpening struct {
	role string
	// locked: the role's lock is held for reading from the checks to the
	// credential's write, so a suspension waits for the mints under way and
	// no mint passes the check once it answered (keys).
	locked bool
	// missing is the refusal for a role that does not exist (a format with
	// the role's name); "" for "role %q does not exist".
	missing string
	// What the mint needs of the role: not suspended (keys), audiences
	// (tokens), subject roles to act for (exchange).
	unsuspended, audiences, delegates bool
}

// openMint is the opening every mint path shares: the role read (under its
// lock for a locked mint) and refused where it does not exist or does not
// serve the mint. r is nil when refused: resp or err says why. The caller
// calls release once done with r (a no-op for an unlocked mint); a refusal
// has released already.
func (b *backend) openMint(ctx context.Context, s logical.Storage, o mintOpening) (r *role, release func(), resp *logical.Response, err error) {
	release = func() {}
	if o.locked {
		l := b.roleLock(o.role)
		l.RLock()
		release = sync.OnceFunc(l.RUnlock)
	}
	r, err = b.getRole(ctx, s, o.role)
	switch {
	case err != nil:
	case r == nil:
		resp = logical.ErrorResponse(cmp.Or(o.missing, "role %q does not exist"), o.role)
	case o.unsuspended && r.Suspended:
		resp = logical.ErrorResponse("role %q is suspended: resume it (roles/%s/resume) to mint keys", o.role, o.role)
	case o.delegates && len(r.AllowedSubjectRoles) == 0:
		resp = logical.ErrorResponse("role %q may not act for anyone: set allowed_subject_roles on it", o.role)
	case o.audiences && len(r.Audiences) == 0:
		resp = logical.ErrorResponse("role %q has no audiences; set audiences on the role to mint tokens from it", o.role)
	}
	if resp != nil || err != nil {
		release()
		return nil, func() {}, resp, err
	}
	return r, release, nil, nil
}

// narrowed is what a grant may carry once narrowed to its role, and which
// of its scopes the role keeps for approval (needs).
type narrowed struct {
	scopes, cidrs []string
	limits        limits
	needs         []string
}

// narrow returns what ask may carry under role r: its scopes, CIDRs and
// budget within the role's, or the role's. The error is the caller's
// mistake.
func (r *role) narrow(ask grantAsk) (narrowed, error) {
	var n narrowed
	var err error
	if n.scopes, err = r.narrowScopes(ask.role, ask.scopes, ask.scopesGiven); err != nil {
		return n, err
	}
	n.needs = subset(n.scopes, subset(n.scopes, r.ApprovalScopes))
	if n.cidrs, err = r.narrowCIDRs(ask.role, ask.cidrs); err != nil {
		return n, err
	}
	n.limits, err = r.limits.narrow(ask.role, ask.budget)
	return n, err
}

// keyFor is the key m asks for, as role r allows it, without its id,
// owner and times, and which of its scopes r keeps for approval. The
// error is the caller's mistake.
func (r *role) keyFor(m keyMintRequest) (*keyEntry, []string, error) {
	n, err := r.narrow(m.grantAsk)
	if err != nil {
		return nil, nil, err
	}
	jkt, err := r.binding(m.grantAsk, "credentials", "holder's")
	if err != nil {
		return nil, nil, err
	}
	md, err := r.keyMetadata(m.role, m.metadata)
	if err != nil {
		return nil, nil, err
	}
	return &keyEntry{Name: m.name, Role: m.role, Scopes: n.scopes, BoundCIDRs: n.cidrs, Tenant: r.Tenant,
		Metadata: md, Orphan: r.Orphan, JKT: jkt, limits: n.limits}, n.needs, nil
}

// tokenGrant is the grant m asks for, as role r allows it, for the caller
// of req, and which of its scopes r keeps for approval. The error is the
// caller's mistake.
func (b *backend) tokenGrant(req *logical.Request, r *role, m tokenMintRequest) (grant, []string, error) {
	g := grant{Role: m.role, Tenant: r.Tenant, EntityID: req.EntityID, AuthTime: time.Now().UTC().Truncate(time.Second)}
	n, err := r.narrow(m.grantAsk)
	if err != nil {
		return g, nil, err
	}
	g.Scopes, g.CIDRs, g.limits = n.scopes, n.cidrs, n.limits
	aud, err := roleAudience(m.role, r, m.audience)
	if err != nil {
		return g, nil, err
	}
	g.Audiences = []string{aud}
	if g.Subject, err = b.subject(req, r.Subject); err != nil {
		return g, nil, err
	}
	g.JKT, err = r.binding(m.grantAsk, "tokens", "agent's")
	return g, n.needs, err
}

// binding is the thumbprint ask binds the credential to ("" for a bearer
// one), refused when role r requires one and ask gives none: what names
// the credential and whose key it is for the refusal.
func (r *role) binding(ask grantAsk, what, whose string) (string, error) {
	if r.RequireDPoP && ask.dpopJKT == "" {
		return "", fmt.Errorf("role %q requires DPoP-bound %s: give dpop_jkt (the thumbprint of the %s public key) or dpop_jwk", ask.role, what, whose)
	}
	return ask.dpopJKT, nil
}

// roleAudience is the one aud a token minted from role r carries: asked,
// which must be one of the role's audiences, or the role's only one. A token
// is for one resource server (RFC 8707, and MCP's rule against token
// passthrough): a token for every audience of a role would be accepted at
// each of them, so each could replay what it was sent at the others. The
// role's audiences are a set, not a preference, so with several none is
// picked for the caller.
func roleAudience(roleName string, r *role, asked string) (string, error) {
	return oneAudience(asked, r.Audiences, func(aud string) string {
		return fmt.Sprintf("audience %q is not allowed by role %q (allowed: %s)", aud, roleName, strings.Join(r.Audiences, ", "))
	}, fmt.Sprintf("role %q", roleName))
}

// oneAudience picks one of allowed: asked when given (outside is the error
// for one not allowed), else the only one. whose names the list in the
// error when it has several.
func oneAudience(asked string, allowed []string, outside func(string) string, whose string) (string, error) {
	if asked != "" {
		if !slices.Contains(allowed, asked) {
			return "", errors.New(outside(asked))
		}
		return asked, nil
	}
	distinct := slices.Compact(slices.Sorted(slices.Values(allowed)))
	if len(distinct) > 1 {
		return "", fmt.Errorf("%s allows several audiences (%s): name the one resource server the token is for with audience=<one of them>; a token carries one audience", whose, strings.Join(allowed, ", "))
	}
	if len(distinct) == 0 {
		return "", fmt.Errorf("%s allows no audience", whose)
	}
	return distinct[0], nil
}

// keyMetadata is a key's metadata: asked (well formed), which may not set
// the role's keys, and the role's.
func (r *role) keyMetadata(roleName string, asked map[string]string) (map[string]string, error) {
	md := map[string]string{}
	if asked != nil {
		for k := range asked {
			if _, clash := r.Metadata[k]; clash {
				return nil, fmt.Errorf("metadata key %q is set by role %q and cannot be overridden", k, roleName)
			}
		}
		for k, v := range asked {
			md[k] = v
		}
	}
	for k, v := range r.Metadata {
		md[k] = v
	}
	if len(md) > maxMetadataPairs {
		return nil, fmt.Errorf("metadata: the key's and the role's together exceed %d entries", maxMetadataPairs)
	}
	return md, nil
}

// mintTTL is a credential's lifetime: asked, or the role's default, capped
// at its max (Vault's rules, with warnings), and for a redemption (approved
// not nil) at the role's approved_max_ttl.
func (b *backend) mintTTL(asked, def, maxTTL time.Duration, r *role, approved *approvalRequest) (time.Duration, []string, error) {
	ttl, warnings, err := framework.CalculateTTL(b.System(), asked, def, 0, maxTTL, 0, time.Time{})
	if err != nil {
		return 0, nil, fmt.Errorf("calculating ttl: %w", err)
	}
	if approved == nil || ttl <= r.approvedMaxTTL() {
		return ttl, warnings, nil
	}
	return r.approvedMaxTTL(), append(warnings, fmt.Sprintf("ttl capped at the role's approved_max_ttl (%s)", r.approvedMaxTTL())), nil
}

// narrowScopes returns the scopes a mint asks for (well formed), which
// must be a subset of the role's, or the role's default scopes when it
// asks none (given: false). Its error is the caller's mistake.
func (r *role) narrowScopes(roleName string, scopes []string, given bool) ([]string, error) {
	if !given {
		return r.defaultScopes(), nil
	}
	if missing := subset(scopes, r.Scopes); len(missing) > 0 {
		return nil, fmt.Errorf("scopes %s are not allowed by role %q (allowed: %s)",
			strings.Join(missing, ", "), roleName, strings.Join(r.Scopes, ", "))
	}
	return scopes, nil
}

// narrowCIDRs returns the CIDRs a mint asks for, each within one of the
// role's, or the role's own when it asks none.
func (r *role) narrowCIDRs(roleName string, asked []netip.Prefix) ([]string, error) {
	if len(asked) == 0 {
		return r.BoundCIDRs, nil
	}
	roleCIDRs, err := parseCIDRs("role bound_cidrs", r.BoundCIDRs)
	if err != nil {
		return nil, err
	}
	if wider := narrows(asked, roleCIDRs); len(wider) > 0 {
		return nil, fmt.Errorf("bound_cidrs %s are not within role %q's bound_cidrs (%s)",
			strings.Join(wider, ", "), roleName, strings.Join(r.BoundCIDRs, ", "))
	}
	return cidrStrings(asked), nil
}

// The arithmetic narrowing is made of, over scopes and CIDR blocks; the
// other checks against a role (refresh, rotation, verify) use it too.

// subset returns the members of want that are not in have.
func subset(want, have []string) (missing []string) {
	for _, w := range want {
		found := false
		for _, h := range have {
			if w == h {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, w)
		}
	}
	return missing
}

func cidrStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// narrows reports the members of inner not contained in any of outer. An
// empty outer allows everything.
func narrows(inner, outer []netip.Prefix) (wider []string) {
	if len(outer) == 0 {
		return nil
	}
	for _, in := range inner {
		ok := false
		for _, out := range outer {
			if out.Bits() <= in.Bits() && out.Contains(in.Addr()) {
				ok = true
				break
			}
		}
		if !ok {
			wider = append(wider, in.String())
		}
	}
	return wider
}
