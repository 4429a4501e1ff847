package backend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// Narrowing a grant to its role: what a mint asked (a typed request, its
// fields already well formed) held against what the role allows, for a
// key (keyFor), a token (tokenGrant) and an exchanged token
// (exchangeGrant). Every error here is the caller's mistake.

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
// not nil) at the role's approved_max_ttl. A credential without a lease
// (leased false: an orphan role's key) is capped at the mount's max as
// Vault answers it now, since no lease of it will be (mountTTLs).
func (b *backend) mintTTL(asked, def, maxTTL time.Duration, leased bool, r *role, approved *approvalRequest) (time.Duration, []string, error) {
	var sys logical.SystemView = b.mountTTLs
	if !leased {
		sys = b.mountTTLs.SystemView
	}
	ttl, warnings, err := framework.CalculateTTL(sys, asked, def, 0, maxTTL, 0, time.Time{})
	if err != nil {
		return 0, nil, fmt.Errorf("calculating ttl: %w", err)
	}
	if ttl <= 0 {
		// Vault's view answered 0 for the mount's TTLs: its call failed.
		return 0, nil, fmt.Errorf("calculating ttl: %s (the mount's lease TTLs could not be read)", ttl)
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

// intersectCIDRs is the blocks of a that lie within b, and of b within a;
// an empty side allows everything.
func intersectCIDRs(a, b []string) ([]string, error) {
	switch {
	case len(a) == 0:
		return b, nil
	case len(b) == 0:
		return a, nil
	}
	pa, err := parseCIDRs("cidrs", a)
	if err != nil {
		return nil, err
	}
	pb, err := parseCIDRs("cidrs", b)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, p := range pa {
		if len(narrows([]netip.Prefix{p}, pb)) == 0 {
			out = append(out, p)
		}
	}
	for _, p := range pb {
		if len(narrows([]netip.Prefix{p}, pa)) == 0 && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return cidrStrings(out), nil
}

// exchangeGrant is what the new token carries: the subject's sub and
// authentication, the caller as its current actor, and scopes, audience
// and CIDRs within the subject's and the role's. resp is a refusal.
func exchangeGrant(req *logical.Request, r *role, m exchangeRequest, x *exchangeParties, actor string) (grant, *logical.Response, error) {
	var g grant
	subject := x.subject
	scopes, msg := exchangedScopes(r, m, x)
	if msg != "" {
		return g, logical.ErrorResponse(msg), nil
	}
	aud, msg := exchangeAudience(m.audience, subject, m.role, r)
	if msg != "" {
		return g, logical.ErrorResponse(msg), nil
	}
	g = grant{Role: m.role, Scopes: scopes, Audiences: []string{aud}, Tenant: subject.Tenant, Subject: subject.Subject, EntityID: req.EntityID,
		Act: &jwtverify.Actor{Subject: actor, Act: subject.Act}}
	if subject.AuthTime != nil {
		g.AuthTime = subject.AuthTime.Time // the subject's authentication, not the actor's
	}
	asked, err := r.narrowCIDRs(m.role, m.cidrs)
	if err != nil {
		return g, logical.ErrorResponse(err.Error()), nil
	}
	if g.CIDRs, err = intersectCIDRs(subject.CIDR, asked); err != nil {
		return g, nil, fmt.Errorf("intersecting CIDRs: %w", err)
	}
	if len(g.CIDRs) == 0 && (len(subject.CIDR) > 0 || len(asked) > 0) {
		return g, logical.ErrorResponse("bound_cidrs: the subject token's (%s) and the role's or asked ones (%s) have no block in common", strings.Join(subject.CIDR, ", "), strings.Join(asked, ", ")), nil
	}
	if g.JKT, err = r.binding(m.grantAsk, "tokens", "caller's"); err != nil {
		return g, logical.ErrorResponse(err.Error()), nil
	}
	return g, nil, nil
}

// exchangedScopes are the new token's scopes: the subject's, within the
// role's, and within the actor token's when one is given; never one the
// role keeps for approval. msg is a refusal.
func exchangedScopes(r *role, m exchangeRequest, x *exchangeParties) ([]string, string) {
	within := slices.DeleteFunc(x.subject.Scopes(), func(s string) bool { return !slices.Contains(r.Scopes, s) })
	if x.actor != nil {
		within = slices.DeleteFunc(within, func(s string) bool { return !slices.Contains(x.actor.Scopes(), s) })
	}
	scopes, msg := exchangeScopes(m.grantAsk, x.subject, r, within)
	if msg != "" {
		return nil, msg
	}
	if needs := subset(r.ApprovalScopes, subset(r.ApprovalScopes, scopes)); len(needs) > 0 {
		// The subject holds them, approved or minted without approval
		// under its own role; this role's approvers have not seen them.
		return nil, fmt.Sprintf("scopes %s need approval under role %q: exchange for the others, or mint them through keybroker/approvals", strings.Join(needs, ", "), m.role)
	}
	return scopes, ""
}

// exchangeLimits sets what g spends: a metered subject's meter, shared
// (meterID), else the role's limits ("": its own meter, if the role
// meters). The rate limit is the stricter of the subject's and the role's:
// an exchange never lifts one.
func exchangeLimits(ctx context.Context, s logical.Storage, r *role, subject *jwtverify.Claims, g *grant) (string, error) {
	g.limits = r.limits
	if sr := subject.Rate; sr != nil && sr.PerSecond > 0 && (g.RateLimit == 0 || sr.PerSecond < g.RateLimit) {
		g.RateLimit, g.RateBurst = sr.PerSecond, max(1, sr.Burst)
	}
	meterID, root, err := meterRoot(ctx, s, subject.ID)
	if err != nil || root == nil {
		return "", err
	}
	g.Budget, g.BudgetPeriod, g.MaxCost = root.Limit, root.Period, root.MaxCost
	return meterID, nil
}

// exchangeAudience is the new token's one aud: within the subject token's
// audiences and the role's (an exchange narrows: a token sent to one
// resource server cannot become one for another), asked or the only one
// both allow. msg is the caller's mistake.
func exchangeAudience(asked string, subject *jwtverify.Claims, roleName string, r *role) (string, string) {
	if asked != "" && !slices.Contains(r.Audiences, asked) {
		return "", fmt.Sprintf("audience %q is not allowed by role %q (allowed: %s)", asked, roleName, strings.Join(r.Audiences, ", "))
	}
	both := slices.DeleteFunc(slices.Clone(r.Audiences), func(a string) bool { return !slices.Contains(subject.Audience, a) })
	if len(both) == 0 {
		return "", fmt.Sprintf("the subject token's audience (%s) is not among role %q's (%s): an exchange keeps the subject token's audience, it cannot widen to another resource server", strings.Join(subject.Audience, ", "), roleName, strings.Join(r.Audiences, ", "))
	}
	aud, err := oneAudience(asked, both, func(a string) string {
		return fmt.Sprintf("audience %q is not the subject token's (%s): an exchange cannot widen to another resource server", a, strings.Join(subject.Audience, ", "))
	}, "the subject token with role "+strconv.Quote(roleName))
	if err != nil {
		return "", err.Error()
	}
	return aud, ""
}

// exchangeScopes are the new token's scopes: those asked, which must be
// within what it may carry, or by default what it may carry of the role's
// default scopes. msg is the caller's mistake.
func exchangeScopes(ask grantAsk, subject *jwtverify.Claims, r *role, within []string) ([]string, string) {
	if !ask.scopesGiven {
		def := slices.DeleteFunc(slices.Clone(within), func(s string) bool { return !slices.Contains(r.defaultScopes(), s) })
		if len(def) == 0 {
			return nil, fmt.Sprintf("the subject token's scopes (%s) and the role's default_scopes have none in common: name the scopes", subject.Scope)
		}
		return def, ""
	}
	scopes := ask.scopes
	if len(scopes) == 0 {
		return nil, "scopes: name at least one"
	}
	if wider := subset(scopes, subject.Scopes()); len(wider) > 0 {
		return nil, fmt.Sprintf("scopes %s are not in the subject token (%s): an exchange cannot widen", strings.Join(wider, ", "), subject.Scope)
	}
	if wider := subset(scopes, within); len(wider) > 0 {
		return nil, fmt.Sprintf("scopes %s are not allowed by the role or the actor token", strings.Join(wider, ", "))
	}
	return scopes, ""
}
