package backend

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

// revocationFeed is the feed of revoked credentials: it numbers entries
// as they are appended, wakes the reads waiting for one, and shares the
// reads of one cursor. Entries and the counter are in storage, handed in
// by each caller.
type revocationFeed struct {
	// mu serialises revocations so that feed sequence numbers are handed
	// out in commit order: a reader at cursor N never misses an entry
	// committed later with a smaller number. Writes only happen on the
	// active node (standbys forward them), so a process-local lock is
	// enough. Callers hold it across the change they revoke for (lock),
	// not only the append.
	mu sync.Mutex
	// wake wakes long-polling feed reads on each append; reads makes
	// the reads of one cursor after one wake share a storage read.
	wake  feedWaiters
	reads feedReads
}

// lock takes mu for a revocation and the change it records.
func (f *revocationFeed) lock() { f.mu.Lock() }

func (f *revocationFeed) unlock() { f.mu.Unlock() }

// lockOnce takes mu and returns its unlock, which may be called early and
// again (once deferred).
func (f *revocationFeed) lockOnce() (unlock func()) {
	f.mu.Lock()
	return sync.OnceFunc(f.mu.Unlock)
}

// revocation is one entry of the feed. Entries are stored under a zero-padded
// sequence number, so storage lists them in feed order.
type revocation struct {
	Seq       uint64    `json:"seq"`
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	RevokedAt time.Time `json:"revoked_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// feedCounter is the feed's last sequence number and its epoch. An object,
// not a bare number: logical's JSON decoding takes a leading digit of some
// values for a compression marker.
type feedCounter struct {
	Last uint64 `json:"last"`
	// Epoch is new each time the mount starts on an active node (enable,
	// unseal, leadership change, snapshot restore). A verifier that sees it
	// change reads the feed again from 0: storage may have gone back (a
	// restored snapshot, a re-enabled mount) and sequence numbers it has
	// passed may be given again.
	Epoch string `json:"epoch,omitempty"`
}

// newEpoch starts a new epoch of the feed.
func (f *revocationFeed) newEpoch(ctx context.Context, s logical.Storage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := getJSON[feedCounter](ctx, s, revocationSeqPath)
	if err != nil {
		return err
	}
	if c == nil {
		c = &feedCounter{}
	}
	if c.Epoch, err = uuid.GenerateUUID(); err != nil {
		return fmt.Errorf("generating feed epoch: %w", err)
	}
	if err := putJSON(ctx, s, revocationSeqPath, c); err != nil {
		return err
	}
	// Readers learn the epoch now, and no page of the old one is shared.
	f.wake.wake()
	return nil
}

// appendLocked gives r the next sequence number and stores it. The caller
// holds mu (lock).
func (f *revocationFeed) appendLocked(ctx context.Context, s logical.Storage, r revocation) error {
	c, err := getJSON[feedCounter](ctx, s, revocationSeqPath)
	if err != nil {
		return err
	}
	if c == nil {
		c = &feedCounter{}
	}
	c.Last++
	r.Seq = c.Last
	// The counter is written first: if the entry write then fails, a number
	// is skipped, which readers tolerate; reusing one they have passed would not.
	if err := putJSON(ctx, s, revocationSeqPath, c); err != nil {
		return err
	}
	if err := putJSON(ctx, s, revocationPath(r.Seq), r); err != nil {
		return err
	}
	f.wake.wake()
	return nil
}

// maxFeedWait is the longest a feed read may wait for a new entry, well
// inside Vault's default max_request_duration (90s).
const maxFeedWait = 30 * time.Second

// feedWaiters lets long-polling feed reads wait for the next entry on the
// active node, where entries are appended: one channel, closed on each
// append, that every waiting read selects on. No goroutine or storage read
// per waiter per entry; see pages for the reads after a wake.
//
// With gap set, appends closer together than gap share one wake, at most
// gap after the first: each wake runs every waiting read (thousands, with
// a fleet of verifiers) for whatever it finds, which under a stream of
// changes costs more than the changes.
type feedWaiters struct {
	gap time.Duration

	mu sync.Mutex
	ch chan struct{}
	// gen counts the appends, at once, whether or not their wake is
	// due: a read begun after an append never shares a page read before
	// it, so a read that does not wait sees every append before it.
	gen     uint64
	last    time.Time // the last wake
	pending bool      // a wake is due within gap

	// held counts the reads waiting for a wake now.
	held atomic.Int64
}

// hold waits for woken, as waitForWake does, counted in held.
func (f *feedWaiters) hold(ctx context.Context, woken <-chan struct{}, wait time.Duration) bool {
	f.held.Add(1)
	defer f.held.Add(-1)
	return waitForWake(ctx, woken, wait)
}

// next is closed when the next entry is appended; gen is the appends so
// far, for reads to share only with reads that began after the same one.
func (f *feedWaiters) next() (ch <-chan struct{}, gen uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch == nil {
		f.ch = make(chan struct{})
	}
	return f.ch, f.gen
}

func (f *feedWaiters) generation() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen
}

// wake counts an append and wakes the waiting reads, now or, within gap of
// the last wake, once gap has passed since it.
func (f *feedWaiters) wake() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	if f.pending {
		return // the wake due will see this entry too
	}
	if wait := f.gap - time.Since(f.last); wait > 0 {
		f.pending = true
		time.AfterFunc(wait, func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.pending = false
			f.wakeLocked()
		})
		return
	}
	f.wakeLocked()
}

func (f *feedWaiters) wakeLocked() {
	f.last = time.Now()
	if f.ch != nil {
		close(f.ch)
		f.ch = nil
	}
}

// waitForWake says whether woken closed within wait (false: the wait or
// the request ended first).
func waitForWake(ctx context.Context, woken <-chan struct{}, wait time.Duration) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-woken:
		return true
	case <-timer.C:
	case <-ctx.Done():
	}
	return false
}

// read answers a read of the feed after a cursor, waiting up to wait for
// an entry when none follows it.
func (f *revocationFeed) read(ctx context.Context, s logical.Storage, after int64, wait time.Duration) (map[string]interface{}, error) {
	// Taken before reading, so that an entry appended during the read
	// wakes the wait below; the read shares only with reads that began
	// after it.
	woken, gen := f.wake.next()
	data, err := f.pages(ctx, s, after, gen)
	if err != nil || wait == 0 || data["next"].(uint64) != uint64(after) || data["last"].(uint64) < uint64(after) {
		return data, err
	}
	if !f.wake.hold(ctx, woken, wait) {
		return data, nil
	}
	return f.pages(ctx, s, after, f.wake.generation())
}

// pages reads a page after a cursor. Reads of the same cursor after the
// same wake share one storage read (feedReads): every verifier that is up
// to date waits at the same cursor, so an append wakes them all into one
// read, not one each. gen is the wake generation the reader saw: a read
// begun before an append it was not woken for must not answer it.
func (f *revocationFeed) pages(ctx context.Context, s logical.Storage, after int64, gen uint64) (map[string]interface{}, error) {
	v, err := f.reads.read(strconv.FormatInt(after, 10), gen, func() (interface{}, error) {
		return readFeedPage(context.WithoutCancel(ctx), s, after)
	})
	if err != nil {
		return nil, err
	}
	return maps.Clone(v.(map[string]interface{})), nil // the entries are shared, read only
}

// readFeedPage reads the page of the feed after a cursor from storage.
func readFeedPage(ctx context.Context, s logical.Storage, after int64) (map[string]interface{}, error) {
	// The counter first: an entry appended after it is read is seen next
	// time, and last never runs ahead of what the list shows.
	c, err := getJSON[feedCounter](ctx, s, revocationSeqPath)
	if err != nil {
		return nil, err
	}
	if c == nil {
		c = &feedCounter{}
	}
	if c.Last == uint64(after) {
		// Up to date, as every verifier waiting is: nothing to list.
		return feedPage(nil, c.Last, false, c), nil
	}
	names, err := s.List(ctx, revocationEntryPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing revocations: %w", err)
	}
	// Names are zero-padded, so lexical order is feed order.
	start := sort.SearchStrings(names, fmt.Sprintf("%020d", after+1))
	now := time.Now()
	next := uint64(after)
	out := make([]map[string]interface{}, 0)
	more := false
	for _, name := range names[start:] {
		if len(out) == contract.MaxRevocationPage {
			more = true
			break
		}
		seq, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue // not written by us
		}
		next = seq
		r, err := getRevocation(ctx, s, name)
		if err != nil {
			return nil, err
		}
		// Kept past expiry for as long as a verifier's leeway may still
		// accept the credential: one starting now must learn of it.
		if r == nil || !now.Before(contract.RevokedUntil(r.ExpiresAt)) {
			continue
		}
		out = append(out, map[string]interface{}{
			"id":         r.ID,
			"type":       r.Type,
			"revoked_at": r.RevokedAt.UTC().Format(time.RFC3339Nano),
			"expires_at": r.ExpiresAt.UTC().Format(time.RFC3339),
		})
	}
	return feedPage(out, next, more, c), nil
}

func feedPage(revocations []map[string]interface{}, next uint64, more bool, c *feedCounter) map[string]interface{} {
	if revocations == nil {
		revocations = make([]map[string]interface{}, 0)
	}
	return map[string]interface{}{
		"revocations": revocations,
		"next":        next,
		"more":        more,
		"epoch":       c.Epoch,
		"last":        c.Last,
	}
}

func getRevocation(ctx context.Context, s logical.Storage, name string) (*revocation, error) {
	return getJSON[revocation](ctx, s, revocationEntryPrefix+name)
}
