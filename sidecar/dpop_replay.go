package sidecar

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// replayCache remembers the DPoP proofs accepted while they could still
// pass the iat check, to refuse a second use. It is bounded: holding size
// live entries, it refuses new proofs (the request fails closed with 503)
// rather than forget one that could still be replayed. So that no one
// client can take the room others need, a credential lineage may hold at
// most perLineage entries and a client address (an IPv4 address, an IPv6
// /64: what one host is given) at most perClient, both well below size:
// filling it takes size/perClient addresses and size/perLineage bound
// credentials, each passing every check (proofs are recorded only for
// requests otherwise allowed). Every entry is kept for the same time from
// when it is added, so order is by forget time and the front expires
// first.
type replayCache struct {
	mu                          sync.Mutex
	size, perLineage, perClient int
	seen                        map[string]time.Time
	byLineage                   map[string]int
	byClient                    map[netip.Prefix]int
	order                       []replayEntry
	head                        int
}

type replayEntry struct {
	key, lineage string
	client       netip.Prefix
	forget       time.Time
}

// The quotas as fractions of the cache: a lineage 1/replayLineageShare of
// it, a client address 1/replayClientShare.
const (
	replayLineageShare = 32
	replayClientShare  = 8
)

var (
	errReplayed     = errors.New("dpop proof jti seen before")
	errReplayFull   = errors.New("dpop replay cache full")
	errReplayMany   = errors.New("too many live dpop proofs for one credential")
	errReplayClient = errors.New("too many live dpop proofs from one client address")
)

func newReplayCache(size int) *replayCache {
	return &replayCache{size: size, perLineage: max(1, size/replayLineageShare), perClient: max(1, size/replayClientShare),
		seen: make(map[string]time.Time), byLineage: make(map[string]int), byClient: make(map[netip.Prefix]int)}
}

// has says whether key is held and still live: a replay, refused before
// it can take anything (a rate-limit token) from the credential's holder.
func (c *replayCache) has(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.seen[key]
	return ok && now.Before(f)
}

// add records key for lineage and client until forget, checking and
// recording under one lock, so that of two requests with one proof exactly
// one is recorded: errReplayed when it is held already, errReplayFull,
// errReplayMany or errReplayClient when there is no room.
func (c *replayCache) add(key, lineage string, client netip.Prefix, forget, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.head < len(c.order) && !now.Before(c.order[c.head].forget) {
		e := c.order[c.head]
		delete(c.seen, e.key)
		if c.byLineage[e.lineage]--; c.byLineage[e.lineage] <= 0 {
			delete(c.byLineage, e.lineage)
		}
		if c.byClient[e.client]--; c.byClient[e.client] <= 0 {
			delete(c.byClient, e.client)
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
	case c.byLineage[lineage] >= c.perLineage:
		return errReplayMany
	case c.byClient[client] >= c.perClient:
		return errReplayClient
	case len(c.seen) >= c.size:
		return errReplayFull
	}
	c.seen[key] = forget
	c.byLineage[lineage]++
	c.byClient[client]++
	c.order = append(c.order, replayEntry{key: key, lineage: lineage, client: client, forget: forget})
	return nil
}
