package backend

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

const (
	// refreshTokenPrefix tags refresh tokens, which share the API key
	// format (and its offline checksum) but are never API keys.
	refreshTokenPrefix = "kbrt"
)

// refreshEntry is a stored refresh token: its hash and the grant it renews.
type refreshEntry struct {
	ID        string    `json:"id"`
	Hash      []byte    `json:"hash"`
	Family    string    `json:"family"`
	Grant     grant     `json:"grant"`
	ExpiresAt time.Time `json:"expires_at"`
	SpentAt   time.Time `json:"spent_at,omitzero"`
}

// tokenFamily links an access token (by jti) to its family until it
// expires, so that revoking the token by value revokes the family too.
type tokenFamily struct {
	Family    string    `json:"family"`
	ExpiresAt time.Time `json:"expires_at"`
}

// family links every access and refresh token descended from one mint, so
// that reuse of a spent refresh token can revoke them all.
type family struct {
	ID        string               `json:"id"`
	JTIs      map[string]time.Time `json:"jtis"` // jti -> exp
	Refresh   []string             `json:"refresh"`
	RevokedAt time.Time            `json:"revoked_at,omitzero"`
	ExpiresAt time.Time            `json:"expires_at"` // when nothing in it is live
	// CreatedAt is the family's first mint: the role's refresh_max_ttl
	// counts from it.
	CreatedAt time.Time `json:"created_at,omitzero"`
}

func pathRefresh(b *backend) *framework.Path {
	return &framework.Path{
		// Listed before token/<role>; "refresh" is a reserved role name.
		Pattern: "token/refresh$",
		Fields: map[string]*framework.FieldSchema{
			"refresh_token": {
				Type:         framework.TypeString,
				Description:  "The refresh token from the last mint or refresh.",
				Required:     true,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Refresh token", Sensitive: true},
			},
			"dpop_proof": {
				Type:         framework.TypeString,
				Description:  "For a DPoP-bound family: a DPoP proof (RFC 9449) signed by the family's key, with htm POST or PUT, htu this path's URL as the client calls it (.../v1/<mount>/token/refresh), and iat within the last 60 seconds.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "DPoP proof", Sensitive: true},
			},
		},
		DisplayAttrs: pathAttrs("token"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("refresh", "", b.pathRefreshWrite, answers(tokenAnswerFields())),
		},
		HelpSynopsis: "Exchange a refresh token for a new access token and refresh token.",
		HelpDescription: `Each refresh token can be used once. The new access token carries the first's
role, scopes and sub, with audiences, cidr and limits narrowed to what the
role allows now (a scope, tenant, audience or CIDR the role no longer allows
at all ends the family's refreshes); the new refresh token lives refresh_ttl
from now. Nothing of a family outlives the role's refresh_max_ttl from its
first mint. Presenting a spent refresh token again is treated as theft: every
access token of its family is revoked (each jti lands in
keybroker/revocations), no refresh token of the family works again, and the
request fails saying so. Only the Vault identity the family was minted for
may refresh it, and only callers with a Vault entity may refresh.

A DPoP-bound family (minted with dpop_jkt or dpop_jwk) refreshes only with
dpop_proof, a fresh proof signed by its key: a stolen refresh token alone is
useless, and the new tokens stay bound to the same key.`,
	}
}

// newRefreshToken stores a refresh token for g in family, recording the
// access token (internal lease data) it was issued with. The caller holds
// refreshMu.
func newRefreshToken(ctx context.Context, s logical.Storage, g grant, familyID string, access map[string]interface{}, ttl, familyTTL time.Duration) (string, error) {
	var token, id string
	for attempt := 0; ; attempt++ {
		var err error
		if token, id, err = apikey.Generate(nil, refreshTokenPrefix); err != nil {
			return "", fmt.Errorf("generating refresh token: %w", err)
		}
		existing, err := s.Get(ctx, refreshPath(id))
		if err != nil {
			return "", fmt.Errorf("checking refresh id: %w", err)
		}
		if existing == nil {
			break
		}
		if attempt == 2 {
			return "", fmt.Errorf("generating refresh token: id collided three times")
		}
	}
	now := time.Now().UTC()
	f, err := getJSON[family](ctx, s, familyPath(familyID))
	if err != nil {
		return "", err
	}
	if f == nil {
		f = &family{ID: familyID, JTIs: map[string]time.Time{}, CreatedAt: now}
	}
	if f.CreatedAt.IsZero() {
		f.CreatedAt = now // a family from before families had an age
	}
	h := apikey.Hash(token)
	entry := refreshEntry{ID: id, Hash: h[:], Family: familyID, Grant: g, ExpiresAt: minTime(now.Add(ttl), f.CreatedAt.Add(familyTTL))}
	if err := putJSON(ctx, s, refreshPath(id), entry); err != nil {
		return "", err
	}
	jti, _ := access["jti"].(string)
	exp, err := internalUnix(access["exp"])
	if err != nil {
		return "", err
	}
	for j, e := range f.JTIs { // forget tokens that cannot pass anywhere any more
		if !now.Before(contract.RevokedUntil(e)) {
			delete(f.JTIs, j)
		}
	}
	f.JTIs[jti] = exp
	// Revoking the token by value finds its family here.
	if err := putJSON(ctx, s, tokenFamilyPath(jti), tokenFamily{Family: familyID, ExpiresAt: exp}); err != nil {
		return "", err
	}
	f.Refresh = append(f.Refresh, id)
	f.ExpiresAt = maxTime(f.ExpiresAt, entry.ExpiresAt, exp)
	return token, putJSON(ctx, s, familyPath(familyID), f)
}

func maxTime(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if t.After(m) {
			m = t
		}
	}
	return m
}

// refreshRequest is a refresh (token/refresh): the refresh token, and for
// a DPoP-bound family a proof by its key.
type refreshRequest struct {
	token, dpopProof string
}

func (b *backend) pathRefreshWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.refresh(ctx, req, refreshRequest{token: d.Get("refresh_token").(string), dpopProof: d.Get("dpop_proof").(string)})
}

// refresh spends m's refresh token for a new access token and refresh
// token of its family, as the family's role allows now.
func (b *backend) refresh(ctx context.Context, req *logical.Request, m refreshRequest) (*logical.Response, error) {
	if m.token == "" {
		return logical.ErrorResponse("refresh_token is required"), nil
	}
	parsed, err := apikey.Parse(m.token)
	if err != nil || parsed.Prefix != refreshTokenPrefix {
		return logical.ErrorResponse(refreshInvalid), nil
	}
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	entry, f, resp, err := b.spendable(ctx, req, m, parsed.ID)
	if entry == nil {
		return resp, err
	}
	r, release, resp, err := b.openMint(ctx, req.Storage, mintOpening{role: entry.Grant.Role, missing: "role %q was deleted; its tokens cannot be refreshed"})
	if r == nil {
		return resp, err
	}
	defer release()
	if msg := refreshRefusal(entry.Grant.Role, r, f); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	// The role as it is now, not as it was at mint: a refresh gets no more
	// than a new mint would.
	g, msg := narrowGrant(entry.Grant, r)
	if msg != "" {
		return logical.ErrorResponse("role %q %s; mint a new token", entry.Grant.Role, msg), nil
	}
	entry.SpentAt = time.Now().UTC()
	if err := putJSON(ctx, req.Storage, refreshPath(entry.ID), entry); err != nil {
		return nil, err
	}
	ttl := r.TokenTTL
	if end := f.CreatedAt.Add(r.familyMaxTTL()); !f.CreatedAt.IsZero() && time.Until(end) < ttl {
		ttl = time.Until(end).Truncate(time.Second) // nothing of the family outlives it
	}
	if ttl < time.Second {
		return logical.ErrorResponse("refresh_token's family reaches role %q's refresh_max_ttl now; mint a new token", entry.Grant.Role), nil
	}
	resp, err = b.issueToken(ctx, req, g, ttl, entry.Family, "")
	if err != nil || resp.IsError() {
		return resp, err
	}
	rt, err := newRefreshToken(ctx, req.Storage, g, entry.Family, resp.Secret.InternalData, r.RefreshTTL, r.familyMaxTTL())
	if err != nil {
		return nil, err
	}
	resp.Data["refresh_token"] = rt
	return resp, nil
}

const refreshInvalid = "refresh_token is invalid or expired"

// spendable reads the refresh token m gives (stored under id) and its
// family, nil with why when the caller may not spend it. A spent one
// presented again is taken for theft: its family is revoked. The caller
// holds refreshMu.
func (b *backend) spendable(ctx context.Context, req *logical.Request, m refreshRequest, id string) (*refreshEntry, *family, *logical.Response, error) {
	entry, err := getJSON[refreshEntry](ctx, req.Storage, refreshPath(id))
	if err != nil {
		return nil, nil, nil, err
	}
	hash := apikey.Hash(m.token)
	if entry == nil || subtle.ConstantTimeCompare(hash[:], entry.Hash) != 1 || !time.Now().Before(entry.ExpiresAt) {
		return nil, nil, logical.ErrorResponse(refreshInvalid), nil
	}
	f, err := getJSON[family](ctx, req.Storage, familyPath(entry.Family))
	switch {
	case err != nil:
		return nil, nil, nil, err
	case f == nil || !f.RevokedAt.IsZero():
		return nil, nil, logical.ErrorResponse("refresh_token's family was revoked; mint a new token"), nil
	case req.EntityID == "":
		return nil, nil, logical.ErrorResponse("refreshing needs a Vault entity: tokens without one (root, orphan tokens) share one identity"), nil
	case entry.Grant.EntityID != req.EntityID:
		return nil, nil, logical.ErrorResponse("refresh_token was issued to another Vault identity"), nil
	}
	// Before reuse detection: for a bound family, a caller without the key
	// can neither spend the refresh token nor, with a spent one, revoke
	// the family.
	if msg := checkRefreshProof(req, entry.Grant.JKT, m.dpopProof); msg != "" {
		return nil, nil, logical.ErrorResponse(msg), nil
	}
	if !entry.SpentAt.IsZero() {
		if err := b.revokeFamilyLocked(ctx, req.Storage, entry.Family); err != nil {
			return nil, nil, nil, err
		}
		b.Logger().Warn("refresh token reuse: family revoked", "family", entry.Family, "refresh_id", entry.ID)
		return nil, nil, logical.ErrorResponse("refresh_token was already used: reuse is treated as theft, so every token of its family was revoked"), nil
	}
	return entry, f, nil, nil
}

// refreshRefusal says why role r ends family f's refreshes, "" when it
// does not: it no longer gives refresh tokens, or the family has outlived
// its refresh_max_ttl.
func refreshRefusal(roleName string, r *role, f *family) string {
	switch {
	case r.RefreshTTL == 0:
		return fmt.Sprintf("role %q no longer allows refresh tokens", roleName)
	case !f.CreatedAt.IsZero() && !time.Now().Before(f.CreatedAt.Add(r.familyMaxTTL())):
		return fmt.Sprintf("refresh_token's family is older than role %q's refresh_max_ttl (%s); mint a new token", roleName, r.familyMaxTTL())
	}
	return ""
}

// refreshProofAge is how old a refresh's DPoP proof may be; the refresh
// token, used once, keeps the proof from being replayed.
const refreshProofAge = 60 * time.Second

// checkRefreshProof says what is wrong with a refresh's DPoP proof, "" when
// nothing: a bound family needs a proof by its key for this path.
func checkRefreshProof(req *logical.Request, jkt, proof string) string {
	switch {
	case jkt == "" && proof != "":
		return "dpop_proof given, but the refresh_token's family is not DPoP-bound"
	case jkt == "":
		return ""
	case proof == "":
		return "the refresh_token's family is DPoP-bound: give dpop_proof, a DPoP proof signed by its key"
	}
	path := "/v1/" + req.MountPoint + "token/refresh"
	_, err := jwtverify.VerifyProof(proof, jwtverify.ProofCheck{
		Target: func(htm, htu string) bool {
			// The origin is the client's view of Vault (a load
			// balancer, a proxy's path prefix): only the path is known.
			return (htm == "POST" || htm == "PUT") && strings.HasSuffix(htu, path)
		},
		JKT: jkt, Now: time.Now(), MaxAge: refreshProofAge, Leeway: verifyLeeway,
	})
	if err != nil {
		return fmt.Sprintf("dpop_proof is not valid for this refresh: %v", err)
	}
	return ""
}

// narrowGrant returns g as role r allows it now: audiences and CIDRs
// intersected with the role's, limits no looser than the role's. msg says
// why g cannot be renewed at all (a scope or tenant the role no longer
// has, no audience or CIDR left, or several audiences: a family minted
// before tokens were for one resource each).
func narrowGrant(g grant, r *role) (grant, string) {
	if missing := subset(g.Scopes, r.Scopes); len(missing) > 0 {
		return g, fmt.Sprintf("no longer allows scopes %v", missing)
	}
	if needs := subset(g.Scopes, subset(g.Scopes, r.ApprovalScopes)); len(needs) > 0 {
		return g, fmt.Sprintf("needs approval for scopes %v (approval_scopes)", needs)
	}
	if g.Tenant != r.Tenant {
		return g, "has another tenant now"
	}
	if r.RequireDPoP && g.JKT == "" {
		return g, "now requires DPoP-bound tokens, and this family is not bound"
	}
	var aud []string
	for _, a := range g.Audiences {
		if slices.Contains(r.Audiences, a) {
			aud = append(aud, a)
		}
	}
	if len(aud) == 0 {
		return g, fmt.Sprintf("no longer allows audience %v", g.Audiences)
	}
	if len(aud) > 1 {
		// Minted before tokens were for one resource server each: such a
		// family would keep minting tokens every audience accepts.
		return g, fmt.Sprintf("minted this family for several audiences %v, and a token is now for one resource server (audience)", aud)
	}
	g.Audiences = aud
	cidrs, err := intersectCIDRs(g.CIDRs, r.BoundCIDRs)
	if err != nil || (len(cidrs) == 0 && (len(g.CIDRs) > 0 || len(r.BoundCIDRs) > 0)) {
		return g, "no longer allows the token's CIDRs"
	}
	g.CIDRs = cidrs
	g.limits = g.limits.within(r.limits)
	return g, ""
}

// revokeFamilyLocked revokes every live access token of a family and stops
// its refresh tokens. The caller holds refreshMu.
func (b *backend) revokeFamilyLocked(ctx context.Context, s logical.Storage, id string) error {
	f, err := getJSON[family](ctx, s, familyPath(id))
	if err != nil || f == nil {
		return err
	}
	for jti, exp := range f.JTIs {
		if err := b.revoker.revokeJTI(ctx, s, jti, exp); err != nil {
			return err
		}
	}
	if f.RevokedAt.IsZero() {
		f.RevokedAt = time.Now().UTC()
	}
	return putJSON(ctx, s, familyPath(id), f)
}
