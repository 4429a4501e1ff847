package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

// expiredKeyRetention is how long an expired key stays in storage, so that
// verify answers "expired" rather than "not_found" for a while after expiry.
const expiredKeyRetention = time.Hour

type tidyStats struct {
	KeysDeleted        int
	RevocationsDeleted int
	RefreshDeleted     int
	FamiliesDeleted    int
	MetersDeleted      int
}

func pathTidy(b *backend) *framework.Path {
	return &framework.Path{
		Pattern:      "tidy$",
		DisplayAttrs: pathAttrs(""),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("tidy", "", b.pathTidyWrite, answers(map[string]*framework.FieldSchema{
				"keys_deleted":           out(framework.TypeInt, "API keys deleted."),
				"revocations_deleted":    out(framework.TypeInt, "Revocation feed entries deleted."),
				"refresh_tokens_deleted": out(framework.TypeInt, "Refresh tokens deleted."),
				"families_deleted":       out(framework.TypeInt, "Token families deleted."),
				"budgets_deleted":        out(framework.TypeInt, "Credential budgets deleted."),
			})),
		},
		HelpSynopsis: "Remove expired keys and revocation entries now.",
		HelpDescription: fmt.Sprintf(`Tidy runs by itself every %s on the active node. It deletes keys that
expired more than %s ago (revoked or not), revocation entries whose
credential expired more than %s ago (the most leeway a verifier may allow
past a JWT's exp: until then a revoked token could pass one again), expired
refresh tokens and token families, the budgets of expired credentials, the
delegation chains (as Vault entities) of exchanged tokens past the same
leeway, the last use of keys it deleted, and key-usage report ids older than
an hour.
Writing to this path runs it at once.`, tidyInterval, expiredKeyRetention, contract.RevocationGrace),
	}
}

func (b *backend) pathTidyWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	st, err := b.tidy(ctx, req.Storage, time.Now())
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{
		"keys_deleted":           st.KeysDeleted,
		"revocations_deleted":    st.RevocationsDeleted,
		"refresh_tokens_deleted": st.RefreshDeleted,
		"families_deleted":       st.FamiliesDeleted,
		"budgets_deleted":        st.MetersDeleted,
	}}, nil
}

func (b *backend) tidy(ctx context.Context, s logical.Storage, now time.Time) (tidyStats, error) {
	var st tidyStats
	var err error
	if st.KeysDeleted, err = tidyPrefix(ctx, s, keyPrefix, func(k *keyEntry) bool {
		return !now.Before(k.ExpiresAt.Add(expiredKeyRetention))
	}); err != nil {
		return st, err
	}
	// Revocations outlive their credential by the most leeway a verifier
	// may allow: until then one could still take it for valid.
	if st.RevocationsDeleted, err = tidyPrefix(ctx, s, revocationEntryPrefix, func(r *revocation) bool {
		return !now.Before(contract.RevokedUntil(r.ExpiresAt))
	}); err != nil {
		return st, err
	}
	if st.RefreshDeleted, err = tidyPrefix(ctx, s, refreshPrefix, func(r *refreshEntry) bool {
		return !now.Before(r.ExpiresAt)
	}); err != nil {
		return st, err
	}
	if st.FamiliesDeleted, err = tidyPrefix(ctx, s, familyPrefix, func(f *family) bool {
		return !now.Before(f.ExpiresAt)
	}); err != nil {
		return st, err
	}
	if st.MetersDeleted, err = b.meters.tidy(ctx, s, now); err != nil {
		return st, err
	}
	if _, err = tidyPrefix(ctx, s, revokedJTIPrefix, func(r *revokedJTI) bool {
		return !now.Before(contract.RevokedUntil(r.ExpiresAt))
	}); err != nil {
		return st, err
	}
	if _, err = tidyPrefix(ctx, s, tokenFamilyPrefix, func(l *tokenFamily) bool {
		return !now.Before(l.ExpiresAt)
	}); err != nil {
		return st, err
	}
	if err = b.approvals.tidy(ctx, s, now, b.Logger()); err != nil {
		return st, err
	}
	// A chain is kept as long as its token could be taken for valid
	// (exp + leeway): an exchange never meets a token without it.
	if _, err = tidyPrefix(ctx, s, chainPrefix, func(c *entityChain) bool {
		return !now.Before(contract.RevokedUntil(c.ExpiresAt))
	}); err != nil {
		return st, err
	}
	if err = b.revoker.tidyDerived(ctx, s, now); err != nil {
		return st, err
	}
	if err = b.meters.tidyUsage(ctx, s, now); err != nil {
		return st, err
	}
	if st != (tidyStats{}) {
		b.Logger().Info("tidy removed expired entries", "keys", st.KeysDeleted, "revocations", st.RevocationsDeleted,
			"refresh_tokens", st.RefreshDeleted, "families", st.FamiliesDeleted, "budgets", st.MetersDeleted)
	}
	return st, nil
}

// tidyPrefix deletes the entries below prefix for which done says so.
func tidyPrefix[T any](ctx context.Context, s logical.Storage, prefix string, done func(*T) bool) (int, error) {
	return tidyLocked(ctx, s, prefix, nil, done)
}

// tidyLocked is tidyPrefix holding, while it reads and deletes an entry, the
// entry's lock from locks (when not nil), so that an entry changed
// meanwhile (a meter a renewal extends) is judged as it is.
func tidyLocked[T any](ctx context.Context, s logical.Storage, prefix string, locks []*locksutil.LockEntry, done func(*T) bool) (int, error) {
	names, err := s.List(ctx, prefix)
	if err != nil {
		return 0, fmt.Errorf("tidy: listing %s: %w", prefix, err)
	}
	n := 0
	for _, name := range names {
		deleted, err := tidyEntry(ctx, s, prefix+name, locks, done)
		if err != nil {
			return n, err
		}
		if deleted {
			n++
		}
	}
	return n, nil
}

func tidyEntry[T any](ctx context.Context, s logical.Storage, path string, locks []*locksutil.LockEntry, done func(*T) bool) (bool, error) {
	if locks != nil {
		l := locksutil.LockForKey(locks, path)
		l.Lock()
		defer l.Unlock()
	}
	v, err := getJSON[T](ctx, s, path)
	if err != nil {
		return false, fmt.Errorf("tidy: %w", err)
	}
	if v == nil || !done(v) {
		return false, nil
	}
	if err := s.Delete(ctx, path); err != nil {
		return false, fmt.Errorf("tidy: deleting %s: %w", path, err)
	}
	return true, nil
}
