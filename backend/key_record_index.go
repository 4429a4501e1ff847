package backend

import (
	"context"
	"encoding/hex"
	"slices"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// The record index: what a verifier keeps of each key (its record), held
// in memory on the active node, so that a snapshot page is read from
// memory instead of one storage read per key (over gRPC, some 75 µs each:
// most of a million-key sync). It is a cache of the storage, kept exact by
// the signal the change feed already relies on: every write to a key is
// followed by a change (keyChanges.add), and the change drops the key's
// record from the index in the same critical section that gives it its
// sequence number. So a snapshot page, whose listing's cursor is at most
// the newest change, never serves a record older than a change before that
// cursor, and a verifier following the changes from the cursor reads every
// later one.
//
// A key is indexed when it is minted (stored) or when a snapshot page
// reads it from storage (fill). A fill races with writes: its storage read
// may be older than a change recorded meanwhile. Each entry keeps the
// sequence number of its last change (changedAt), and a fill carries the
// newest sequence number taken before its read (seq0): it is kept only
// when no change came after seq0. Entries are dropped only by prune, which
// moves horizon past what it dropped; a fill older than the horizon does
// not add entries.
//
// The index is empty when the backend starts (a new active node after a
// leadership change, a reload); the first snapshot read fills it, sharing
// its page reads with every verifier reading at the same time.
//
// Its fields are guarded by the keyChanges mutex that holds it.
type keyIndex struct {
	recs map[[apikey.IDLength]byte]*indexedRecord
	// shapes are what many keys share, held once (as a verifier does).
	shapes  map[string]*indexedShape
	horizon uint64
	pruned  time.Time
}

// indexedRecord is one key's record; a record is replaced, never changed,
// so a page may use one after the lock is released. An entry that is not
// valid holds only changedAt: the key changed and is read from storage
// next time.
type indexedRecord struct {
	hash       [32]byte
	expires    int64 // Unix seconds
	replacedBy string
	revoked    bool
	suspended  bool
	valid      bool
	changedAt  uint64
	shape      *indexedShape
}

type indexedShape struct {
	refs int
	key  string
	contract.KeyShape
	// size bounds the JSON of a record of this shape, for page bounds.
	size int
}

func newKeyIndex() keyIndex {
	return keyIndex{recs: map[[apikey.IDLength]byte]*indexedRecord{}, shapes: map[string]*indexedShape{}}
}

// indexKey is the index's key of key_id id; ok is false for an id that is
// not a key_id, which the index neither holds nor serves: copied into 12
// bytes, "xai000000001" and "xai000000001/x" would be the same key.
func indexKey(id string) (k [apikey.IDLength]byte, ok bool) {
	if !apikey.ValidateID(id) {
		return k, false
	}
	copy(k[:], id)
	return k, true
}

// indexRecord is k's record in index form, with its shape not yet shared.
// It is made from k.record(), so that both forms say the same.
func indexRecord(k *keyEntry) *indexedRecord {
	kr := k.record()
	rec := &indexedRecord{expires: k.ExpiresAt.Unix(), replacedBy: kr.ReplacedBy, revoked: kr.Revoked, suspended: kr.Suspended, valid: true}
	copy(rec.hash[:], k.Hash)
	sh := &indexedShape{KeyShape: contract.KeyShape{Role: kr.Role, Tenant: kr.Tenant, Scopes: kr.Scopes, BoundCIDRs: kr.BoundCIDRs,
		JKT: kr.JKT, Budget: kr.Budget, RateLimit: kr.RateLimit}}
	sh.key, sh.size = shapeKey(&sh.KeyShape), recordSize(k)
	rec.shape = sh
	return rec
}

// shapeKey says what makes two keys' shapes the same.
func shapeKey(s *contract.KeyShape) string {
	var p contract.KeyRecordPacker
	p.AddShape(s)
	return string(p.Bytes())
}

// changedLocked records that key id changed, as change seq: its record is
// read from storage next time. The caller holds the lock.
func (x *keyIndex) changedLocked(id string, seq uint64) {
	k, ok := indexKey(id)
	if !ok {
		return
	}
	old := x.recs[k]
	x.dropShapeLocked(old)
	x.recs[k] = &indexedRecord{changedAt: seq}
}

// storedLocked indexes k, just stored and recorded as change seq, unless
// another change to it was recorded since it was stored: then the key is
// left to be read from storage. The caller holds the lock.
func (x *keyIndex) storedLocked(k *keyEntry, seq uint64) {
	key, ok := indexKey(k.ID)
	if !ok {
		return
	}
	if x.recs[key] != nil {
		x.changedLocked(k.ID, seq)
		return
	}
	rec := indexRecord(k)
	rec.changedAt = seq
	x.putLocked(key, rec)
}

// fillLocked indexes rec, read from storage after change seq0 was the
// newest, unless the key changed since, and returns the record to serve
// (rec, or the indexed copy sharing its shape). The caller holds the lock.
func (x *keyIndex) fillLocked(id string, rec *indexedRecord, seq0 uint64) *indexedRecord {
	key, ok := indexKey(id)
	if !ok {
		return rec
	}
	old := x.recs[key]
	if (old == nil && seq0 < x.horizon) || (old != nil && old.changedAt > seq0) {
		return rec
	}
	if old != nil {
		rec.changedAt = old.changedAt
	}
	x.dropShapeLocked(old)
	x.putLocked(key, rec)
	return rec
}

// putLocked stores rec under key, sharing its shape.
func (x *keyIndex) putLocked(key [apikey.IDLength]byte, rec *indexedRecord) {
	if sh := x.shapes[rec.shape.key]; sh != nil {
		rec.shape = sh
	} else {
		x.shapes[rec.shape.key] = rec.shape
	}
	rec.shape.refs++
	x.recs[key] = rec
}

func (x *keyIndex) dropShapeLocked(old *indexedRecord) {
	if old == nil || !old.valid {
		return
	}
	if old.shape.refs--; old.shape.refs == 0 {
		delete(x.shapes, old.shape.key)
	}
}

// lookupLocked returns the valid records of ids, nil where a key is not
// indexed.
func (x *keyIndex) lookupLocked(ids []string, out []*indexedRecord) {
	for i, id := range ids {
		out[i] = nil
		if k, ok := indexKey(id); ok {
			if rec := x.recs[k]; rec != nil && rec.valid {
				out[i] = rec
			}
		}
	}
}

// pruneLocked drops the records no snapshot serves any more (expired past
// the grace: the only keys tidy deletes) and the entries of keys that
// changed before the last prune and were never read since; fills older
// than now's newest change then index nothing new. The caller holds the
// lock; last is the newest change.
func (x *keyIndex) pruneLocked(now time.Time, last uint64) {
	gone := now.Add(-expiredRecordGrace).Unix()
	for k, rec := range x.recs {
		if (rec.valid && rec.expires < gone) || (!rec.valid && rec.changedAt <= x.horizon) {
			x.dropShapeLocked(rec)
			delete(x.recs, k)
		}
	}
	x.horizon, x.pruned = last, now
}

// packedRecord is rec of key_id id as a packed page holds it.
func (rec *indexedRecord) packed(id string, shape int) contract.PackedKeyRecord {
	return contract.PackedKeyRecord{KeyID: id, Hash: rec.hash, ExpiresAt: rec.expires, Revoked: rec.revoked,
		Suspended: rec.suspended, ReplacedBy: rec.replacedBy, Shape: shape}
}

// record is rec of key_id id as a JSON page holds it: what k.record()
// gave.
func (rec *indexedRecord) record(id string) contract.KeyRecord {
	sh := rec.shape
	return contract.KeyRecord{KeyID: id, Hash: hex.EncodeToString(rec.hash[:]), Role: sh.Role, Scopes: nonNil(sh.Scopes),
		BoundCIDRs: sh.BoundCIDRs, Tenant: sh.Tenant, ExpiresAt: time.Unix(rec.expires, 0).UTC().Format(time.RFC3339),
		Revoked: rec.revoked, Budget: sh.Budget, RateLimit: sh.RateLimit, JKT: sh.JKT, Suspended: rec.suspended, ReplacedBy: rec.replacedBy}
}

// passesShape says whether a key of shape sh passes f.
func (f recordFilter) passesShape(sh *indexedShape) bool {
	return (len(f.roles) == 0 || slices.Contains(f.roles, sh.Role)) &&
		(len(f.tenants) == 0 || slices.Contains(f.tenants, sh.Tenant))
}

// records returns the records of the keys ids, from the index or else
// from storage (indexing them); nil for a key not stored.
func (c *keyChanges) records(ctx context.Context, s logical.Storage, ids []string) ([]*indexedRecord, error) {
	out := make([]*indexedRecord, len(ids))
	c.mu.Lock()
	seq0 := c.last
	c.index.lookupLocked(ids, out)
	c.mu.Unlock()
	var missing []string
	var at []int
	for i, rec := range out {
		if rec == nil {
			missing, at = append(missing, ids[i]), append(at, i)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	keys, err := getKeys(ctx, s, missing)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, k := range keys {
		if k != nil && len(k.Hash) == 32 {
			out[at[j]] = c.index.fillLocked(missing[j], indexRecord(k), seq0)
		}
	}
	return out, nil
}

// pruneIndex prunes the index (pruneLocked) at most once per
// keyListingMaxAge.
func (c *keyChanges) pruneIndex(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.index.pruned) >= keyListingMaxAge {
		c.index.pruneLocked(now, c.last)
	}
}

// forgetIndex empties the index: the storage may no longer be what it saw
// (the mount is initialized again after a snapshot restore). It records a
// change of no key (as a tenant ceiling's: readers read the lists again)
// and moves the horizon to it, so that fills begun before index nothing.
func (c *keyChanges) forgetIndex() {
	c.add("", nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index = newKeyIndex()
	c.index.horizon = c.last
}
