// Package dpopreplay remembers the DPoP proofs (RFC 9449) a verifier
// accepted, for as long as they could pass its freshness check, so that a
// proof is used once. It is bounded and fails closed: full, it refuses new
// proofs rather than forget a live one.
package dpopreplay

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// Cache remembers the DPoP proofs accepted while they could still
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
type Cache struct {
	mu                          sync.Mutex
	size, perLineage, perClient int
	seen                        map[string]time.Time
	byLineage                   map[string]int
	byClient                    map[netip.Prefix]int
	order                       []entry
	head                        int
}

type entry struct {
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
	ErrReplayed     = errors.New("dpop proof jti seen before")
	ErrFull         = errors.New("dpop replay cache full")
	ErrLineageQuota = errors.New("too many live dpop proofs for one credential")
	ErrClientQuota  = errors.New("too many live dpop proofs from one client address")
)

// New holds up to size proofs.
func New(size int) *Cache {
	return &Cache{size: size, perLineage: max(1, size/replayLineageShare), perClient: max(1, size/replayClientShare),
		seen: make(map[string]time.Time), byLineage: make(map[string]int), byClient: make(map[netip.Prefix]int)}
}

// Seen says whether key is held and still live: a replay, refused before
// it can take anything (a rate-limit token) from the credential's holder.
func (c *Cache) Seen(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.seen[key]
	return ok && now.Before(f)
}

// Add records key for lineage and client until forget, checking and
// recording under one lock, so that of two requests with one proof exactly
// one is recorded: ErrReplayed when it is held already, ErrFull,
// ErrLineageQuota or ErrClientQuota when there is no room.
func (c *Cache) Add(key, lineage string, client netip.Prefix, forget, now time.Time) error {
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
		c.order[c.head] = entry{}
		c.head++
	}
	if c.head > len(c.order)/2 {
		c.order = append(c.order[:0], c.order[c.head:]...)
		c.head = 0
	}
	switch {
	case !c.seen[key].IsZero():
		return ErrReplayed
	case c.byLineage[lineage] >= c.perLineage:
		return ErrLineageQuota
	case c.byClient[client] >= c.perClient:
		return ErrClientQuota
	case len(c.seen) >= c.size:
		return ErrFull
	}
	c.seen[key] = forget
	c.byLineage[lineage]++
	c.byClient[client]++
	c.order = append(c.order, entry{key: key, lineage: lineage, client: client, forget: forget})
	return nil
}

// Len is how many proofs are held, live or not yet forgotten.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
