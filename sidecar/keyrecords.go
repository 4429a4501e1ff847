package sidecar

import (
	"context"
	"errors"
	"time"
)

// errNewEpoch is a snapshot whose pages came from two epochs.
var errNewEpoch = errors.New("the key-record feed started a new epoch while the snapshot was read")

// followKeyRecords keeps the key replica current: a snapshot, then the
// changes since it, long-polled; a new epoch or a cursor the plugin no
// longer holds starts a new snapshot, while the records held keep serving.
func (sc *Sidecar) followKeyRecords(ctx context.Context) {
	for ctx.Err() == nil {
		cursor, epoch, err := sc.syncKeyRecords(ctx)
		if err != nil {
			if ctx.Err() == nil {
				sc.keyFeed.failed(sc.log, err)
			}
			sleep(ctx, sc.keyFeed.retryIn(sc.s.revocationPoll))
			continue
		}
		sc.followKeyChanges(ctx, cursor, epoch)
	}
}

// syncKeyRecords reads the whole snapshot and returns the cursor and epoch
// to follow the changes from.
func (sc *Sidecar) syncKeyRecords(ctx context.Context) (uint64, string, error) {
	r := sc.replica
	start := time.Now()
	gen := r.newGen()
	var cursor uint64
	var epoch, after string
	for pages := 0; ; pages++ {
		page, err := sc.vault.keyRecordsSnapshot(ctx, after, sc.s.keyFilter)
		if err != nil {
			sc.m.vaultCalls.WithLabelValues("key_records_snapshot", "error").Inc()
			return 0, "", err
		}
		sc.m.vaultCalls.WithLabelValues("key_records_snapshot", "ok").Inc()
		sc.keyFeed.succeeded(sc.log, false)
		switch {
		case pages == 0:
			cursor, epoch = page.Cursor, page.Epoch
		case page.Epoch != epoch:
			return 0, "", errNewEpoch
		}
		if bad := r.apply(page.Records, gen); bad > 0 {
			sc.log.Warn("key records the sidecar cannot read were dropped; those keys are refused", "count", bad)
		}
		// A page confirms nothing about the records held: while a new
		// snapshot is read, the replica serves only until max_stale after
		// the last change read, then keys go to Vault until it is done.
		r.setMetered(page.MeteredTenants)
		r.setSuspendedRoles(page.SuspendedRoles)
		if !page.More {
			break
		}
		after = page.NextID
	}
	r.sweep(gen)
	took := time.Since(start)
	sc.m.keySyncSeconds.Set(took.Seconds())
	sc.log.Info("read the key-record snapshot", "records", r.size(), "took", took.Round(time.Millisecond))
	return cursor, epoch, nil
}

// followKeyChanges applies the changes after cursor until the plugin says
// to read the snapshot again or ctx ends.
func (sc *Sidecar) followKeyChanges(ctx context.Context, cursor uint64, epoch string) {
	r := sc.replica
	defer r.pollUntil.Store(0)
	// The first read answers at once: the replica is not used until it
	// has the changes made while the snapshot was read. So does the first
	// after an error: only a poll sent after an answer may vouch for the
	// replica while it is out.
	var wait time.Duration
	var pruned time.Time
	for ctx.Err() == nil {
		asked := time.Now()
		if wait > 0 {
			r.pollUntil.Store(asked.Add(wait).UnixNano())
		}
		page, err := sc.vault.keyRecordChanges(ctx, cursor, epoch, wait, sc.s.keyFilter)
		if err != nil {
			// A poll that failed confirms nothing: Vault may have been
			// cut off, not down, and keys changing meanwhile.
			r.pollUntil.Store(0)
			r.failing.Store(true)
			sc.m.vaultCalls.WithLabelValues("key_records", "error").Inc()
			sc.keyFeed.failed(sc.log, err)
			wait = 0
			sleep(ctx, sc.keyFeed.retryIn(sc.s.revocationPoll))
			continue
		}
		r.failing.Store(false)
		sc.m.vaultCalls.WithLabelValues("key_records", "ok").Inc()
		if page.Resync || page.Epoch != epoch {
			sc.log.Info("the key-record feed started a new epoch or no longer holds the changes after the cursor; reading the snapshot again", "cursor", cursor, "last", page.Last)
			sc.m.keyResyncs.Inc()
			r.pollUntil.Store(0)
			return
		}
		if bad := r.apply(page.Records, r.gen); bad > 0 {
			sc.log.Warn("key records the sidecar cannot read were dropped; those keys are refused", "count", bad)
		}
		r.setMetered(page.MeteredTenants)
		r.setSuspendedRoles(page.SuspendedRoles)
		// Only a read that leaves nothing behind confirms the replica: a
		// long poll that came back was answered when the plugin read it,
		// an immediate read is as current as when it was sent. Stored
		// before the poll's own vouching ends, so there is no gap.
		if !page.More {
			current := asked
			if wait > 0 {
				current = time.Now()
			}
			r.currentAt.Store(current.UnixNano())
			r.synced.Store(true)
		}
		sc.keyFeed.succeeded(sc.log, !page.More)
		r.pollUntil.Store(0)
		if now := time.Now(); now.Sub(pruned) >= pruneInterval {
			r.prune(now)
			pruned = now
		}
		nothingNew := page.Next == cursor
		cursor = page.Next
		sc.paceFeed(ctx, sc.keyRecordsWait() > 0, page.More, wait, nothingNew, asked)
		if !nothingNew && !page.More {
			// Batch: under a stream of mints every change would wake
			// every sidecar into a read of its own. Revocations do not
			// wait for this; they come through their own feed.
			sleep(ctx, keyRecordsBatch)
		}
		wait = sc.keyRecordsWait()
	}
}

// keyRecordsBatch is how long the sidecar waits after a key-record read
// that brought changes before it reads again: at most about ten reads a
// second per sidecar while keys are minted without pause, at the price of
// up to this much delay for a record (a key used before its record
// arrives is asked of Vault once).
const keyRecordsBatch = 100 * time.Millisecond

// pruneInterval is how often expired records are dropped.
const pruneInterval = 30 * time.Second

// keyRecordsWait is how long the plugin may hold a key-record read: the
// long-poll wait, but short enough that in quiet times an answer confirms
// the replica at least three times per max_stale, so a Vault that goes away
// leaves keys verifying for most of max_stale, not for none of it.
func (sc *Sidecar) keyRecordsWait() time.Duration {
	return min(sc.s.revocationWait, (sc.s.maxStale / 3).Truncate(time.Second))
}

// paceFeed sleeps after a feed read when the next read should not follow
// at once: with no long polls, or when a long poll came back at once with
// nothing new (a plugin that does not hold reads). A read with more to
// come, or a long poll that waited, has paced itself.
// longPolls says whether reads of this feed long-poll at all.
func (sc *Sidecar) paceFeed(ctx context.Context, longPolls, more bool, wait time.Duration, nothingNew bool, asked time.Time) {
	if more {
		return
	}
	if !longPolls || (wait > 0 && nothingNew && time.Since(asked) < wait/2) {
		sleep(ctx, sc.s.revocationPoll)
	}
}
