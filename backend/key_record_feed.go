package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// The key-record feed lets a verifier hold what it needs of every live API
// key and verify keys without asking Vault: a snapshot, read in pages by
// key_id, then the changes since, by cursor.
//
// The changes are kept in memory on the active node, where every write to a
// key happens (mint, renewal, revocation, budget change), not in storage: a
// mint costs no extra storage write, and a change's record is read from
// storage when a verifier asks for it, so it is the key as it is then. The
// price is that the changes end with the process: each backend instance
// starts a new epoch, and a verifier that sees a new epoch reads the
// snapshot again (a leadership change, a plugin restart, a reload), keeping
// what it holds until the new snapshot replaces it.
const (
	// keyChangesHeld is how many changes the active node keeps; a verifier
	// further behind reads the snapshot again.
	keyChangesHeld = 1 << 17
	// A new snapshot starts from a listing of keys/ at most this old;
	// later pages of it may use an older one, down to keyListingMaxAge.
	keyListingFresh  = 15 * time.Second
	keyListingMaxAge = 10 * time.Minute
	// expiredRecordGrace: the snapshot still has keys expired this
	// recently, so that a verifier answers "expired" for them, as
	// keybroker/verify does, rather than "invalid".
	expiredRecordGrace = 5 * time.Minute
	// keyReadConcurrency is how many storage reads one page makes at once.
	keyReadConcurrency = 8
	// maxRecordFilter is the most roles or tenants a reader may name.
	maxRecordFilter = 100
	// keyChangesWakeGap: changes this close together wake the held reads
	// once (feedWaiters), at most this late. Revocations do not wait for
	// it: their own feed wakes at once.
	keyChangesWakeGap = 50 * time.Millisecond
)

// keyRecordFeed is the key-record feed: the changes made on this node, and
// the listing of keys/ its snapshots page through. Reads of the same page
// at the same time share one (reads). The records themselves are read
// from the storage each caller hands in.
type keyRecordFeed struct {
	changes *keyChanges
	// changeReads shares the reads of a page of changes after one wake;
	// changedKeys the keys read for them, between pages.
	changeReads feedReads
	changedKeys changedRecords
	changeLists pageLists
	reads       singleflight.Group
	// listMu guards list.
	listMu sync.Mutex
	list   *keyListing
}

func newKeyRecordFeed() *keyRecordFeed {
	return &keyRecordFeed{changes: newKeyChanges()}
}

// add records that key id changed ("" for a tenant ceiling or a role's
// suspension, which every page carries), once the change is stored.
func (kf *keyRecordFeed) add(id string) { kf.changes.add(id, nil) }

// put stores key k and records the change whether or not the write
// returned an error: a write that fails after part of a change is stored
// (a rotation's first key) or that is committed though it returned an
// error (a Raft apply that timed out for its caller) must not leave the
// index serving the record from before it. A write that returned an error
// may still commit later: the key is recorded once more after
// keyListingMaxAge, the longest a snapshot's listing lives.
func (kf *keyRecordFeed) put(ctx context.Context, s logical.Storage, k *keyEntry) error {
	err := putKey(ctx, s, k)
	kf.written(k.ID, err)
	return err
}

// written records that key id was written, the write returning err (see
// put), for a writer that records it later than the write itself.
func (kf *keyRecordFeed) written(id string, err error) {
	kf.add(id)
	if err != nil {
		time.AfterFunc(keyListingMaxAge, func() { kf.add(id) })
	}
}

// stored records that key k was just stored as a new key, and indexes its
// record (see keyIndex), so that no snapshot reads it from storage.
func (kf *keyRecordFeed) stored(k *keyEntry) { kf.changes.add(k.ID, k) }

// readChanges reads the page of changes after cursor after that pass f,
// waiting up to wait for a change when none follows it. A reader with a
// filter waits on past changes it would get nothing of (other roles'
// keys), so that a fleet of filtered verifiers is not answered for every
// change of every role.
func (kf *keyRecordFeed) readChanges(ctx context.Context, s logical.Storage, after uint64, epoch string, f recordFilter, wait time.Duration) (*changesAnswer, error) {
	c := kf.changes
	deadline := time.Now().Add(wait)
	// Taken before reading, so that a change during the read wakes the
	// wait below; the read shares only with reads that began after it.
	woken, gen := c.wake.next()
	a, err := kf.changesPageShared(ctx, s, after, epoch, f, gen)
	for err == nil && wait > 0 && !a.page.Resync && a.empty {
		// Nothing for this reader up to a.page.Next: its answer may start
		// there, whether it comes now (the wait ended) or later.
		if !a.page.More && !c.wake.hold(ctx, woken, time.Until(deadline)) {
			return a, nil
		}
		woken, gen = c.wake.next()
		a, err = kf.changesPageShared(ctx, s, a.page.Next, epoch, f, gen)
	}
	return a, err
}

// changesAnswer is a page of changes and its records encoded once: every
// reader it answers is sent the same records, and encoding them for each
// (the plugin's answer to Vault is JSON) is most of what a page costs the
// plugin when a fleet reads it.
type changesAnswer struct {
	page    *contract.KeyRecordsPage // shared, read only
	records json.RawMessage
	// empty: no record and no change of the lists after the cursor read,
	// nothing a reader would keep.
	empty bool
}

// readSnapshot reads the page of the snapshot after key_id afterID that
// passes f, from a listing of keys/ no older than maxAge.
func (kf *keyRecordFeed) readSnapshot(ctx context.Context, s logical.Storage, afterID string, f recordFilter, packed bool, maxAge time.Duration) (*contract.KeyRecordsPage, error) {
	l, err := kf.listingNoOlder(ctx, s, maxAge)
	if err != nil {
		return nil, err
	}
	// Every sidecar reading the snapshot (all of them, after a failover)
	// walks the same pages of the same listing: they share the reads.
	key := fmt.Sprintf("snapshot\x00%d\x00%s\x00%s\x00%v", l.at.UnixNano(), afterID, f, packed)
	v, err, _ := kf.reads.Do(key, func() (interface{}, error) {
		return kf.snapshotPage(context.WithoutCancel(ctx), s, l, afterID, f, packed)
	})
	if err != nil {
		return nil, err
	}
	return v.(*contract.KeyRecordsPage), nil
}

// keyChanges are the ids of the keys changed on this node, in order.
type keyChanges struct {
	epoch string
	wake  feedWaiters

	mu    sync.Mutex
	last  uint64
	ring  []string // ring[seq % keyChangesHeld]; "" marks a tenant ceiling change
	lists uint64   // changes of id "" so far
	// index is guarded by mu: a change drops a record in the same
	// critical section that numbers it (see keyIndex).
	index keyIndex
}

func newKeyChanges() *keyChanges {
	epoch, err := uuid.GenerateUUID()
	if err != nil {
		// Only a broken random source gets here; a time-based epoch is
		// still new for this process.
		epoch = "t" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return &keyChanges{epoch: epoch, wake: feedWaiters{gap: keyChangesWakeGap}, index: newKeyIndex()}
}

// add records that key id changed (after the change is stored) and wakes
// the readers waiting for a change; stored, when not nil, is the key as
// just stored by a mint, to index.
func (c *keyChanges) add(id string, stored *keyEntry) {
	c.mu.Lock()
	if c.ring == nil {
		c.ring = make([]string, keyChangesHeld)
	}
	c.last++
	c.ring[c.last%keyChangesHeld] = id
	switch {
	case id == "":
		c.lists++
	case stored != nil:
		c.index.storedLocked(stored, c.last)
	default:
		c.index.changedLocked(id, c.last)
	}
	c.mu.Unlock()
	c.wake.wake()
}

// listChanges is how many changes of id "" (the lists every page carries)
// were added so far.
func (c *keyChanges) listChanges() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lists
}

func (c *keyChanges) lastSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// listsChangedIn says whether a change of id "" (the lists every page
// carries) is among the changes after cursor after up to next.
func (c *keyChanges) listsChangedIn(after, next uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last-after > keyChangesHeld {
		return true // no longer held: assume so
	}
	for seq := after + 1; seq <= min(next, c.last); seq++ {
		if c.ring[seq%keyChangesHeld] == "" {
			return true
		}
	}
	return false
}

// keyChange is a changed key and the first change of it in a page.
type keyChange struct {
	id  string
	seq uint64
}

// since returns the distinct keys changed after cursor after, in at most n
// changes, with the cursor past them and the newest change. held is false
// when after is older than what is kept, or newer than any change (from
// another epoch).
func (c *keyChanges) since(after uint64, n int) (changed []keyChange, next, last uint64, held bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	last = c.last
	if after > last || last-after > keyChangesHeld {
		return nil, after, last, false
	}
	next = min(last, after+uint64(n))
	seen := make(map[string]bool, next-after)
	for seq := after + 1; seq <= next; seq++ {
		if id := c.ring[seq%keyChangesHeld]; id != "" && !seen[id] { // "": a tenant ceiling, read with every page
			seen[id] = true
			changed = append(changed, keyChange{id, seq})
		}
	}
	return changed, next, last, true
}

// keyListing is a sorted listing of keys/ for snapshots, shared by every
// reader, with the change cursor read just before it was taken: a key
// missing from it was stored later, and so changed after that cursor.
type keyListing struct {
	ids    []string
	cursor uint64
	at     time.Time
}

// changesPageShared is changesPage, with reads of the same cursor and
// filter after the same wake sharing one (feedReads): every verifier that
// is up to date waits at the same cursor, so a change wakes them all into
// one read. gen is the wake generation the reader saw: a read begun before
// a change it was not woken for must not answer it.
func (kf *keyRecordFeed) changesPageShared(ctx context.Context, s logical.Storage, after uint64, epoch string, f recordFilter, gen uint64) (*changesAnswer, error) {
	key := fmt.Sprintf("%d\x00%s\x00%s", after, epoch, f)
	v, err := kf.changeReads.read(key, gen, func() (interface{}, error) {
		page, lists, err := kf.changesPage(context.WithoutCancel(ctx), s, after, epoch, f)
		if err != nil {
			return nil, err
		}
		records, err := json.Marshal(page.Records)
		if err != nil {
			return nil, fmt.Errorf("encoding key records: %w", err)
		}
		return &changesAnswer{page, records, len(page.Records) == 0 && !lists}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*changesAnswer), nil
}

// changesPage reads the page of changes after cursor after; lists says
// whether the lists every page carries may have changed in it.
func (kf *keyRecordFeed) changesPage(ctx context.Context, s logical.Storage, after uint64, epoch string, f recordFilter) (page *contract.KeyRecordsPage, lists bool, err error) {
	c := kf.changes
	page = &contract.KeyRecordsPage{Epoch: c.epoch, Records: []contract.KeyRecord{}, MeteredTenants: []string{}, SuspendedRoles: []string{}}
	listCount := c.listChanges() // before the lists are read: see pageLists
	changed, next, last, held := c.since(after, contract.MaxKeyRecordPage)
	page.Next, page.Last = next, last
	if !held || (epoch != "" && epoch != c.epoch) {
		page.Resync, page.Next = true, after
		return page, true, nil
	}
	// A change of id "" is a change of the lists; since leaves it out.
	lists = len(changed) < int(next-after) && c.listsChangedIn(after, next)
	ids := make([]string, len(changed))
	for i, ch := range changed {
		ids[i] = ch.id
	}
	keys, err := kf.changedKeys.get(ctx, s, ids, next, last)
	if err != nil {
		return nil, false, err
	}
	size := 0
	for i, k := range keys {
		rec := contract.KeyRecord{KeyID: ids[i], Gone: true}
		if k != nil {
			if !f.passes(k) {
				continue
			}
			rec = k.record()
		}
		if size += recordSize(k); size > contract.MaxKeyRecordPageBytes && len(page.Records) > 0 {
			// The page ends before this key's first change; the
			// next read starts there.
			page.Next = changed[i].seq - 1
			break
		}
		page.Records = append(page.Records, rec)
	}
	page.More = page.Next < last
	// Every page says which tenants are metered and which roles are
	// suspended: a ceiling change or a role's suspension wakes readers,
	// and they learn it from the lists, not from records.
	if page.MeteredTenants, page.SuspendedRoles, err = kf.changeLists.get(ctx, s, listCount, f); err != nil {
		return nil, false, err
	}
	return page, lists, nil
}

// snapshotPage reads the page of listing l after key_id afterID, packed or
// as JSON: at most a page's records (MaxPackedKeyRecordPage packed,
// MaxKeyRecordPage in JSON), about MaxKeyRecordPageBytes, and five pages'
// worth of key_ids looked at. Records come from the index, or storage for
// keys it lacks.
func (kf *keyRecordFeed) snapshotPage(ctx context.Context, s logical.Storage, l *keyListing, afterID string, f recordFilter, packed bool) (*contract.KeyRecordsPage, error) {
	page := &contract.KeyRecordsPage{Epoch: kf.changes.epoch, Cursor: l.cursor, Records: []contract.KeyRecord{}}
	w := newSnapshotWriter(packed)
	i := sort.SearchStrings(l.ids, afterID)
	if i < len(l.ids) && l.ids[i] == afterID {
		i++
	}
	live := time.Now().Add(-expiredRecordGrace).Unix() // expired at or before: dropped
	scan := 5 * w.max
	for scanned := 0; i < len(l.ids) && scanned < scan && w.count() < w.max && !w.full; {
		ids := l.ids[i : i+min(w.max-w.count(), len(l.ids)-i, scan-scanned)]
		recs, err := kf.changes.records(ctx, s, ids)
		if err != nil {
			return nil, err
		}
		for j, rec := range recs {
			if rec != nil && f.passesShape(rec.shape) && rec.expires > live && !w.add(ids[j], rec) {
				break
			}
			page.NextID = ids[j]
			i++
			scanned++
		}
	}
	page.More = i < len(l.ids)
	w.finish(page)
	var err error
	if page.MeteredTenants, err = s.List(ctx, tenantPrefix); err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	if page.SuspendedRoles, err = suspendedRoles(ctx, s, f); err != nil {
		return nil, err
	}
	return page, nil
}

// recordSize bounds the JSON size of k's record (nil: a gone record),
// counting each character of its variable strings as the six of their
// longest escape.
func recordSize(k *keyEntry) int {
	n := 400 // key_id, hash, expiry, limits and the field names
	if k == nil {
		return n
	}
	for _, s := range k.Scopes {
		n += 6*len(s) + 3
	}
	for _, c := range k.BoundCIDRs {
		n += 6*len(c) + 3
	}
	return n + 6*(len(k.Role)+len(k.Tenant))
}

// listingNoOlder returns the shared listing of keys/, taking a new one
// when it is older than maxAge. Readers asking at the same time share one.
func (kf *keyRecordFeed) listingNoOlder(ctx context.Context, s logical.Storage, maxAge time.Duration) (*keyListing, error) {
	kf.listMu.Lock()
	l := kf.list
	kf.listMu.Unlock()
	if l != nil && time.Since(l.at) < maxAge {
		return l, nil
	}
	v, err, _ := kf.reads.Do("listing", func() (interface{}, error) {
		cursor := kf.changes.lastSeq() // before the listing: see keyListing
		ids, err := s.List(context.WithoutCancel(ctx), keyPrefix)
		if err != nil {
			return nil, fmt.Errorf("listing keys: %w", err)
		}
		sort.Strings(ids)
		l := &keyListing{ids: ids, cursor: cursor, at: time.Now()}
		kf.listMu.Lock()
		kf.list = l
		kf.listMu.Unlock()
		return l, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*keyListing), nil
}

// dropIdleListing lets the listing go once no snapshot could use it, and
// prunes the record index (expired records) as often.
func (kf *keyRecordFeed) dropIdleListing(now time.Time) {
	kf.changes.pruneIndex(now)
	kf.listMu.Lock()
	defer kf.listMu.Unlock()
	if kf.list != nil && now.Sub(kf.list.at) >= keyListingMaxAge {
		kf.list = nil
	}
}

// getKeys reads the keys with these ids, a few at a time; a missing key is
// nil in its place.
func getKeys(ctx context.Context, s logical.Storage, ids []string) ([]*keyEntry, error) {
	keys := make([]*keyEntry, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(keyReadConcurrency)
	for i, id := range ids {
		if !apikey.ValidateID(id) {
			continue // not written by us
		}
		g.Go(func() error {
			k, err := getKey(gctx, s, id)
			keys[i] = k
			return err
		})
	}
	return keys, g.Wait()
}
