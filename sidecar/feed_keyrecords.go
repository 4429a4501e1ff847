package sidecar

import (
	"context"
	"errors"
	"fmt"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
)

// keyRecordFeed follows the plugin's key-record feed into the key replica
// it owns: a snapshot, then the changes since it, long-polled. The decision
// core reads it as a feedGate (known); the API key kind reads the replica.
type keyRecordFeed struct {
	opts    keyRecordOptions
	source  keyRecordSource
	replica *keyReplica
	health  *feedHealth
	m       keyRecordMetrics
	log     hclog.Logger
}

// keyRecordSource reads the feed: the snapshot a page at a time (after a
// key_id), and the changes after a cursor of an epoch, long-polled like
// revocations. vaultClient is one.
type keyRecordSource interface {
	keyRecordsSnapshot(ctx context.Context, afterID string, f keyFilter) (*contract.KeyRecordsPage, error)
	keyRecordChanges(ctx context.Context, after uint64, epoch string, wait time.Duration, f keyFilter) (*contract.KeyRecordsPage, error)
}

// keyRecordOptions are the settings the feed reads, made once.
type keyRecordOptions struct {
	mount  string    // the plugin's mount, for the paths a 403 names
	filter keyFilter // the keys this sidecar subscribes to
	// wait is how long a read of the changes may be held (0: no long
	// poll); see keyRecordsWait.
	wait time.Duration
	poll time.Duration // revocation_poll_interval: the pace without long polls, and the retry
}

// keyRecordMetrics are what the feed counts: its reads of Vault (ops
// key_records_snapshot and key_records), how long a snapshot took, and the
// snapshots read again.
type keyRecordMetrics struct {
	vaultCalls  *prometheus.CounterVec
	syncSeconds prometheus.Gauge
	resyncs     prometheus.Counter
}

func newKeyRecordFeed(o keyRecordOptions, source keyRecordSource, m keyRecordMetrics, log hclog.Logger) *keyRecordFeed {
	return &keyRecordFeed{opts: o, source: source, m: m, log: log, replica: newKeyReplica(),
		health: newFeedHealth("key_records", o.mount+"/"+contract.PathKeyRecords+" and "+o.mount+"/"+contract.PathKeyRecordsSnapshot, "read")}
}

// keyRecordsWait is how long the plugin may hold a key-record read: the
// revocation feed's long-poll wait, but short enough that in quiet times an
// answer confirms the replica at least three times per max_stale, so a
// Vault that goes away leaves keys verifying for most of max_stale, not for
// none of it.
func keyRecordsWait(revocationWait, maxStale time.Duration) time.Duration {
	return min(revocationWait, (maxStale / 3).Truncate(time.Second))
}

// keyRecordsBatch is how long the sidecar waits after a key-record read
// that brought changes before it reads again: at most about ten reads a
// second per sidecar while keys are minted without pause, at the price of
// up to this much delay for a record (a key used before its record
// arrives is asked of Vault once).
const keyRecordsBatch = 100 * time.Millisecond

// pruneInterval is how often expired records are dropped.
const pruneInterval = 30 * time.Second

// errNewEpoch is a snapshot whose pages came from two epochs.
var errNewEpoch = errors.New("the key-record feed started a new epoch while the snapshot was read")

// known says whether decisions may rely on the replica's feed (feedGate).
func (f *keyRecordFeed) known() bool { return f.health.known() }

// follow keeps the replica current until ctx ends: a snapshot, then the
// changes since it; a new epoch or a cursor the plugin no longer holds
// starts a new snapshot, while the records held keep serving.
func (f *keyRecordFeed) follow(ctx context.Context) {
	for ctx.Err() == nil {
		cursor, epoch, err := f.sync(ctx)
		if err != nil {
			if ctx.Err() == nil {
				f.health.failed(f.log, err)
			}
			sleep(ctx, f.health.retryIn(f.opts.poll))
			continue
		}
		f.followChanges(ctx, cursor, epoch)
	}
}

// sync reads the whole snapshot and returns the cursor and epoch to follow
// the changes from.
func (f *keyRecordFeed) sync(ctx context.Context) (uint64, string, error) {
	r := f.replica
	start := time.Now()
	gen := r.newGen()
	var cursor uint64
	var epoch, after string
	for pages := 0; ; pages++ {
		page, err := f.source.keyRecordsSnapshot(ctx, after, f.opts.filter)
		if err != nil {
			f.m.vaultCalls.WithLabelValues("key_records_snapshot", "error").Inc()
			return 0, "", err
		}
		f.m.vaultCalls.WithLabelValues("key_records_snapshot", "ok").Inc()
		f.health.succeeded(f.log, false)
		switch {
		case pages == 0:
			cursor, epoch = page.Cursor, page.Epoch
		case page.Epoch != epoch:
			return 0, "", errNewEpoch
		}
		// A page confirms nothing about the records held: while a new
		// snapshot is read, the replica serves only until max_stale after
		// the last change read, then keys go to Vault until it is done.
		if err := f.storeSnapshotPage(page, gen); err != nil {
			return 0, "", err
		}
		if !page.More {
			break
		}
		after = page.NextID
	}
	r.sweep(gen)
	took := time.Since(start)
	f.m.syncSeconds.Set(took.Seconds())
	f.log.Info("read the key-record snapshot", "records", r.size(), "took", took.Round(time.Millisecond))
	return cursor, epoch, nil
}

// storeSnapshotPage stores a snapshot page, JSON or packed; a page of a
// format the sidecar does not read fails the snapshot (it asks only for
// formats it reads, so only a broken plugin sends one).
func (f *keyRecordFeed) storeSnapshotPage(page *contract.KeyRecordsPage, gen uint32) error {
	switch page.Format {
	case "":
		f.store(page, gen)
		return nil
	case contract.FormatPacked1:
		bad, err := f.replica.applyPacked(page.Packed, gen)
		if err != nil {
			return err
		}
		f.warnBad(bad)
		f.storeLists(page)
		return nil
	}
	return fmt.Errorf("a key-record snapshot page of format %q, which this sidecar does not read", page.Format)
}

// store puts a page's records, metered tenants and suspended roles in the
// replica, as of snapshot generation gen.
func (f *keyRecordFeed) store(page *contract.KeyRecordsPage, gen uint32) {
	f.warnBad(f.replica.apply(page.Records, gen))
	f.storeLists(page)
}

// storeLists puts a page's metered tenants and suspended roles in the
// replica.
func (f *keyRecordFeed) storeLists(page *contract.KeyRecordsPage) {
	f.replica.setMetered(page.MeteredTenants)
	f.replica.setSuspendedRoles(page.SuspendedRoles)
}

func (f *keyRecordFeed) warnBad(bad int) {
	if bad > 0 {
		f.log.Warn("key records the sidecar cannot read were dropped; those keys are refused", "count", bad)
	}
}

// followChanges applies the changes after cursor until the plugin says to
// read the snapshot again or ctx ends.
func (f *keyRecordFeed) followChanges(ctx context.Context, cursor uint64, epoch string) {
	r := f.replica
	defer r.pollUntil.Store(0)
	// The first read answers at once: the replica is not used until it
	// has the changes made while the snapshot was read. So does the first
	// after an error: only a poll sent after an answer may vouch for the
	// replica while it is out.
	var wait time.Duration
	var pruned time.Time
	for ctx.Err() == nil {
		asked := time.Now()
		page, err := f.readChanges(ctx, cursor, epoch, wait, asked)
		if err != nil {
			wait = 0
			sleep(ctx, f.health.retryIn(f.opts.poll))
			continue
		}
		if page.Resync || page.Epoch != epoch {
			f.log.Info("the key-record feed started a new epoch or no longer holds the changes after the cursor; reading the snapshot again", "cursor", cursor, "last", page.Last)
			f.m.resyncs.Inc()
			r.pollUntil.Store(0)
			return
		}
		f.applyChanges(page, wait, asked)
		if now := time.Now(); now.Sub(pruned) >= pruneInterval {
			r.prune(now)
			pruned = now
		}
		nothingNew := page.Next == cursor
		cursor = page.Next
		paceFeed(ctx, f.opts.poll, f.opts.wait > 0, page.More, wait, nothingNew, asked)
		if !nothingNew && !page.More {
			// Batch: under a stream of mints every change would wake
			// every sidecar into a read of its own. Revocations do not
			// wait for this; they come through their own feed.
			sleep(ctx, keyRecordsBatch)
		}
		wait = f.opts.wait
	}
}

// readChanges reads the changes after cursor, sent at asked; while a long
// poll is out it vouches for the replica until its wait ends.
func (f *keyRecordFeed) readChanges(ctx context.Context, cursor uint64, epoch string, wait time.Duration, asked time.Time) (*contract.KeyRecordsPage, error) {
	r := f.replica
	if wait > 0 {
		r.pollUntil.Store(asked.Add(wait).UnixNano())
	}
	page, err := f.source.keyRecordChanges(ctx, cursor, epoch, wait, f.opts.filter)
	if err != nil {
		// A poll that failed confirms nothing: Vault may have been
		// cut off, not down, and keys changing meanwhile.
		r.pollUntil.Store(0)
		r.failing.Store(true)
		f.m.vaultCalls.WithLabelValues("key_records", "error").Inc()
		f.health.failed(f.log, err)
		return nil, err
	}
	r.failing.Store(false)
	f.m.vaultCalls.WithLabelValues("key_records", "ok").Inc()
	return page, nil
}

// applyChanges stores a page of changes read with wait, sent at asked, and
// confirms the replica current when the page left nothing behind.
func (f *keyRecordFeed) applyChanges(page *contract.KeyRecordsPage, wait time.Duration, asked time.Time) {
	r := f.replica
	f.store(page, r.gen)
	// Only a read that leaves nothing behind confirms the replica: a
	// long poll that came back was answered when the plugin read it, an
	// immediate read is as current as when it was sent. Stored before the
	// poll's own vouching ends, so there is no gap.
	if !page.More {
		current := asked
		if wait > 0 {
			current = time.Now()
		}
		r.currentAt.Store(current.UnixNano())
		r.synced.Store(true)
	}
	f.health.succeeded(f.log, !page.More)
	r.pollUntil.Store(0)
}
