package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
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
