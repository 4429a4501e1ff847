package backend

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

// reviewFailingPuts fails the Puts whose path starts with prefix; land says
// whether the write is stored anyway (an ambiguous commit: a Raft apply
// that timed out for the caller but was committed).
type reviewFailingPuts struct {
	logical.Storage
	prefix string
	land   bool
}

func (s *reviewFailingPuts) Put(ctx context.Context, e *logical.StorageEntry) error {
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
// stored the old key as replaced, expiring at the end of its grace, but
// records no change: the index keeps serving the old key as live until
// its original expiry, forever (before the index, the next snapshot read
// storage and healed).
func TestReviewRotationFailureLeavesIndexStale(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h"})
	id := e.mint("web", nil).Data["key_id"].(string) // indexed by the mint
	path := e.keyPath(id)
	e.snapshotMatchesStorage(id)

	base := e.storage
	e.storage = &reviewFailingPuts{Storage: base, prefix: rotationPrefix}
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
// commit) records no change: the index serves the revoked key as live.
func TestReviewAmbiguousPutLeavesIndexStale(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h"})
	id := e.mint("web", nil).Data["key_id"].(string)
	path := e.keyPath(id)
	e.snapshotMatchesStorage(id)

	base := e.storage
	e.storage = &reviewFailingPuts{Storage: base, prefix: keyPrefix, land: true}
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

// On a node that may not write (a performance standby or secondary),
// invalidations add an index entry per key written elsewhere, and the
// periodic function returns before pruning: the entries are never
// dropped.
func TestReviewStandbyIndexNeverPruned(t *testing.T) {
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

// Writers (revoke, suspend, resume, budget, rotate, mint) race snapshot
// readers (fresh listings, JSON and packed) that fill the index; once they
// stop, a snapshot says what storage says of every key. (Passes: the
// fill/change rule holds where every write records its change.)
func TestReviewIndexUnderConcurrentWrites(t *testing.T) {
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
