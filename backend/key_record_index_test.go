package backend

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
)

// snapshotPacked reads every snapshot page packed, and returns the records
// by key_id as a JSON page would give them.
func (e *testEnv) snapshotPacked() map[string]contract.KeyRecord {
	e.t.Helper()
	recs := map[string]contract.KeyRecord{}
	for after := ""; ; {
		p := e.keyRecords("key-records/snapshot", map[string]interface{}{"after_id": after, "format": contract.FormatPacked1})
		if p.Format != contract.FormatPacked1 || len(p.Records) != 0 {
			e.t.Fatalf("a packed page: format %q, %d JSON records", p.Format, len(p.Records))
		}
		for _, r := range unpackPage(e.t, p.Packed) {
			if _, dup := recs[r.KeyID]; dup {
				e.t.Fatalf("snapshot gave %s twice", r.KeyID)
			}
			recs[r.KeyID] = r
		}
		if !p.More {
			return recs
		}
		after = p.NextID
	}
}

// unpackPage turns a packed page back into JSON records.
func unpackPage(t testing.TB, packed string) []contract.KeyRecord {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(packed)
	if err != nil {
		t.Fatal(err)
	}
	shapes, recs, err := contract.UnpackKeyRecords(raw)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]contract.KeyRecord, len(recs))
	for i, r := range recs {
		sh := shapes[r.Shape]
		out[i] = contract.KeyRecord{KeyID: r.KeyID, Hash: hex.EncodeToString(r.Hash[:]), Role: sh.Role, Scopes: sh.Scopes,
			BoundCIDRs: sh.BoundCIDRs, Tenant: sh.Tenant, ExpiresAt: time.Unix(r.ExpiresAt, 0).UTC().Format(time.RFC3339),
			Revoked: r.Revoked, Budget: sh.Budget, RateLimit: sh.RateLimit, JKT: sh.JKT, Suspended: r.Suspended, ReplacedBy: r.ReplacedBy}
	}
	return out
}

// storedRecords are the records of every stored key, read from storage.
func (e *testEnv) storedRecords() map[string]contract.KeyRecord {
	e.t.Helper()
	ids, err := e.storage.List(context.Background(), keyPrefix)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]contract.KeyRecord{}
	for _, id := range ids {
		k, err := getKey(context.Background(), e.storage, id)
		if err != nil || k == nil {
			e.t.Fatalf("key %s: %v", id, err)
		}
		// Through JSON, as a verifier reads both.
		b, err := json.Marshal(k.record())
		if err != nil {
			e.t.Fatal(err)
		}
		var r contract.KeyRecord
		if err := json.Unmarshal(b, &r); err != nil {
			e.t.Fatal(err)
		}
		out[id] = r
	}
	return out
}

// mintVaried mints keys of every kind a record tells apart: limits, bounds,
// a tenant, DPoP-bound, and then revoked, suspended, rotated, renewed.
func (e *testEnv) mintVaried(n int) []string {
	e.t.Helper()
	e.createRole("web", map[string]interface{}{"scopes": "read,write", "default_scopes": "read", "bound_cidrs": "10.0.0.0/8,fd00::/8",
		"tenant": "acme", "budget": 100, "rate_limit": 5, "ttl": "1h", "max_ttl": "4h"})
	e.createRole("plain", map[string]interface{}{"orphan": true})
	var ids []string
	var leases []*logical.Secret
	for i := 0; i < n; i++ {
		data := map[string]interface{}{}
		role := "plain"
		switch i % 4 {
		case 1:
			role, data["scopes"] = "web", "read,write"
		case 2:
			role, data["dpop_jkt"] = "web", dpoptest.NewKey(e.t, "ES256").JKT
		case 3:
			role, data["budget"] = "web", i
		}
		resp := e.mint(role, data)
		ids = append(ids, resp.Data["key_id"].(string))
		if resp.Secret != nil {
			leases = append(leases, resp.Secret)
		}
	}
	e.ok(logical.DeleteOperation, e.keyPath(ids[1]), nil)
	e.ok(logical.UpdateOperation, e.keyPath(ids[2])+"/suspend", nil)
	e.ok(logical.UpdateOperation, e.keyPath(ids[3])+"/rotate", nil)
	sec := leases[len(leases)-1]
	sec.IssueTime = time.Now()
	sec.Increment = 3 * time.Hour
	if resp, err := e.lease(logical.RenewOperation, sec); err != nil || resp.IsError() {
		e.t.Fatalf("renew: %v %v", err, resp)
	}
	return ids
}

// The snapshot, JSON or packed, from the index or from storage, says what
// each key's record in storage says; and once a key is indexed a
// snapshot reads it from memory, not storage.
func TestKeyRecordSnapshotFromIndex(t *testing.T) {
	e := newTestEnv(t)
	counted := newCountingStorage(e.storage)
	e.storage = counted
	e.mintVaried(40)
	want := e.storedRecords()
	same := func(what string, got map[string]contract.KeyRecord) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
		}
		for id, w := range want {
			if !reflect.DeepEqual(got[id], w) {
				t.Fatalf("%s: record of %s\n got %+v\nwant %+v", what, id, got[id], w)
			}
		}
	}

	counted.reset()
	recs, _, _ := e.snapshotAll(nil)
	same("the first JSON snapshot", recs)
	// Minted keys are indexed; the revoked, suspended, rotated and renewed
	// ones and the rotation's successor are read once.
	if n := counted.n("get", keyPrefix); n != 5 {
		t.Fatalf("the first snapshot read %d keys from storage, want 5 (the keys changed after their mint)", n)
	}
	counted.reset()
	same("the JSON snapshot", e.snapshotAllFresh())
	same("the packed snapshot", e.snapshotPacked())
	if n := counted.n("get", keyPrefix); n != 0 {
		t.Fatalf("snapshots of an indexed node read %d keys from storage", n)
	}

	// A new backend on the same storage (a new active node): its index
	// is filled by the first snapshot, as the records in storage say.
	lb, err := Factory(context.Background(), &logical.BackendConfig{Logger: e.b.Logger(), System: logical.TestSystemView(), StorageView: e.storage})
	if err != nil {
		t.Fatal(err)
	}
	e2 := &testEnv{t: t, b: lb.(*backend), storage: e.storage, entityID: e.entityID}
	counted.reset()
	same("a new node's packed snapshot", e2.snapshotPacked())
	if n := counted.n("get", keyPrefix); n != len(want) {
		t.Fatalf("a new node's first snapshot read %d keys from storage, want %d", n, len(want))
	}
	counted.reset()
	same("a new node's JSON snapshot", e2.snapshotAllFresh())
	if n := counted.n("get", keyPrefix); n != 0 {
		t.Fatalf("a new node's second snapshot read %d keys from storage", n)
	}
}

// snapshotAllFresh is snapshotAll from a new listing.
func (e *testEnv) snapshotAllFresh() map[string]contract.KeyRecord {
	e.t.Helper()
	e.b.keyRecords.list = nil
	recs, _, _ := e.snapshotAll(nil)
	return recs
}

// changingStorage changes a key while a snapshot reads it: the read gets
// the key as it was, and the change (stored, then recorded as the feed's
// writers do) lands before the read returns.
type changingStorage struct {
	logical.Storage
	done   atomic.Bool
	id     string
	change func()
}

func (s *changingStorage) Get(ctx context.Context, p string) (*logical.StorageEntry, error) {
	ent, err := s.Storage.Get(ctx, p)
	if p == keyPrefix+s.id && s.done.CompareAndSwap(false, true) { // once; the change reads the key too
		s.change()
	}
	return ent, err
}

// A key revoked while a snapshot read it from storage is never indexed as
// it was: the next snapshot says revoked.
func TestKeyRecordIndexFillRacesAChange(t *testing.T) {
	for _, change := range []string{"revoke", "suspend"} {
		t.Run(change, func(t *testing.T) {
			e := newTestEnv(t)
			e.createRole("web", map[string]interface{}{"ttl": "1h"})
			id := e.mint("web", nil).Data["key_id"].(string)
			e.b.keyRecords.add(id) // leave it out of the index, as after a restart
			path := e.keyPath(id)
			cs := &changingStorage{Storage: e.storage, id: id}
			cs.change = func() {
				op, p := logical.Operation(logical.DeleteOperation), path
				if change == "suspend" {
					op, p = logical.UpdateOperation, path+"/suspend"
				}
				if resp := e.do(op, p, nil); resp != nil && resp.IsError() {
					t.Errorf("%s: %v", change, resp.Error())
				}
			}
			e.storage = cs
			if recs, _, _ := e.snapshotAll(nil); recs[id].Revoked || recs[id].Suspended {
				t.Fatal("the read raced the change and still saw it; the test proves nothing")
			}
			rec := e.snapshotPacked()[id]
			if got := map[string]bool{"revoke": rec.Revoked, "suspend": rec.Suspended}[change]; !got {
				t.Fatalf("after a %s that raced a snapshot's read, the next snapshot gives %+v", change, rec)
			}
		})
	}
}

// The index's own rules, each order of a fill (a read of storage after
// change seq0 was the newest), a change and a mint's stored record.
func TestKeyIndexOrders(t *testing.T) {
	live := func(id string) *keyEntry {
		return &keyEntry{ID: id, Hash: make([]byte, 32), Role: "r", ExpiresAt: time.Now().Add(time.Hour)}
	}
	held := func(c *keyChanges, id string) bool {
		out := make([]*indexedRecord, 1)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.index.lookupLocked([]string{id}, out)
		return out[0] != nil
	}
	fill := func(c *keyChanges, id string, seq0 uint64) {
		c.mu.Lock()
		c.index.fillLocked(id, indexRecord(live(id)), seq0)
		c.mu.Unlock()
	}
	const id = "0000000000ab"
	for _, tc := range []struct {
		name string
		run  func(c *keyChanges)
		want bool
	}{
		{"a fill", func(c *keyChanges) { fill(c, id, c.lastSeq()) }, true},
		{"a fill older than a change", func(c *keyChanges) { seq0 := c.lastSeq(); c.add(id, nil); fill(c, id, seq0) }, false},
		{"a change after a fill", func(c *keyChanges) { fill(c, id, c.lastSeq()); c.add(id, nil) }, false},
		{"a fill after a change", func(c *keyChanges) { c.add(id, nil); fill(c, id, c.lastSeq()) }, true},
		{"a mint", func(c *keyChanges) { c.add(id, live(id)) }, true},
		{"a change recorded before the mint's", func(c *keyChanges) { c.add(id, nil); c.add(id, live(id)) }, false},
		{"a change after a mint", func(c *keyChanges) { c.add(id, live(id)); c.add(id, nil) }, false},
		{"a fill older than a prune", func(c *keyChanges) {
			seq0 := c.lastSeq()
			c.add("0000000000cd", nil)
			c.pruneIndex(time.Now())
			fill(c, id, seq0)
		}, false},
		{"a fill after a prune", func(c *keyChanges) { c.pruneIndex(time.Now()); fill(c, id, c.lastSeq()) }, true},
		{"a mint, then storage restored", func(c *keyChanges) { c.add(id, live(id)); c.forgetIndex() }, false},
		{"a fill begun before storage was restored", func(c *keyChanges) { seq0 := c.lastSeq(); c.forgetIndex(); fill(c, id, seq0) }, false},
		{"a fill after storage was restored", func(c *keyChanges) { c.forgetIndex(); fill(c, id, c.lastSeq()) }, true},
	} {
		c := newKeyChanges()
		tc.run(c)
		if got := held(c, id); got != tc.want {
			t.Errorf("%s: indexed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Prune drops records long expired, and what nobody read since it last
// ran; shapes go with their last record.
func TestKeyIndexPrune(t *testing.T) {
	c := newKeyChanges()
	old := &keyEntry{ID: "0000000000aa", Hash: make([]byte, 32), Role: "gone", ExpiresAt: time.Now().Add(-time.Hour)}
	recent := &keyEntry{ID: "0000000000bb", Hash: make([]byte, 32), Role: "r", ExpiresAt: time.Now().Add(-time.Minute + keyListingMaxAge)}
	c.add(old.ID, old)
	c.add(recent.ID, recent)
	c.add("0000000000cc", nil)
	now := time.Now()
	c.pruneIndex(now)
	c.pruneIndex(now.Add(keyListingMaxAge)) // the second drops what changed before the first
	if len(c.index.recs) != 1 || c.index.recs[mustIndexKey(t, recent.ID)] == nil || len(c.index.shapes) != 1 {
		t.Fatalf("after prune: %d records, %d shapes; want the one expired a minute before the second prune alone", len(c.index.recs), len(c.index.shapes))
	}
}

func mustIndexKey(t *testing.T, id string) [12]byte {
	t.Helper()
	k, ok := indexKey(id)
	if !ok {
		t.Fatalf("%q is not a key_id", id)
	}
	return k
}

// The index holds and serves key_ids only: an id that is not one (longer,
// shorter, not base62) neither reads a key's record nor drops it, however
// much of it is that key's id.
func TestKeyIndexRefusesWhatIsNotAKeyID(t *testing.T) {
	c := newKeyChanges()
	k := &keyEntry{ID: "xai000000001", Hash: make([]byte, 32), Role: "r", ExpiresAt: time.Now().Add(time.Hour)}
	c.add(k.ID, k)
	for _, id := range []string{"xai000000001/x", "xai000000001x", "xai00000000", "xai00000000\x00", "xai00000000.", ""} {
		out := make([]*indexedRecord, 1)
		c.mu.Lock()
		c.index.lookupLocked([]string{id}, out)
		c.mu.Unlock()
		if out[0] != nil {
			t.Errorf("%q read the record of %s", id, k.ID)
		}
		if id != "" {
			c.add(id, nil) // a change of a non-key (an invalidation of keys/<id>)
		}
	}
	out := make([]*indexedRecord, 1)
	c.mu.Lock()
	c.index.lookupLocked([]string{k.ID}, out)
	n := len(c.index.recs)
	c.mu.Unlock()
	if out[0] == nil || n != 1 {
		t.Fatalf("after changes of ids that are not key_ids: %s indexed = %v, %d entries; want it alone", k.ID, out[0] != nil, n)
	}
}

// Packed pages hold up to MaxPackedKeyRecordPage records and stay within
// MaxKeyRecordPageBytes even when every key has a shape of its own at the
// scope limits.
func TestKeyRecordPackedPagesBounded(t *testing.T) {
	e := newTestEnv(t)
	var scopes []string
	for i := 0; i < 64; i++ {
		scopes = append(scopes, fmt.Sprintf("%03d", i)+strings.Repeat("s", 125))
	}
	e.createRole("fat", map[string]interface{}{"scopes": strings.Join(scopes, ","), "default_scopes": scopes[0], "orphan": true})
	const n = 700 // ~8 KB a shape: more than one page
	for i := 0; i < n; i++ {
		// A distinct set of scopes for each key: all but two.
		pick := append(append([]string{}, scopes[:i%64]...), scopes[i%64+1:]...)
		pick = append(pick[:(i/64)%63], pick[(i/64)%63+1:]...)
		e.mint("fat", map[string]interface{}{"scopes": strings.Join(pick, ",")})
	}
	got, pages := 0, 0
	for after := ""; ; pages++ {
		data := map[string]interface{}{"after_id": after, "format": contract.FormatPacked1}
		resp := e.ok(logical.ReadOperation, "key-records/snapshot", data)
		if size := len(resp.Data["packed"].(string)); size > contract.MaxKeyRecordPageBytes-packedEnvelope {
			t.Fatalf("a packed page is %d bytes", size)
		}
		p := e.keyRecords("key-records/snapshot", data)
		got += len(unpackPage(t, p.Packed))
		if !p.More {
			break
		}
		after = p.NextID
	}
	if got != n || pages < 1 {
		t.Fatalf("packed pages gave %d of %d keys in %d pages", got, n, pages+1)
	}
}

// A format the plugin does not know is answered in JSON, so that a newer
// verifier reads an older plugin.
func TestKeyRecordSnapshotUnknownFormat(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	id := e.mint("web", nil).Data["key_id"].(string)
	p := e.keyRecords("key-records/snapshot", map[string]interface{}{"format": "packed9"})
	if p.Format != "" || p.Packed != "" || len(p.Records) != 1 || p.Records[0].KeyID != id {
		t.Fatalf("format=packed9 gave format %q and %d records", p.Format, len(p.Records))
	}
}

// BenchmarkKeyIndex1M is the plugin's record index holding a million keys
// (ten roles, as the sidecar's BenchmarkReplica1M): the heap it takes per
// record, and the time to build a packed snapshot page of 10,000 records
// from it. Run it once:
//
//	go test -run '^$' -bench KeyIndex1M -benchtime 1x ./backend
func BenchmarkKeyIndex1M(b *testing.B) {
	const n = 1_000_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("xai%09d", i)
	}
	var before, after runtime.MemStats
	var c *keyChanges
	var pageTime time.Duration
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&before)
		c = newKeyChanges()
		exp := time.Now().Add(24 * time.Hour).Truncate(time.Second)
		for i, id := range ids {
			c.add(id, &keyEntry{ID: id, Hash: make([]byte, 32), Role: fmt.Sprintf("role-%d", i%10), Tenant: "tenant",
				Scopes: []string{"read", "write"}, BoundCIDRs: []string{"10.0.0.0/8"}, ExpiresAt: exp})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		start := time.Now()
		for p := 0; p < n; p += contract.MaxPackedKeyRecordPage {
			page := ids[p : p+contract.MaxPackedKeyRecordPage]
			recs, err := c.records(context.Background(), nil, page)
			if err != nil {
				b.Fatal(err)
			}
			w := newSnapshotWriter(true)
			for j, rec := range recs {
				w.add(page[j], rec)
			}
			w.finish(&contract.KeyRecordsPage{})
		}
		pageTime = time.Since(start)
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/record")
	b.ReportMetric(float64(pageTime.Nanoseconds())/n, "page-ns/record")
	runtime.KeepAlive(c)
}

// landingFailingPuts fails the Puts whose path starts with prefix; land says
// whether the write is stored anyway (an ambiguous commit: a Raft apply
// that timed out for the caller but was committed).
type landingFailingPuts struct {
	logical.Storage
	prefix string
	land   bool
}

func (s *landingFailingPuts) Put(ctx context.Context, e *logical.StorageEntry) error {
	if s.prefix != "" && strings.HasPrefix(e.Key, s.prefix) {
		if s.land {
			if err := s.Storage.Put(ctx, e); err != nil {
				return err
			}
		}
		return errors.New("injected storage failure")
	}
	return s.Storage.Put(ctx, e)
}

// snapshotMatchesStorage fails the test when a fresh snapshot (JSON and
// packed) says of id something other than storage does.
func (e *testEnv) snapshotMatchesStorage(id string) {
	e.t.Helper()
	want := e.storedRecords()[id]
	got := e.snapshotAllFresh()[id]
	if got.ExpiresAt != want.ExpiresAt || got.Revoked != want.Revoked || got.ReplacedBy != want.ReplacedBy || got.Suspended != want.Suspended {
		e.t.Fatalf("JSON snapshot serves %s as %+v; storage says %+v", id, got, want)
	}
	e.b.keyRecords.list = nil
	got = e.snapshotPacked()[id]
	if got.ExpiresAt != want.ExpiresAt || got.Revoked != want.Revoked || got.ReplacedBy != want.ReplacedBy || got.Suspended != want.Suspended {
		e.t.Fatalf("packed snapshot serves %s as %+v; storage says %+v", id, got, want)
	}
}

// A rotation whose last write (the rotation record) fails has already
// stored the old key as replaced, expiring at the end of its grace: the
// index must not keep serving the old key as live until its original
// expiry (each key write records its change, whatever the write returned).
func TestKeyRecordFailedRotationIsRecorded(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h"})
	id := e.mint("web", nil).Data["key_id"].(string) // indexed by the mint
	path := e.keyPath(id)
	e.snapshotMatchesStorage(id)

	base := e.storage
	e.storage = &landingFailingPuts{Storage: base, prefix: rotationPrefix}
	_, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: path + "/rotate",
		Data: map[string]interface{}{"grace": 0}, Storage: e.storage, EntityID: e.entityID, MountPoint: "keybroker/"})
	if err == nil {
		t.Fatal("the rotation was to fail")
	}
	e.storage = base
	k, _ := getKey(context.Background(), base, id)
	if k.ReplacedBy == "" {
		t.Fatal("the old key was not stored as replaced; the test proves nothing")
	}
	e.snapshotMatchesStorage(id)
}

// A revocation whose key write lands but returns an error (an ambiguous
// commit) still records the change: the index does not serve the revoked
// key as live, even after a retry, which finds the key revoked and
// writes nothing.
func TestKeyRecordWriteStoredDespiteErrorIsRecorded(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h"})
	id := e.mint("web", nil).Data["key_id"].(string)
	path := e.keyPath(id)
	e.snapshotMatchesStorage(id)

	base := e.storage
	e.storage = &landingFailingPuts{Storage: base, prefix: keyPrefix, land: true}
	_, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.DeleteOperation, Path: path,
		Storage: e.storage, EntityID: e.entityID, MountPoint: "keybroker/"})
	if err == nil {
		t.Fatal("the revocation was to fail")
	}
	e.storage = base
	if k, _ := getKey(context.Background(), base, id); !k.revoked() {
		t.Fatal("the key is not revoked in storage; the test proves nothing")
	}
	// The operator (or Vault's expiration manager) retries: revoking a
	// revoked key does nothing, so the retry records no change either.
	e.ok(logical.DeleteOperation, path, nil)
	e.snapshotMatchesStorage(id)
}

// Writers (revoke, suspend, resume, budget, rotate, mint) race snapshot
// readers (fresh listings, JSON and packed) that fill the index; once they
// stop, a snapshot says what storage says of every key.
func TestKeyRecordIndexUnderConcurrentWrites(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h", "budget": 100})
	var ids []string
	for i := 0; i < 40; i++ {
		ids = append(ids, e.mint("web", nil).Data["key_id"].(string))
	}
	paths := map[string]string{}
	for _, id := range ids {
		paths[id] = e.keyPath(id)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	for r := 0; r < 2; r++ {
		go func(r int) {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				e.b.keyRecords.listMu.Lock()
				e.b.keyRecords.list = nil
				e.b.keyRecords.listMu.Unlock()
				data := map[string]interface{}{}
				if r == 1 {
					data["format"] = "packed1"
				}
				for after := ""; ; {
					data["after_id"] = after
					resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.ReadOperation,
						Path: "key-records/snapshot", Data: data, Storage: e.storage, MountPoint: "keybroker/"})
					if err != nil || resp.IsError() {
						t.Errorf("snapshot: %v %v", err, resp)
						return
					}
					if !resp.Data["more"].(bool) {
						break
					}
					after = resp.Data["next_id"].(string)
				}
			}
		}(r)
	}
	for i := 0; i < 200; i++ {
		id := ids[i%len(ids)]
		var op logical.Operation = logical.UpdateOperation
		var p string
		var data map[string]interface{}
		switch i % 5 {
		case 0:
			p = paths[id] + "/suspend"
		case 1:
			p = paths[id] + "/resume"
		case 2:
			p, data = "budget/web/"+id, map[string]interface{}{"budget": 50 + i}
		case 3:
			p = paths[id] + "/rotate"
		case 4:
			op, p = logical.DeleteOperation, paths[id]
		}
		_, _ = e.b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: p, Data: data,
			Storage: e.storage, EntityID: e.entityID, MountPoint: "keybroker/"})
	}
	close(stop)
	<-done
	<-done
	want := e.storedRecords()
	got := e.snapshotAllFresh()
	e.b.keyRecords.list = nil
	packed := e.snapshotPacked()
	var revoked, replaced, suspended, budgets int
	for _, w := range want {
		if w.Revoked {
			revoked++
		}
		if w.ReplacedBy != "" {
			replaced++
		}
		if w.Suspended {
			suspended++
		}
		if w.Budget != nil && w.Budget.Units != 100 {
			budgets++
		}
	}
	if revoked == 0 || replaced == 0 || suspended == 0 || budgets == 0 {
		t.Fatalf("the writers changed too little: %d revoked, %d replaced, %d suspended, %d budgets", revoked, replaced, suspended, budgets)
	}
	for id, w := range want {
		for what, g := range map[string]contract.KeyRecord{"JSON": got[id], "packed": packed[id]} {
			if g.ExpiresAt != w.ExpiresAt || g.Revoked != w.Revoked || g.Suspended != w.Suspended || g.ReplacedBy != w.ReplacedBy ||
				!reflect.DeepEqual(g.Budget, w.Budget) {
				t.Errorf("%s snapshot of %s: %+v; storage %+v", what, id, g, w)
			}
		}
	}
}

// On a node that may not write (a performance standby or secondary),
// invalidations add an index entry per key written elsewhere; the
// periodic function prunes them there too.
func TestKeyIndexPrunedOnStandby(t *testing.T) {
	sys := logical.TestSystemView()
	sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
	e := newTestEnvWith(t, sys)
	for i := 0; i < 1000; i++ {
		e.b.invalidate(context.Background(), keyPrefix+fmt.Sprintf("xai%09d", i))
	}
	c := e.b.keyRecords.changes
	c.mu.Lock()
	// As if a prune had already passed these changes, long ago: the
	// next prune drops them.
	c.index.horizon, c.index.pruned = c.last, time.Now().Add(-time.Hour)
	c.mu.Unlock()
	if err := e.b.periodic(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	n := len(c.index.recs)
	c.mu.Unlock()
	if n != 0 {
		t.Fatalf("after the periodic function the standby's index still holds %d entries of keys written elsewhere", n)
	}
}
