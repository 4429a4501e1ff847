package revoked

import (
	"sync"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// Set is the set of revoked credential ids from the feed, each with when it
// may be forgotten: contract.RevocationGrace past each credential's expiry
// (no leeway accepts it then). It is safe for concurrent use: the feed
// writes it, every decision reads it.
type Set struct {
	mu sync.RWMutex
	m  map[string]time.Time
}

// New returns an empty set.
func New() *Set { return &Set{m: map[string]time.Time{}} }

// Apply adds a page of the feed and forgets what no verifier could accept
// any more. An entry is kept until contract.RevocationGrace past its
// credential's expiry, not until the expiry: a JWT passes until exp +
// leeway (at most that grace), and an API key's expiry is Vault's clock,
// which this one may trail.
func (r *Set) Apply(entries []contract.FeedEntry, now time.Time) {
	for _, e := range entries {
		until := now.Add(24 * time.Hour) // unreadable: keep it rather than forget it
		if exp, err := time.Parse(time.RFC3339, e.ExpiresAt); err == nil {
			until = contract.RevokedUntil(exp)
		}
		r.Add(e.ID, until)
	}
	r.Prune(now)
}

// Add holds id as revoked until the given time.
func (r *Set) Add(id string, until time.Time) {
	r.mu.Lock()
	r.m[id] = until
	r.mu.Unlock()
}

// Has says whether id is revoked.
func (r *Set) Has(id string) bool {
	r.mu.RLock()
	_, ok := r.m[id]
	r.mu.RUnlock()
	return ok
}

// Prune forgets every id whose time to be forgotten has come.
func (r *Set) Prune(now time.Time) {
	r.mu.Lock()
	for id, until := range r.m {
		if !now.Before(until) {
			delete(r.m, id)
		}
	}
	r.mu.Unlock()
}

// Size is how many ids the set holds.
func (r *Set) Size() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.m)
}
