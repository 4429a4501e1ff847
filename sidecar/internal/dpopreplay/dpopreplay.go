// Package dpopreplay remembers the DPoP proofs (RFC 9449) a verifier
// accepted, for as long as they could pass its freshness check, so that a
// proof is used once. It is bounded and fails closed: full, it refuses new
// proofs rather than forget a live one.
package dpopreplay

import (
	"errors"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
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
// requests otherwise allowed).
//
// So that cores adding proofs at once do not queue on one lock, the proofs
// are split in shards by a hash of their key, and the counts per lineage
// and per client in shards of their own. A proof's shard lock is held from
// its replay check to its insert, so of two adds of one key exactly one
// wins; the counts it is checked against are locked (always in the order
// proof shard, lineage shard, client shard) from their check to their
// increment, and the total is taken by compare-and-swap below size, so
// the quotas and the bound are exact too.
type Cache struct {
	size, perLineage, perClient int
	held                        atomic.Int64 // entries in all shards, live or not yet forgotten
	seed                        maphash.Seed
	proofs                      [shards]proofShard
	lineages                    [shards]counts[string]
	clients                     [shards]counts[netip.Prefix]
}

// shards is how many ways each part of the cache is split: far more than
// the cores a sidecar is given, so that two of them rarely meet.
const shards = 16

// proofShard holds the proofs whose key hashes to it. Every entry is kept
// for the same time from when it is added, so order is by forget time and
// the front expires first.
type proofShard struct {
	mu    sync.Mutex
	seen  map[string]time.Time
	order []entry
	head  int
	_     [64]byte // its own cache line: shards are written by different cores
}

type entry struct {
	key, lineage string
	client       netip.Prefix
	forget       time.Time
}

// counts are how many live proofs each lineage, or each client, holds.
type counts[K comparable] struct {
	mu sync.Mutex
	n  map[K]int
	_  [64]byte
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
	c := &Cache{size: size, perLineage: max(1, size/replayLineageShare), perClient: max(1, size/replayClientShare), seed: maphash.MakeSeed()}
	for i := range shards {
		c.proofs[i].seen = make(map[string]time.Time)
		c.lineages[i].n = make(map[string]int)
		c.clients[i].n = make(map[netip.Prefix]int)
	}
	return c
}

func (c *Cache) proofShard(key string) *proofShard {
	return &c.proofs[maphash.String(c.seed, key)%shards]
}

func (c *Cache) lineageCounts(lineage string) *counts[string] {
	return &c.lineages[maphash.String(c.seed, lineage)%shards]
}

func (c *Cache) clientCounts(client netip.Prefix) *counts[netip.Prefix] {
	return &c.clients[maphash.Comparable(c.seed, client)%shards]
}

// Seen says whether key is held and still live: a replay, refused before
// it can take anything (a rate-limit token) from the credential's holder.
func (c *Cache) Seen(key string, now time.Time) bool {
	s := c.proofShard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.seen[key]
	return ok && now.Before(f)
}

// Add records key for lineage and client until forget, checking and
// recording under its shard's lock, so that of two requests with one proof
// exactly one is recorded: ErrReplayed when it is held already, ErrFull,
// ErrLineageQuota or ErrClientQuota when there is no room.
func (c *Cache) Add(key, lineage string, client netip.Prefix, forget, now time.Time) error {
	s := c.proofShard(key)
	s.mu.Lock()
	c.expire(s, now)
	err := c.insert(s, key, lineage, client, forget)
	s.mu.Unlock()
	if err == nil || err == ErrReplayed {
		return err
	}
	// Each shard forgets its expired proofs when it is next written; until
	// then they still count. Before refusing for want of room, forget
	// them everywhere and decide again.
	c.sweep(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.insert(s, key, lineage, client, forget)
}

// insert records key if it is new and there is room; s is locked.
func (c *Cache) insert(s *proofShard, key, lineage string, client netip.Prefix, forget time.Time) error {
	if _, held := s.seen[key]; held {
		return ErrReplayed
	}
	l := c.lineageCounts(lineage)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[lineage] >= c.perLineage {
		return ErrLineageQuota
	}
	cl := c.clientCounts(client)
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.n[client] >= c.perClient {
		return ErrClientQuota
	}
	if !c.reserve() {
		return ErrFull
	}
	l.n[lineage]++
	cl.n[client]++
	s.seen[key] = forget
	s.order = append(s.order, entry{key: key, lineage: lineage, client: client, forget: forget})
	return nil
}

// reserve takes one place of size, if one is free.
func (c *Cache) reserve() bool {
	for {
		n := c.held.Load()
		if n >= int64(c.size) {
			return false
		}
		if c.held.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// expire forgets s's proofs that could no longer pass at now; s is
// locked.
func (c *Cache) expire(s *proofShard, now time.Time) {
	for s.head < len(s.order) && !now.Before(s.order[s.head].forget) {
		e := s.order[s.head]
		delete(s.seen, e.key)
		c.lineageCounts(e.lineage).release(e.lineage)
		c.clientCounts(e.client).release(e.client)
		c.held.Add(-1)
		s.order[s.head] = entry{}
		s.head++
	}
	if s.head > len(s.order)/2 {
		s.order = append(s.order[:0], s.order[s.head:]...)
		s.head = 0
	}
}

// sweep forgets expired proofs in every shard, one shard locked at a time.
func (c *Cache) sweep(now time.Time) {
	for i := range c.proofs {
		s := &c.proofs[i]
		s.mu.Lock()
		c.expire(s, now)
		s.mu.Unlock()
	}
}

func (n *counts[K]) release(k K) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.n[k]--; n.n[k] <= 0 {
		delete(n.n, k)
	}
}

// Len is how many proofs are held, live or not yet forgotten.
func (c *Cache) Len() int { return int(c.held.Load()) }
