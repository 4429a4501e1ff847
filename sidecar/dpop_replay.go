package sidecar

import (
	"errors"
	"sync"
	"time"
)

// replayCache remembers the DPoP proofs accepted while they could still
// pass the iat check, to refuse a second use. It is bounded: holding size
// live entries, it refuses new proofs (the request fails closed with 503)
// rather than forget one that could still be replayed; and one credential
// lineage may hold at most quota of them, so that one busy or hostile
// client cannot fill it for everyone. Every entry is kept for the same time
// from when it is added, so order is by forget time and the front expires
// first.
type replayCache struct {
	mu          sync.Mutex
	size, quota int
	seen        map[string]time.Time
	held        map[string]int // live entries by owner (lineage)
	order       []replayEntry
	head        int
}

type replayEntry struct {
	key, owner string
	forget     time.Time
}

var (
	errReplayed   = errors.New("dpop proof jti seen before")
	errReplayFull = errors.New("dpop replay cache full")
	errReplayMany = errors.New("too many live dpop proofs for one credential")
)

func newReplayCache(size int) *replayCache {
	return &replayCache{size: size, quota: max(1, size/8), seen: make(map[string]time.Time), held: make(map[string]int)}
}

// has says whether key is held and still live: a replay, refused before
// it can take anything (a rate-limit token) from the credential's holder.
func (c *replayCache) has(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.seen[key]
	return ok && now.Before(f)
}

// add records key for owner until forget: errReplayed when it is held
// already, errReplayFull or errReplayMany when there is no room.
func (c *replayCache) add(key, owner string, forget, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.head < len(c.order) && !now.Before(c.order[c.head].forget) {
		e := c.order[c.head]
		delete(c.seen, e.key)
		if c.held[e.owner]--; c.held[e.owner] <= 0 {
			delete(c.held, e.owner)
		}
		c.order[c.head] = replayEntry{}
		c.head++
	}
	if c.head > len(c.order)/2 {
		c.order = append(c.order[:0], c.order[c.head:]...)
		c.head = 0
	}
	switch {
	case !c.seen[key].IsZero():
		return errReplayed
	case len(c.seen) >= c.size:
		return errReplayFull
	case c.held[owner] >= c.quota:
		return errReplayMany
	}
	c.seen[key] = forget
	c.held[owner]++
	c.order = append(c.order, replayEntry{key: key, owner: owner, forget: forget})
	return nil
}
