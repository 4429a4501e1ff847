package backend

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// changedRecords keeps the keys read for pages of changes, so that a fleet
// of verifiers reading the same changes reads each key from storage once,
// not once per verifier.
//
// After a burst of mints every verifier reads the same changes, but each
// from its own cursor (they polled at different moments), so their pages
// differ and feedReads cannot share them; without this each key would be
// read once per verifier: thousands of storage reads per mint.
//
// A key read after change number through had been added holds every
// change to it up to through (a change is added once it is stored), so it
// answers any page of changes ending at or before through. A page ending
// later reads the key again: a change of it may be newer than the read.
type changedRecords struct {
	mu   sync.Mutex
	keys map[string]changedRecord
}

type changedRecord struct {
	k       *keyEntry // nil: not stored; shared, read only
	through uint64
}

// maxChangedRecords bounds the keys kept: about the changes a verifier a
// few seconds behind reads during a burst of mints. When full, the keys
// are dropped all at once; they are read again as needed.
const maxChangedRecords = 1 << 14

// get returns the keys with these ids (nil for one not stored) for a page
// of changes ending at next, reading from storage those not kept as of
// next or later; through is the newest change added before the call.
func (r *changedRecords) get(ctx context.Context, s logical.Storage, ids []string, next, through uint64) ([]*keyEntry, error) {
	keys := make([]*keyEntry, len(ids))
	var missing []string
	var at []int
	r.mu.Lock()
	for i, id := range ids {
		if c, ok := r.keys[id]; ok && c.through >= next {
			keys[i] = c.k
			continue
		}
		missing = append(missing, id)
		at = append(at, i)
	}
	r.mu.Unlock()
	if len(missing) == 0 {
		return keys, nil
	}
	read, err := getKeys(ctx, s, missing)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys == nil || len(r.keys)+len(missing) > maxChangedRecords {
		r.keys = make(map[string]changedRecord, len(missing))
	}
	for j, i := range at {
		keys[i] = read[j]
		if c, ok := r.keys[missing[j]]; !ok || c.through < through {
			r.keys[missing[j]] = changedRecord{read[j], through}
		}
	}
	return keys, nil
}

// pageLists keeps the lists every page of changes carries (the tenants
// with a ceiling, the suspended roles) between pages: reading them for
// every page of every verifier is two storage listings per verifier per
// page. They change only with a change of id "" (keyChanges.lists counts
// those), which is added once the change is stored; a list read after
// the count was n holds until the count moves, and at most
// feedShareMaxAge.
type pageLists struct {
	mu                 sync.Mutex
	ok                 bool
	count              uint64
	at                 time.Time
	tenants, suspended []string // shared, read only
}

// get returns the metered tenants and the suspended roles of f's roles;
// count is keyChanges.lists before the call.
func (l *pageLists) get(ctx context.Context, s logical.Storage, count uint64, f recordFilter) (tenants, suspended []string, err error) {
	l.mu.Lock()
	ok := l.ok && l.count == count && time.Since(l.at) < feedShareMaxAge
	tenants, suspended = l.tenants, l.suspended
	l.mu.Unlock()
	if !ok {
		began := time.Now()
		if tenants, err = s.List(ctx, tenantPrefix); err != nil {
			return nil, nil, fmt.Errorf("listing tenants: %w", err)
		}
		if suspended, err = suspendedRoles(ctx, s, recordFilter{}); err != nil {
			return nil, nil, err
		}
		if tenants == nil {
			tenants = []string{}
		}
		l.mu.Lock()
		if !l.ok || count >= l.count {
			l.ok, l.count, l.at, l.tenants, l.suspended = true, count, began, tenants, suspended
		}
		l.mu.Unlock()
	}
	if len(f.roles) > 0 {
		suspended = slices.DeleteFunc(slices.Clone(suspended), func(n string) bool { return !slices.Contains(f.roles, n) })
	}
	return tenants, suspended, nil
}
