package backend

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// The tokens exchanged from a token, filed under it (derived/<jti>/...)
// before they are minted, so that revoking a token revokes what was
// exchanged from it; the last step of token/exchange mints into that slot.

// derivedTokens are the tokens exchanged from one token: jti -> exp.
type derivedTokens struct {
	Children map[string]time.Time `json:"children"`
}

// maxDerived bounds the live tokens one actor exchanged from one token, and
// so what one revocation walks per actor.
const maxDerived = 1000

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
	if msg, err := b.revoker.reserveDerived(ctx, req.Storage, slot, now.Add(ttl)); msg != "" || err != nil {
		return exchangeError(msg, nil), err
	}
	// The chain is read only when the new token is exchanged in turn, so
	// it is filed once the slot is taken, before the token exists, and
	// outside the revocation lock: every exchange and revocation waits on
	// that lock, and a write less under it is a round trip less for each.
	if slot.chain != nil {
		err = putJSON(ctx, req.Storage, chainPath(jti), &entityChain{Entities: slot.chain, ExpiresAt: now.Add(ttl)})
	}
	var resp *logical.Response
	if err == nil {
		resp, err = b.issueTokenAs(ctx, req, g, jti, now, ttl, "", meterID)
	}
	if err != nil || resp.IsError() {
		if rerr := b.revoker.releaseDerived(ctx, req.Storage, slot); rerr != nil {
			b.Logger().Warn("releasing an exchange slot after a failed mint", "error", rerr)
		}
		return resp, err
	}
	resp.Data["issued_token_type"] = tokenTypeAccessToken
	resp.Data["actors"] = (&jwtverify.Claims{Act: g.Act}).Actors()
	return resp, nil
}

// derivedSlot is one exchanged token as its subject's index files it: the
// subject token's jti (parent), the Vault entity that exchanged it (actor)
// and its own jti; and its chain's Vault entities, kept under chainPrefix
// by issueExchanged (nil when the subject token's are not known: the new
// token's are not either).
type derivedSlot struct {
	parent, actor, jti string
	chain              []string
}

// reserveDerived files a token about to be exchanged from s.parent, under
// the lock revocations take: a revocation of the subject that came first is
// seen here (the exchange is refused), and one that comes after finds the
// new jti to revoke, minted or not yet. msg is why the exchange is refused;
// nothing is then written.
func (rv *revoker) reserveDerived(ctx context.Context, st logical.Storage, s derivedSlot, exp time.Time) (string, error) {
	rv.feed.lock()
	defer rv.feed.unlock()
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
	return "", putJSON(ctx, st, key, dt)
}

// releaseDerived gives back a slot whose token was not minted after all.
func (rv *revoker) releaseDerived(ctx context.Context, st logical.Storage, s derivedSlot) error {
	rv.feed.lock()
	defer rv.feed.unlock()
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
// holds the revocation feed's lock.
func (rv *revoker) revokeDerivedLocked(ctx context.Context, s logical.Storage, jti string, depth int) error {
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
			if err := rv.revokeJTILocked(ctx, s, child, exp, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// tidyDerived deletes the derived indexes in which nothing is live, each
// judged again under the lock exchanges add to them under, so a child
// filed meanwhile is never dropped.
func (rv *revoker) tidyDerived(ctx context.Context, s logical.Storage, now time.Time) error {
	names, err := s.List(ctx, derivedPrefix)
	if err != nil {
		return fmt.Errorf("listing %s: %w", derivedPrefix, err)
	}
	for _, n := range names {
		if !strings.HasSuffix(n, "/") {
			if err := rv.tidyOneDerived(ctx, s, n, now); err != nil {
				return err
			}
			continue
		}
		actors, err := s.List(ctx, derivedIndexPath(n))
		if err != nil {
			return fmt.Errorf("listing %s: %w", derivedIndexPath(n), err)
		}
		for _, a := range actors {
			if err := rv.tidyOneDerived(ctx, s, n+a, now); err != nil {
				return err
			}
		}
	}
	return nil
}

func (rv *revoker) tidyOneDerived(ctx context.Context, s logical.Storage, name string, now time.Time) error {
	rv.feed.lock()
	defer rv.feed.unlock()
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
