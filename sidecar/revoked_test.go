package sidecar

import (
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// Revoked means revoked while any leeway could still accept the token: the
// revoked set keeps a jti past its exp, until contract.RevocationGrace
// after it, whether the sidecar learnt of it before exp (and prunes later)
// or reads the feed for the first time after exp (a restart).
func TestRevokedPastExpWithinLeeway(t *testing.T) {
	for name, tc := range map[string]struct {
		leeway   string
		past     time.Duration // how long ago the token's exp was
		learnt   time.Duration // when the sidecar read the entry, after exp
		want     string
		wantHeld bool
	}{
		"running, pruned after exp":       {"30s", 7 * time.Second, -time.Minute, contract.ReasonRevoked, true},
		"started after exp":               {"30s", 7 * time.Second, 7 * time.Second, contract.ReasonRevoked, true},
		"largest leeway, near its end":    {"60s", 58 * time.Second, 58 * time.Second, contract.ReasonRevoked, true},
		"past every leeway":               {"60s", 61 * time.Second, 61 * time.Second, contract.ReasonExpired, false},
		"short leeway, the grace is kept": {"5s", 7 * time.Second, 7 * time.Second, contract.ReasonExpired, true},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, func(c *Config) { c.Leeway = tc.leeway })
			c := f.claims("any read", -tc.past)
			token := f.sign(t, c)
			exp := c.ExpiresAt.Time
			entry := contract.FeedEntry{ID: c.ID, Type: "jwt", ExpiresAt: exp.UTC().Format(time.RFC3339)}
			f.sc.revocations.revoked.Apply([]contract.FeedEntry{entry}, exp.Add(tc.learnt))
			f.sc.revocations.revoked.Prune(time.Now()) // a later read of the feed
			if held := f.sc.revocations.revoked.Has(c.ID); held != tc.wantHeld {
				t.Fatalf("revoked set holds the jti %s past exp: %v, want %v", tc.past, held, tc.wantHeld)
			}
			for i := 0; i < 2; i++ { // the second one from the JWT cache
				w := send(f.sc.proxyHandler(), "GET", "/v1/items/1", "127.0.0.1:1", hdr("Authorization", "Bearer "+token))
				if w.Code != 401 || w.Header().Get(contract.HeaderReason) != tc.want {
					t.Fatalf("a revoked token %s past exp with leeway %s (try %d): %d %s, want 401 %s",
						tc.past, tc.leeway, i, w.Code, w.Header().Get(contract.HeaderReason), tc.want)
				}
			}
		})
	}
}
