package backend

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// Exchanging a token (RFC 8693): from an exchangeRequest and the role its
// path opened to the new token, filed under its subject token's derived
// index before it is minted.

// exchangeRequest is an exchange (token/exchange): the grant asked, and
// the tokens given with their RFC 8693 types.
type exchangeRequest struct {
	grantAsk
	audience                       string
	subjectToken, subjectTokenType string
	actorToken, actorTokenType     string
	requestedTokenType             string
}

// exchangeParties are who an exchange is between: the subject token, and
// its chain's Vault entities (known: see chainEntities).
type exchangeParties struct {
	subject *jwtverify.Claims
	chain   []string
	known   bool
}

// exchange mints, under the role m names, a token for the caller to act
// for the subject of m's subject token. Every check comes before the new
// token's slot is filed: a refused exchange mints and stores nothing.
func (b *backend) exchange(ctx context.Context, req *logical.Request, m exchangeRequest) (*logical.Response, error) {
	r, release, resp, err := b.openMint(ctx, req.Storage, mintOpening{role: m.role, delegates: true, audiences: true})
	if r == nil {
		return resp, err
	}
	defer release()
	if rt := m.requestedTokenType; rt != "" && rt != tokenTypeAccessToken {
		return logical.ErrorResponse("requested_token_type %q: keybroker issues %s", rt, tokenTypeAccessToken), nil
	}
	actor, err := b.actorSubject(req, r)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	x, resp, err := b.exchangeSubject(ctx, req, r, m, actor)
	if x == nil {
		return resp, err
	}
	g, resp, err := b.exchangeGrant(ctx, req, r, m, x.subject, actor)
	if resp != nil || err != nil {
		return resp, err
	}
	meterID, err := b.exchangeLimits(ctx, req.Storage, r, x.subject, &g)
	if err != nil {
		return nil, err
	}
	ttl, warnings, err := b.mintTTL(m.ttl, r.TokenTTL, r.TokenMaxTTL, r, nil)
	if err != nil {
		return nil, err
	}
	if left := time.Until(x.subject.ExpiresAt.Time).Truncate(time.Second); left < ttl {
		ttl = left // never outlives the token it was exchanged from
		warnings = append(warnings, fmt.Sprintf("ttl capped at the subject token's expiry (%s)", left))
	}
	if ttl < time.Second {
		return logical.ErrorResponse("subject_token expires now"), nil
	}
	resp, err = b.issueExchanged(ctx, req, g, x, ttl, meterID)
	if err != nil || resp.IsError() {
		return resp, err
	}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}

// actorSubject is who the caller is as an actor: its sub under the role's
// subject setting. A caller without a Vault entity cannot act for anyone:
// all such callers look alike.
func (b *backend) actorSubject(req *logical.Request, r *role) (string, error) {
	if req.EntityID == "" {
		return "", fmt.Errorf("exchanging a token needs a Vault entity: the caller (a root or orphan token) has none, and act must name who acts")
	}
	return b.subject(req, r.Subject)
}

// exchangeSubject checks m's subject token, and that the caller (actor,
// under role r) may act in its chain. nil with why when it may not.
func (b *backend) exchangeSubject(ctx context.Context, req *logical.Request, r *role, m exchangeRequest, actor string) (*exchangeParties, *logical.Response, error) {
	subject, msg, userErr, err := b.exchangedToken(ctx, req, "subject_token", m.subjectToken, m.subjectTokenType)
	if msg != "" || userErr != nil || err != nil {
		return nil, exchangeError(msg, userErr), err
	}
	chain, known, err := b.chainEntities(ctx, req.Storage, subject)
	if err != nil {
		return nil, nil, err
	}
	refusal := chainRefusal(subject, chain, known, actor, req.EntityID)
	switch {
	case !slices.Contains(r.AllowedSubjectRoles, subject.Role):
		refusal = fmt.Sprintf("role %q may not act for tokens of role %q (allowed_subject_roles: %s)", m.role, subject.Role, strings.Join(r.AllowedSubjectRoles, ", "))
	case refusal != "":
	case len(subject.Actors())+1 > r.delegationDepth():
		refusal = fmt.Sprintf("the chain would be %d actors long; role %q allows at most %d (max_delegation_depth)", len(subject.Actors())+1, m.role, r.delegationDepth())
	case r.Tenant != "" && subject.Tenant != r.Tenant:
		refusal = fmt.Sprintf("subject_token belongs to tenant %q, role %q to tenant %q: no delegation across tenants", subject.Tenant, m.role, r.Tenant)
	}
	if refusal != "" {
		return nil, logical.ErrorResponse(refusal), nil
	}
	return &exchangeParties{subject: subject, chain: chain, known: known}, nil, nil
}

// exchangeGrant is what the new token carries: the subject's sub and
// authentication, the caller as its current actor, and scopes, audience
// and CIDRs within the subject's and the role's. resp is a refusal.
func (b *backend) exchangeGrant(ctx context.Context, req *logical.Request, r *role, m exchangeRequest, subject *jwtverify.Claims, actor string) (grant, *logical.Response, error) {
	var g grant
	scopes, resp, err := b.exchangedScopes(ctx, req, r, m, subject, actor)
	if resp != nil || err != nil {
		return g, resp, err
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
// role keeps for approval. resp is a refusal.
func (b *backend) exchangedScopes(ctx context.Context, req *logical.Request, r *role, m exchangeRequest, subject *jwtverify.Claims, actor string) ([]string, *logical.Response, error) {
	within := slices.DeleteFunc(subject.Scopes(), func(s string) bool { return !slices.Contains(r.Scopes, s) })
	if m.actorToken != "" {
		ac, msg, userErr, err := b.exchangedToken(ctx, req, "actor_token", m.actorToken, m.actorTokenType)
		if msg != "" || userErr != nil || err != nil {
			return nil, exchangeError(msg, userErr), err
		}
		if ac.Subject != actor {
			return nil, logical.ErrorResponse("actor_token's sub is not the caller's (%s under role %q's subject setting)", actor, m.role), nil
		}
		within = slices.DeleteFunc(within, func(s string) bool { return !slices.Contains(ac.Scopes(), s) })
	}
	scopes, msg := exchangeScopes(m.grantAsk, subject, r, within)
	if msg != "" {
		return nil, logical.ErrorResponse(msg), nil
	}
	if needs := subset(r.ApprovalScopes, subset(r.ApprovalScopes, scopes)); len(needs) > 0 {
		// The subject holds them, approved or minted without approval
		// under its own role; this role's approvers have not seen them.
		return nil, logical.ErrorResponse("scopes %s need approval under role %q: exchange for the others, or mint them through keybroker/approvals", strings.Join(needs, ", "), m.role), nil
	}
	return scopes, nil, nil
}

// exchangeLimits sets what g spends: a metered subject's meter, shared
// (meterID), else the role's limits ("": its own meter, if the role
// meters). The rate limit is the stricter of the subject's and the role's:
// an exchange never lifts one.
func (b *backend) exchangeLimits(ctx context.Context, s logical.Storage, r *role, subject *jwtverify.Claims, g *grant) (string, error) {
	g.limits = r.limits
	if sr := subject.Rate; sr != nil && sr.PerSecond > 0 && (g.RateLimit == 0 || sr.PerSecond < g.RateLimit) {
		g.RateLimit, g.RateBurst = sr.PerSecond, max(1, sr.Burst)
	}
	meterID, root, err := b.meterRoot(ctx, s, subject.ID)
	if err != nil || root == nil {
		return "", err
	}
	g.Budget, g.BudgetPeriod, g.MaxCost = root.Limit, root.Period, root.MaxCost
	return meterID, nil
}

// issueExchanged mints the exchanged token. Its slot is taken first, under
// the revocation lock, so a revocation of the subject from here on finds
// the new jti to revoke; a failed mint gives the slot back.
func (b *backend) issueExchanged(ctx context.Context, req *logical.Request, g grant, x *exchangeParties, ttl time.Duration, meterID string) (*logical.Response, error) {
	jti, err := uuid.GenerateUUID()
	if err != nil {
		return nil, fmt.Errorf("generating jti: %w", err)
	}
	now := tokenNow()
	slot := derivedSlot{parent: x.subject.ID, actor: req.EntityID, jti: jti}
	if x.known {
		slot.chain = append(slices.Clone(x.chain), req.EntityID)
	}
	if msg, err := b.reserveDerived(ctx, req.Storage, slot, now.Add(ttl)); msg != "" || err != nil {
		return exchangeError(msg, nil), err
	}
	resp, err := b.issueTokenAs(ctx, req, g, jti, now, ttl, "", meterID)
	if err != nil || resp.IsError() {
		if rerr := b.releaseDerived(ctx, req.Storage, slot); rerr != nil {
			b.Logger().Warn("releasing an exchange slot after a failed mint", "error", rerr)
		}
		return resp, err
	}
	resp.Data["issued_token_type"] = tokenTypeAccessToken
	resp.Data["actors"] = (&jwtverify.Claims{Act: g.Act}).Actors()
	return resp, nil
}

func exchangeError(msg string, userErr *logical.Response) *logical.Response {
	if userErr != nil {
		return userErr
	}
	if msg == "" {
		return nil
	}
	return logical.ErrorResponse(msg)
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

// exchangedToken checks a token given to token/exchange: the plugin's own,
// valid, not revoked, not bound. msg says what is wrong with it.
func (b *backend) exchangedToken(ctx context.Context, req *logical.Request, field, token, typ string) (c *jwtverify.Claims, msg string, userErr *logical.Response, err error) {
	if token == "" {
		return nil, field + " is required", nil, nil
	}
	if typ != "" && typ != tokenTypeAccessToken && typ != tokenTypeJWT {
		return nil, fmt.Sprintf("%s_type %q: keybroker exchanges only its own JWTs (%s)", field, typ, tokenTypeAccessToken), nil, nil
	}
	c, reason, userErr, err := b.ownJWT(ctx, req, token, "")
	switch {
	case userErr != nil || err != nil:
		return nil, "", userErr, err
	case reason != "":
		return nil, fmt.Sprintf("%s is not a valid keybroker token: %s", field, reason), nil, nil
	case c.BoundKey() != "":
		return nil, field + " is DPoP-bound: only its holder's key could use it, so it cannot be exchanged; its holder can mint an unbound token to delegate", nil, nil
	}
	return c, "", nil, nil
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
