package revoked

import (
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// The revoked set forgets an entry only RevocationGrace after its expiry,
// and keeps one whose expiry it cannot read.
func TestRevokedSetPrune(t *testing.T) {
	now := time.Now()
	var r Set
	r.m = map[string]time.Time{}
	r.Apply([]contract.FeedEntry{
		{ID: "live", ExpiresAt: now.Add(time.Hour).Format(time.RFC3339)},
		{ID: "in-grace", ExpiresAt: now.Add(-contract.RevocationGrace + 2*time.Second).Format(time.RFC3339)},
		{ID: "gone", ExpiresAt: now.Add(-contract.RevocationGrace - time.Second).Format(time.RFC3339)},
		{ID: "unreadable", ExpiresAt: "soon"},
	}, now)
	for id, want := range map[string]bool{"live": true, "in-grace": true, "gone": false, "unreadable": true} {
		if r.Has(id) != want {
			t.Errorf("%s held: %v, want %v", id, r.Has(id), want)
		}
	}
}
