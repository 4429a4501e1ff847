package backend

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// storedCache holds entries of storage parsed, by name, so that a hot path
// (every mint reads its role, every JWT mint and verification the config)
// reads them from memory instead of a storage round trip to Vault. What it
// returns is the caller's own copy (clone): an answer built from it may be
// changed by whoever holds the answer without changing what every later
// request reads. A writer reads storage itself (under the entry's lock)
// and drops the entry once written.
//
// Correct invalidation, in every place a node can learn of a change:
//   - this node's own writes call forget after the storage write returns
//     (whatever it returned), under the lock the write holds, so the next
//     read after the write's answer reads storage again;
//   - a write on another node reaches a performance standby or a
//     replicated cluster through the backend's Invalidate (backend.go),
//     which forgets the entry too;
//   - a leadership change in Vault OSS HA re-creates the backend on the new
//     active node, so its cache starts empty: nothing the old active node
//     cached survives it.
//
// A read that raced a write must not put back what the write replaced: a
// fill is kept only if no forget ran between its start and its end (gen).
// Missing entries are not cached: a name nobody wrote costs a read, and
// nobody can fill memory by asking for names.
//
// Where Vault's Invalidate may race a read of this node (a performance
// standby or secondary reading its storage as the change replicates), an
// entry could outlive the change it missed: no entry is kept longer than
// storedMaxAge, so such a miss lasts that long at most. With Vault's
// disable_cache set (off), nothing is kept: every get reads storage.
type storedCache[T any] struct {
	mu      sync.RWMutex
	gen     uint64
	entries map[string]storedEntry[T]
	// off: Vault's caching is disabled (disable_cache), read at Factory
	// since it changes only with a restart of Vault, and so of the plugin.
	off bool
	// load reads an entry from storage; nil, nil when there is none.
	load func(ctx context.Context, s logical.Storage, name string) (*T, error)
	// clone copies an entry deep enough that no slice or map is shared.
	clone func(*T) *T
}

// storedMaxAge is the longest an entry is kept: how long a change Vault's
// Invalidate raced on a performance standby or secondary may go unseen.
const storedMaxAge = 30 * time.Second

// storedEntry is an entry and when it was read from storage.
type storedEntry[T any] struct {
	v  *T
	at time.Time
}

func newStoredCache[T any](load func(context.Context, logical.Storage, string) (*T, error), clone func(*T) *T) *storedCache[T] {
	return &storedCache[T]{entries: map[string]storedEntry[T]{}, load: load, clone: clone}
}

// get is entry name, from memory or else from storage (then kept).
func (c *storedCache[T]) get(ctx context.Context, s logical.Storage, name string) (*T, error) {
	if c.off {
		return c.load(ctx, s, name)
	}
	c.mu.RLock()
	e, ok := c.entries[name]
	gen := c.gen
	c.mu.RUnlock()
	if ok && time.Since(e.at) < storedMaxAge {
		return c.clone(e.v), nil
	}
	at := time.Now() // before the read: the entry is at most as new
	v, err := c.load(ctx, s, name)
	if err != nil || v == nil {
		return v, err
	}
	c.mu.Lock()
	if c.gen == gen {
		c.entries[name] = storedEntry[T]{v, at}
	}
	c.mu.Unlock()
	return c.clone(v), nil
}

// forget drops entry name: storage holds something newer, or may.
func (c *storedCache[T]) forget(name string) {
	c.mu.Lock()
	c.gen++
	delete(c.entries, name)
	c.mu.Unlock()
}

// cloneRole is a role that shares no slice or map with r.
func cloneRole(r *role) *role {
	c := *r
	c.Scopes = slices.Clone(r.Scopes)
	c.DefaultScopes = slices.Clone(r.DefaultScopes)
	c.BoundCIDRs = slices.Clone(r.BoundCIDRs)
	c.Metadata = maps.Clone(r.Metadata)
	c.Audiences = slices.Clone(r.Audiences)
	c.AllowedSubjectRoles = slices.Clone(r.AllowedSubjectRoles)
	c.ApprovalScopes = slices.Clone(r.ApprovalScopes)
	return &c
}

// cloneConfig is a copy of c (it holds no slice or map).
func cloneConfig(c *config) *config {
	d := *c
	return &d
}
