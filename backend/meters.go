package backend

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// meters owns the locks of metering: credentials' budgets and their
// tenants' ceilings (path_budget.go), cluster-wide rate windows
// (path_rate.go) and key use (path_key_usage.go). What they lock is in
// the storage each caller hands in. Budget accounting, rate windows and
// key use, like revocation, only change on the active node, so
// process-local locks are enough.
type meters struct {
	// meterLocks serialise changes to one meter (a credential's or
	// refresh family's budget and its reservations), tenantLocks to one
	// tenant's entry; a tenant's lock is only ever taken while holding a
	// meter's or none, and the two sets are apart so that a meter and its
	// tenant never share a lock.
	meterLocks, tenantLocks []*locksutil.LockEntry
	// rateLocks serialise changes to one lineage's cluster-wide rate
	// window.
	rateLocks []*locksutil.LockEntry
	// usageLocks serialise changes to one shard of key use,
	// usageReportLocks the recording of one key-usage report_id (held
	// while its shards' locks are taken).
	usageLocks, usageReportLocks []*locksutil.LockEntry
	// queues hold the reserves and reports waiting for a meter's lock
	// (meter_batch.go).
	queues meterQueues
}

func newMeters() *meters {
	return &meters{meterLocks: locksutil.CreateLocks(), tenantLocks: locksutil.CreateLocks(), rateLocks: locksutil.CreateLocks(),
		usageLocks: locksutil.CreateLocks(), usageReportLocks: locksutil.CreateLocks()}
}

// tidy removes the meters and rate windows that are over by now, each
// under its lock, and says how many meters went.
func (mt *meters) tidy(ctx context.Context, s logical.Storage, now time.Time) (int, error) {
	// A meter goes only when its credential has expired and its period
	// has ended: before that, deleting it would hand a refreshed family
	// (or a renewed key) a fresh budget within the same period.
	deleted, err := tidyLocked(ctx, s, meterPrefix, mt.meterLocks, func(m *meter) bool {
		return !now.Before(m.ExpiresAt) && !now.Before(m.PeriodStart.Add(m.Period))
	})
	if err != nil {
		return deleted, err
	}
	_, err = tidyLocked(ctx, s, ratePrefix, mt.rateLocks, func(w *rateWindow) bool {
		return !now.Before(w.end())
	})
	return deleted, err
}

// lockMeter is loadMeter holding the lock of the meter it finds; unlock
// must be called, also when the meter is nil. Links never change once
// written, so the path found before locking is the one loaded after.
func (mt *meters) lockMeter(ctx context.Context, s logical.Storage, id string) (m *meter, path string, unlock func(), err error) {
	path = meterPath(id)
	link, err := getJSON[meter](ctx, s, path)
	if err != nil {
		return nil, "", nil, err
	}
	if link != nil && link.Link != "" {
		path = meterPath(link.Link)
	}
	l := locksutil.LockForKey(mt.meterLocks, path)
	l.Lock()
	if m, path, err = loadMeter(ctx, s, id); err != nil {
		l.Unlock()
		return nil, "", nil, err
	}
	return m, path, l.Unlock, nil
}

// lockTenant holds the lock of tenant name's entry. Taken after a meter's
// lock, never before one.
func (mt *meters) lockTenant(name string) func() {
	l := locksutil.LockForKey(mt.tenantLocks, name)
	l.Lock()
	return l.Unlock
}
