package backend

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// Issuing an access token, once its grant is settled: signed, metered, a
// lease, and for a mint that starts one, the first refresh token of its
// family. token/<role>, token/refresh and token/exchange all end here.

// issueWithRefresh issues g's token and, when refresh, the first refresh
// token of a new family with it.
func (b *backend) issueWithRefresh(ctx context.Context, req *logical.Request, r *role, g grant, ttl time.Duration, refresh bool) (*logical.Response, error) {
	family := ""
	if refresh {
		var err error
		if family, err = uuid.GenerateUUID(); err != nil {
			return nil, fmt.Errorf("generating family id: %w", err)
		}
	}
	resp, err := b.issueToken(ctx, req, g, ttl, family, "")
	if err != nil || resp.IsError() {
		return resp, err
	}
	if !refresh {
		if r.RefreshTTL > 0 && req.EntityID == "" {
			resp.AddWarning("no refresh_token: the caller has no Vault entity (a root or orphan token), and refresh tokens are bound to one")
		}
		return resp, nil
	}
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	rt, err := newRefreshToken(ctx, req.Storage, g, family, resp.Secret.InternalData, r.RefreshTTL, r.familyMaxTTL())
	if err != nil {
		return nil, err
	}
	resp.Data["refresh_token"] = rt
	return resp, nil
}

// issueToken signs an access token for g and returns it as a lease. family
// is its refresh family ("" for none); meterID, when not "", the meter it
// spends from instead of its own or its family's (an exchanged token
// spends its subject's).
func (b *backend) issueToken(ctx context.Context, req *logical.Request, g grant, ttl time.Duration, family, meterID string) (*logical.Response, error) {
	jti, err := uuid.GenerateUUID()
	if err != nil {
		return nil, fmt.Errorf("generating jti: %w", err)
	}
	return b.issueTokenAs(ctx, req, g, jti, tokenNow(), ttl, family, meterID)
}

// tokenNow is a new token's iat: whole seconds, as JWT times are.
func tokenNow() time.Time {
	return time.Now().UTC().Truncate(time.Second)
}

// issueTokenAs is issueToken for a jti and iat chosen beforehand (an
// exchange files them before it mints, so that a revocation of the subject
// in between finds the new token).
func (b *backend) issueTokenAs(ctx context.Context, req *logical.Request, g grant, jti string, now time.Time, ttl time.Duration, family, meterID string) (*logical.Response, error) {
	iss, userErr, err := b.issuer(ctx, req, true)
	if userErr != nil || err != nil {
		return userErr, err
	}
	st, err := b.signer.current(ctx, req.Storage, b.Logger())
	if err != nil {
		return nil, err
	}
	metered, err := isMetered(ctx, req.Storage, g.limits, g.Tenant)
	if err != nil {
		return nil, err
	}
	exp := now.Add(ttl)
	claims := jwtverify.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    iss,
			Subject:   g.Subject,
			Audience:  g.Audiences,
			ExpiresAt: jwt.NewNumericDate(exp),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ID:        jti,
		},
		Scope:    strings.Join(g.Scopes, " "),
		Role:     g.Role,
		Tenant:   g.Tenant,
		CIDR:     g.CIDRs,
		ClientID: clientID(g),
		Act:      g.Act,
	}
	if !g.AuthTime.IsZero() {
		claims.AuthTime = jwt.NewNumericDate(g.AuthTime)
	}
	claims.Budget, claims.Rate = g.limits.claims(metered)
	tokenType := "Bearer"
	if g.JKT != "" {
		claims.Cnf, tokenType = &jwtverify.Confirmation{JKT: g.JKT}, "DPoP"
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(st.alg), claims)
	tok.Header["kid"] = st.kid
	tok.Header["typ"] = jwtverify.TokenType
	signed, err := tok.SignedString(st.signer)
	if err != nil {
		return nil, fmt.Errorf("signing token: %w", err)
	}
	if err := b.meters.meterToken(ctx, req.Storage, jti, cmp.Or(meterID, family), meterID == "", g, exp); err != nil {
		return nil, err
	}
	resp := b.Secret(secretTypeJWT).Response(map[string]interface{}{
		"token":      signed,
		"token_type": tokenType,
		"expires_in": int64(ttl.Seconds()),
		"expires_at": exp.Format(time.RFC3339),
		"jti":        jti,
		"sub":        g.Subject,
		"role":       g.Role,
		"scopes":     nonNil(g.Scopes),
		"audience":   g.Audiences,
	}, map[string]interface{}{
		"jti":    jti,
		"exp":    exp.Unix(),
		"family": family,
	})
	resp.Secret.TTL = ttl
	resp.Secret.MaxTTL = ttl
	return resp, nil
}

// clientID is RFC 9068's client_id: the Vault entity that asked for the
// grant (the agent is its own OAuth client, as in a client credentials
// grant), or for a caller without one the same no-entity name as its sub.
func clientID(g grant) string {
	if g.EntityID != "" {
		return g.EntityID
	}
	return g.Subject
}
