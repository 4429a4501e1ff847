package backend

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
	if len(c.index.recs) != 1 || c.index.recs[indexKey(recent.ID)] == nil || len(c.index.shapes) != 1 {
		t.Fatalf("after prune: %d records, %d shapes; want the one expired a minute before the second prune alone", len(c.index.recs), len(c.index.shapes))
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
