package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

// revoker revokes credentials, whatever the route: it marks one revoked in
// storage, tells the key-record feed of a key, and appends the revocation
// to the feed, under the feed's lock; and it files the tokens exchanged
// from a token (exchange_derived.go) under that lock too, so that revoking
// a token finds them. It holds the two feeds, not the backend.
type revoker struct {
	feed *revocationFeed
	keys *keyRecordFeed
}

// revokedJTI marks a token revoked (revokedJTIPath), for verify.
type revokedJTI struct {
	ExpiresAt time.Time `json:"expires_at"`
}

// revokeJTI records a token revocation: the index verify reads, and the feed
// verifiers follow. An expired or already revoked jti is left alone.
func (rv *revoker) revokeJTI(ctx context.Context, s logical.Storage, jti string, exp time.Time) error {
	rv.feed.lock()
	defer rv.feed.unlock()
	return rv.revokeJTILocked(ctx, s, jti, exp, 0)
}

// revokeJTILocked is revokeJTI under the revocation feed's lock; it
// revokes the tokens exchanged from jti too (depth: how far down a
// delegation chain).
func (rv *revoker) revokeJTILocked(ctx context.Context, s logical.Storage, jti string, exp time.Time, depth int) error {
	now := time.Now().UTC()
	if !now.Before(contract.RevokedUntil(exp)) {
		// No verifier takes it any more, leeway included: nothing to
		// revoke. Until then a revocation counts: within its leeway an
		// expired token still passes.
		return nil
	}
	existing, err := s.Get(ctx, revokedJTIPath(jti))
	if err != nil {
		return fmt.Errorf("reading revoked jti: %w", err)
	}
	if existing != nil {
		return nil
	}
	// What was exchanged from it first: should that fail, the token is not
	// yet marked revoked, so Vault's retry of the revocation walks the
	// chain again instead of finding it done.
	if err := rv.revokeDerivedLocked(ctx, s, jti, depth); err != nil {
		return err
	}
	if err := putJSON(ctx, s, revokedJTIPath(jti), revokedJTI{ExpiresAt: exp}); err != nil {
		return err
	}
	return rv.feed.appendLocked(ctx, s, revocation{ID: jti, Type: secretTypeJWT, RevokedAt: now, ExpiresAt: exp})
}

// revokeKey marks a key revoked and publishes it in the revocation feed. It is
// the one way keys are revoked, whatever the route; revoking a missing,
// expired or already revoked key does nothing.
func (rv *revoker) revokeKey(ctx context.Context, s logical.Storage, id string) error {
	rv.feed.lock()
	defer rv.feed.unlock()

	k, err := getKey(ctx, s, id)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	if k == nil || k.revoked() || !now.Before(k.ExpiresAt) {
		return nil
	}
	k.RevokedAt = now
	if err := rv.keys.put(ctx, s, k); err != nil {
		return err
	}
	return rv.feed.appendLocked(ctx, s, revocation{ID: id, Type: secretTypeAPIKey, RevokedAt: now, ExpiresAt: k.ExpiresAt})
}

// revokeRotated revokes, through the feed, the rotated keys whose grace has
// ended. Periodic, on the active node; verifiers refuse them at their
// expires_at (the end of the grace) already.
func (rv *revoker) revokeRotated(ctx context.Context, s logical.Storage, now time.Time) error {
	ids, err := s.List(ctx, rotationPrefix)
	if err != nil {
		return fmt.Errorf("listing rotations: %w", err)
	}
	for _, id := range ids {
		rot, err := getJSON[rotation](ctx, s, rotationPath(id))
		if err != nil {
			return err
		}
		if rot != nil && now.Before(rot.GraceEnds) {
			continue
		}
		if err := rv.revokeKeyAtGraceEnd(ctx, s, id); err != nil {
			return err
		}
		if err := s.Delete(ctx, rotationPath(id)); err != nil {
			return fmt.Errorf("deleting rotation %s: %w", id, err)
		}
	}
	return nil
}

// revokeKeyAtGraceEnd is revokeKey for a key at the end of its grace,
// which revokeKey would leave alone as expired: the feed still says so, so
// that verifiers holding no record of it hear.
func (rv *revoker) revokeKeyAtGraceEnd(ctx context.Context, s logical.Storage, id string) error {
	rv.feed.lock()
	defer rv.feed.unlock()
	k, err := getKey(ctx, s, id)
	if err != nil || k == nil || k.revoked() {
		return err
	}
	now := time.Now().UTC()
	k.RevokedAt = now
	if err := rv.keys.put(ctx, s, k); err != nil {
		return err
	}
	// Kept in the feed for a minute past now, the soonest tidy drops it.
	return rv.feed.appendLocked(ctx, s, revocation{ID: id, Type: secretTypeAPIKey, RevokedAt: now, ExpiresAt: maxTime(k.ExpiresAt, now.Add(time.Minute))})
}
