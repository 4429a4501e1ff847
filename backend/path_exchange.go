package backend

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// Token exchange (RFC 8693): a caller authenticated to Vault acts for the
// subject of a keybroker token it was given. The new token keeps the
// subject's sub, names the caller in act (the earlier actors nested in it),
// and carries no more than the subject token had, the caller's role allows,
// and the actor token (when given) holds.

// Token type URIs of RFC 8693 section 3.
const (
	tokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	tokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
)

// derivedTokens are the tokens exchanged from one token: jti -> exp.
type derivedTokens struct {
	Children map[string]time.Time `json:"children"`
}

// maxDerived bounds the live tokens one actor exchanged from one token, and
// so what one revocation walks per actor.
const maxDerived = 1000

func pathExchange(b *backend) *framework.Path {
	f := grantFields("token", "Default: the role's token_ttl. Capped at token_max_ttl and at the subject token's expiry.")
	f["role"].Description = "Role the caller exchanges under: a role name (not a path), which must list the subject token's role in allowed_subject_roles."
	f["scopes"].Description = "Scopes for the new token: within the subject token's, the role's and the actor token's. Default: the subject token's that are also in the role's default_scopes (and the actor token's)."
	f["bound_cidrs"].Description = "CIDR blocks the new token may be used from, within the subject token's and the role's. Default: where both allow."
	delete(f, "budget") // a metered subject's budget is shared, never chosen
	f["audience"] = &framework.FieldSchema{Type: framework.TypeString, Description: "The new token's one aud: one of the subject token's audiences that the role also allows (an exchange never moves a token to another resource server). Default: the only such audience; with several, name one."}
	f["subject_token"] = &framework.FieldSchema{
		Type:         framework.TypeString,
		Description:  "The keybroker JWT of the subject to act for: valid, not revoked, not DPoP-bound, of a role in the role's allowed_subject_roles.",
		Required:     true,
		DisplayAttrs: &framework.DisplayAttributes{Name: "Subject token", Sensitive: true},
	}
	f["subject_token_type"] = &framework.FieldSchema{
		Type:          framework.TypeString,
		Description:   "RFC 8693 subject_token_type; when given, " + tokenTypeAccessToken + " or " + tokenTypeJWT + ".",
		AllowedValues: []interface{}{tokenTypeAccessToken, tokenTypeJWT},
	}
	f["actor_token"] = &framework.FieldSchema{
		Type:         framework.TypeString,
		Description:  "Optional keybroker JWT of the caller itself (its sub must be the caller's, under the role's subject setting): the new token's scopes are then also within its scopes.",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Actor token", Sensitive: true},
	}
	f["actor_token_type"] = &framework.FieldSchema{
		Type:          framework.TypeString,
		Description:   "RFC 8693 actor_token_type; when given, " + tokenTypeAccessToken + " or " + tokenTypeJWT + ".",
		AllowedValues: []interface{}{tokenTypeAccessToken, tokenTypeJWT},
	}
	f["requested_token_type"] = &framework.FieldSchema{
		Type:          framework.TypeString,
		Description:   "RFC 8693 requested_token_type; when given, " + tokenTypeAccessToken + ".",
		AllowedValues: []interface{}{tokenTypeAccessToken},
	}
	for k, v := range dpopFields("new token", "Bind it to the caller's own key: the subject's binding cannot pass to another holder.") {
		f[k] = v
	}
	answer := merged(tokenAnswerFields(), map[string]*framework.FieldSchema{
		"issued_token_type": out(framework.TypeString, "RFC 8693 issued_token_type: "+tokenTypeAccessToken+"."),
		"actors":            out(framework.TypeStringSlice, "The new token's delegation chain (its act claim), the caller first."),
	})
	delete(answer, "refresh_token") // exchanged tokens are not refreshed: exchange again
	return &framework.Path{
		Pattern:      "token/exchange$",
		Fields:       f,
		DisplayAttrs: pathAttrs("token"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("exchange", "", b.pathExchangeWrite, answers(answer)),
		},
		HelpSynopsis: "Exchange a keybroker token to act for its subject (RFC 8693).",
		HelpDescription: `The caller acts for the subject of subject_token: the new token's sub is the
subject's, its act claim names the caller (as the role's subject setting
derives it from the caller's Vault identity), with the subject token's own
act nested inside (RFC 8693 section 4.1), and its client_id is the caller's
entity. The role must list the subject token's role in
allowed_subject_roles, and the chain may be at most its max_delegation_depth
actors long, and an actor appears in it at most once: the caller's Vault
entity may be neither the subject's nor an actor's already in it, whatever
subject setting each role of the chain spelled them with (the plugin keeps
each exchanged token's chain as entities), and the sub this role derives for
the caller may not already be the chain's sub or an actor's (the token would
name it twice). The new token's scopes are
within the subject token's and the role's (and the actor token's), its one
audience is one of the subject token's that the role allows, its
bound_cidrs within both, and it expires no later than the subject token.
Each caller may hold up to 1000 live tokens exchanged from one subject
token, apart from other callers'; a refused exchange mints nothing.
A metered subject's budget is shared: the new token spends from the same
meter. Revoking a token revokes every token exchanged from it, through the
revocation feed. DPoP-bound subject tokens cannot be exchanged (the caller
cannot prove their key); the new token can be bound to the caller's key.
Exchanged tokens get no refresh token: exchange again.

role is a field, not part of the path: pin it in each agent's policy
(allowed_parameters = { "role" = ["<role>"], "*" = [] }), or the agent may
exchange under any role that delegates.`,
	}
}

func (b *backend) pathExchangeWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	m, err := exchangeRequestFrom(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	return b.exchange(ctx, req, m)
}

// derivedSlot is one exchanged token as its subject's index files it: the
// subject token's jti (parent), the Vault entity that exchanged it (actor)
// and its own jti; and its chain's Vault entities, kept under chainPrefix
// (nil when the subject token's are not known: the new token's are not
// either).
type derivedSlot struct {
	parent, actor, jti string
	chain              []string
}

// reserveDerived files a token about to be exchanged from s.parent, under
// the lock revocations take: a revocation of the subject that came first is
// seen here (the exchange is refused), and one that comes after finds the
// new jti to revoke, minted or not yet. msg is why the exchange is refused;
// nothing is then written.
func (b *backend) reserveDerived(ctx context.Context, st logical.Storage, s derivedSlot, exp time.Time) (string, error) {
	b.revocationMu.Lock()
	defer b.revocationMu.Unlock()
	revoked, err := st.Get(ctx, revokedJTIPath(s.parent))
	if err != nil {
		return "", fmt.Errorf("reading revoked jti: %w", err)
	}
	if revoked != nil {
		return "subject_token was revoked meanwhile", nil
	}
	key := derivedKey(s.parent, s.actor)
	dt, err := getJSON[derivedTokens](ctx, st, key)
	if err != nil {
		return "", err
	}
	if dt == nil {
		dt = &derivedTokens{Children: map[string]time.Time{}}
	}
	now := time.Now()
	for c, e := range dt.Children {
		if !now.Before(contract.RevokedUntil(e)) {
			delete(dt.Children, c) // past every verifier's leeway: nothing left to revoke
		}
	}
	if len(dt.Children) >= maxDerived {
		return fmt.Sprintf("the caller already has %d live tokens exchanged from subject_token (each actor has its own %d); wait for some to expire", maxDerived, maxDerived), nil
	}
	dt.Children[s.jti] = exp
	if s.chain != nil {
		if err := putJSON(ctx, st, chainPath(s.jti), &entityChain{Entities: s.chain, ExpiresAt: exp}); err != nil {
			return "", err
		}
	}
	return "", putJSON(ctx, st, key, dt)
}

// releaseDerived gives back a slot whose token was not minted after all.
func (b *backend) releaseDerived(ctx context.Context, st logical.Storage, s derivedSlot) error {
	b.revocationMu.Lock()
	defer b.revocationMu.Unlock()
	if err := st.Delete(ctx, chainPath(s.jti)); err != nil {
		return fmt.Errorf("deleting %s: %w", chainPath(s.jti), err)
	}
	key := derivedKey(s.parent, s.actor)
	dt, err := getJSON[derivedTokens](ctx, st, key)
	if err != nil || dt == nil {
		return err
	}
	delete(dt.Children, s.jti)
	if len(dt.Children) == 0 {
		if err := st.Delete(ctx, key); err != nil {
			return fmt.Errorf("deleting %s: %w", key, err)
		}
		return nil
	}
	return putJSON(ctx, st, key, dt)
}

// revokeDerivedLocked revokes the tokens exchanged from jti, and theirs:
// every actor's, and those filed before slots were per actor. The caller
// holds revocationMu.
func (b *backend) revokeDerivedLocked(ctx context.Context, s logical.Storage, jti string, depth int) error {
	if depth > jwtverify.MaxActors {
		return nil // no chain is longer
	}
	actors, err := s.List(ctx, derivedActorsOf(jti))
	if err != nil {
		return fmt.Errorf("listing %s: %w", derivedActorsOf(jti), err)
	}
	keys := []string{derivedLegacyPath(jti)}
	for _, a := range actors {
		keys = append(keys, derivedActorsOf(jti)+a)
	}
	for _, key := range keys {
		dt, err := getJSON[derivedTokens](ctx, s, key)
		if err != nil {
			return err
		}
		if dt == nil {
			continue
		}
		for child, exp := range dt.Children {
			if err := b.revokeJTILocked(ctx, s, child, exp, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// tidyDerived deletes the derived indexes in which nothing is live, each
// judged again under the lock exchanges add to them under, so a child
// filed meanwhile is never dropped.
func (b *backend) tidyDerived(ctx context.Context, s logical.Storage, now time.Time) error {
	names, err := s.List(ctx, derivedPrefix)
	if err != nil {
		return fmt.Errorf("listing %s: %w", derivedPrefix, err)
	}
	for _, n := range names {
		if !strings.HasSuffix(n, "/") {
			if err := b.tidyOneDerived(ctx, s, n, now); err != nil {
				return err
			}
			continue
		}
		actors, err := s.List(ctx, derivedIndexPath(n))
		if err != nil {
			return fmt.Errorf("listing %s: %w", derivedIndexPath(n), err)
		}
		for _, a := range actors {
			if err := b.tidyOneDerived(ctx, s, n+a, now); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *backend) tidyOneDerived(ctx context.Context, s logical.Storage, name string, now time.Time) error {
	b.revocationMu.Lock()
	defer b.revocationMu.Unlock()
	dt, err := getJSON[derivedTokens](ctx, s, derivedIndexPath(name))
	if err != nil || dt == nil || now.Before(dt.expiry()) {
		return err
	}
	if err := s.Delete(ctx, derivedIndexPath(name)); err != nil {
		return fmt.Errorf("deleting %s: %w", derivedIndexPath(name), err)
	}
	return nil
}

// expiry is when nothing in a derived index passes anywhere any more: the
// last child's exp and every verifier's leeway, the window in which a
// revocation of the subject must still reach it.
func (dt *derivedTokens) expiry() time.Time {
	var last time.Time
	for _, e := range dt.Children {
		last = maxTime(last, e)
	}
	return contract.RevokedUntil(last)
}
