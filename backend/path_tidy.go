package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// expiredKeyRetention is how long an expired key stays in storage, so that
// verify answers "expired" rather than "not_found" for a while after expiry.
const expiredKeyRetention = time.Hour

type tidyStats struct {
	KeysDeleted        int
	RevocationsDeleted int
}

func pathTidy(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "tidy$",
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{Callback: b.pathTidyWrite},
		},
		HelpSynopsis: "Remove expired keys and revocation entries now.",
		HelpDescription: fmt.Sprintf(`Tidy runs by itself every %s on the active node. It deletes keys that
expired more than %s ago (revoked or not) and revocation entries whose
credential has expired. Writing to this path runs it at once.`, tidyInterval, expiredKeyRetention),
	}
}

func (b *backend) pathTidyWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	st, err := b.tidy(ctx, req.Storage, time.Now())
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{
		"keys_deleted":        st.KeysDeleted,
		"revocations_deleted": st.RevocationsDeleted,
	}}, nil
}

func (b *backend) tidy(ctx context.Context, s logical.Storage, now time.Time) (tidyStats, error) {
	var st tidyStats
	ids, err := s.List(ctx, keyPrefix)
	if err != nil {
		return st, fmt.Errorf("tidy: listing keys: %w", err)
	}
	for _, id := range ids {
		k, err := b.getKey(ctx, s, id)
		if err != nil {
			return st, fmt.Errorf("tidy: %w", err)
		}
		if k == nil || now.Before(k.ExpiresAt.Add(expiredKeyRetention)) {
			continue
		}
		if err := s.Delete(ctx, keyPrefix+id); err != nil {
			return st, fmt.Errorf("tidy: deleting key %s: %w", id, err)
		}
		st.KeysDeleted++
	}

	names, err := s.List(ctx, revocationEntryPrefix)
	if err != nil {
		return st, fmt.Errorf("tidy: listing revocations: %w", err)
	}
	for _, name := range names {
		r, err := b.getRevocation(ctx, s, name)
		if err != nil {
			return st, fmt.Errorf("tidy: %w", err)
		}
		if r == nil || now.Before(r.ExpiresAt) {
			continue
		}
		if err := s.Delete(ctx, revocationEntryPrefix+name); err != nil {
			return st, fmt.Errorf("tidy: deleting revocation %s: %w", name, err)
		}
		st.RevocationsDeleted++
	}
	if st.KeysDeleted+st.RevocationsDeleted > 0 {
		b.Logger().Info("tidy removed expired entries", "keys", st.KeysDeleted, "revocations", st.RevocationsDeleted)
	}
	return st, nil
}
