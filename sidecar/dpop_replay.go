package sidecar

import (
	"sync"
	"time"
)

// replayCache remembers the DPoP proofs accepted while they could still
// pass the iat check, to refuse a second use. It is bounded: holding size
// live entries, it refuses new proofs (the request fails closed with 503)
// rather than forget one that could still be replayed. Every entry is kept
// for the same time from when it is added, so order is by forget time and
// the front expires first.
type replayCache struct {
	mu    sync.Mutex
	size  int
	seen  map[string]time.Time
	order []replayEntry
	head  int
}

type replayEntry struct {
	key    string
	forget time.Time
}

func newReplayCache(size int) *replayCache {
	return &replayCache{size: size, seen: make(map[string]time.Time)}
}

// add records key until forget; errReplayed when it is held already,
// errReplayFull when there is no room.
func (c *replayCache) add(key string, forget, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.head < len(c.order) && !now.Before(c.order[c.head].forget) {
		e := c.order[c.head]
		if f, ok := c.seen[e.key]; ok && !now.Before(f) {
			delete(c.seen, e.key)
		}
		c.order[c.head] = replayEntry{}
		c.head++
	}
	if c.head > len(c.order)/2 {
		c.order = append(c.order[:0], c.order[c.head:]...)
		c.head = 0
	}
	if f, ok := c.seen[key]; ok && now.Before(f) {
		return errReplayed
	}
	if len(c.seen) >= c.size {
		return errReplayFull
	}
	c.seen[key] = forget
	c.order = append(c.order, replayEntry{key: key, forget: forget})
	return nil
}
