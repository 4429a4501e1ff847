package sidecar

import (
	"sync"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// revokedSet is the set of revoked credential ids from the feed, each with
// when it may be forgotten: contract.RevocationGrace past each credential's
// expiry (no leeway accepts it then).
type revokedSet struct {
	mu sync.RWMutex
	m  map[string]time.Time
}

func newRevokedSet() *revokedSet { return &revokedSet{m: map[string]time.Time{}} }

// apply adds a page of the feed and forgets what no verifier could accept
// any more. An entry is kept until contract.RevocationGrace past its
// credential's expiry, not until the expiry: a JWT passes until exp +
// leeway (at most that grace), and an API key's expiry is Vault's clock,
// which this one may trail.
func (r *revokedSet) apply(entries []contract.FeedEntry, now time.Time) {
	for _, e := range entries {
		until := now.Add(24 * time.Hour) // unreadable: keep it rather than forget it
		if exp, err := time.Parse(time.RFC3339, e.ExpiresAt); err == nil {
			until = contract.RevokedUntil(exp)
		}
		r.add(e.ID, until)
	}
	r.prune(now)
}

// add holds id as revoked until the given time.
func (r *revokedSet) add(id string, until time.Time) {
	r.mu.Lock()
	r.m[id] = until
	r.mu.Unlock()
}

func (r *revokedSet) has(id string) bool {
	r.mu.RLock()
	_, ok := r.m[id]
	r.mu.RUnlock()
	return ok
}

func (r *revokedSet) prune(now time.Time) {
	r.mu.Lock()
	for id, until := range r.m {
		if !now.Before(until) {
			delete(r.m, id)
		}
	}
	r.mu.Unlock()
}

func (r *revokedSet) size() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.m)
}
