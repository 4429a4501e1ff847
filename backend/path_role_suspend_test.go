package backend

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Suspending or resuming a role costs the same however many keys it has:
// no key is read or written, and verifiers learn it from the feed pages'
// suspended_roles, which wakes them.
func TestRoleSuspendCostsNoKeyWalk(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	e.createRole("other", map[string]interface{}{"scopes": "read"})
	const n = 300
	keys := make([]*logical.Response, 0, n)
	for i := 0; i < n; i++ {
		role := "web"
		if i%3 == 0 {
			role = "other"
		}
		keys = append(keys, e.mint(role, nil))
	}
	web, other := keys[1].Data, keys[0].Data
	_, cursor, epoch := e.snapshotAll(nil)

	c := newCountingStorage(e.storage)
	e.storage = c
	for _, action := range []string{"suspend", "resume", "suspend"} {
		c.reset()
		e.ok(logical.UpdateOperation, "roles/web/"+action, nil)
		if c.n("get", keyPrefix)+c.n("put", keyPrefix)+c.n("list", keyPrefix) > 0 || c.n("put")+c.n("delete") > 2 || c.n("get") > 2 || c.n("list") > 0 {
			t.Fatalf("roles/web/%s with %d keys: %v; want at most 2 writes and 2 reads, none of keys/", action, n, c.calls)
		}
	}

	// Verifications: keys of the role refused, others not.
	if v := e.verifyKey(web["key"].(string)); v["reason"] != "suspended" {
		t.Fatalf("a key of a suspended role: %v", v["reason"])
	}
	if v := e.verifyKey(other["key"].(string)); v["valid"] != true {
		t.Fatalf("a key of another role: %v", v["reason"])
	}
	// Verifiers: the changes since the cursor are woken and list the role;
	// no record changed (each says its own suspension only).
	p := e.keyRecords("key-records", map[string]interface{}{"after": cursor, "epoch": epoch})
	if p.Next == cursor || len(p.Records) != 0 || !slices.Equal(p.SuspendedRoles, []string{"web"}) {
		t.Fatalf("changes after a role suspension: next %d (cursor %d), %d records, suspended_roles %v", p.Next, cursor, len(p.Records), p.SuspendedRoles)
	}
	recs, _, _ := e.snapshotAll(nil)
	if recs[web["key_id"].(string)].Suspended {
		t.Fatal("the role's suspension was written into a key record")
	}
	if s := e.keyRecords("key-records/snapshot", nil); !slices.Equal(s.SuspendedRoles, []string{"web"}) {
		t.Fatalf("snapshot suspended_roles = %v", s.SuspendedRoles)
	}
	if s := e.keyRecords("key-records/snapshot", map[string]interface{}{"roles": "other"}); len(s.SuspendedRoles) != 0 {
		t.Fatalf("a reader of role other is told of %v", s.SuspendedRoles)
	}
	e.ok(logical.UpdateOperation, "roles/web/resume", nil)
	if s := e.keyRecords("key-records/snapshot", nil); len(s.SuspendedRoles) != 0 {
		t.Fatalf("after resume, suspended_roles = %v", s.SuspendedRoles)
	}
	if v := e.verifyKey(web["key"].(string)); v["valid"] != true {
		t.Fatalf("a key of a resumed role: %v", v["reason"])
	}
}

// putGate holds the first Put below prefix until release is closed.
type putGate struct {
	logical.Storage
	prefix           string
	once             sync.Once
	entered, release chan struct{}
}

func (g *putGate) Put(ctx context.Context, en *logical.StorageEntry) error {
	if strings.HasPrefix(en.Key, g.prefix) {
		first := false
		g.once.Do(func() { first = true })
		if first {
			close(g.entered)
			<-g.release
		}
	}
	return g.Storage.Put(ctx, en)
}

// A mint holds the role's lock from its suspension check to its key's
// write: a suspension waits for it, and once it returned no mint passes.
func TestMintChecksSuspensionUnderRoleLock(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	g := &putGate{Storage: e.storage, prefix: keyPrefix, entered: make(chan struct{}), release: make(chan struct{})}
	e.storage = g
	minted := make(chan *logical.Response)
	go func() {
		resp, _ := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "keys/web",
			Data: map[string]interface{}{"name": "racing"}, Storage: g, MountPoint: "keybroker/"})
		minted <- resp
	}()
	<-g.entered // the mint checked the role and is writing its key
	suspended := make(chan struct{})
	go func() {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "roles/web/suspend", Storage: g, MountPoint: "keybroker/"})
		if err != nil || resp.IsError() {
			t.Errorf("suspend: %v %v", err, resp)
		}
		close(suspended)
	}()
	select {
	case <-suspended:
		t.Fatal("the role was suspended while a mint that had checked it was under way")
	case <-time.After(200 * time.Millisecond):
	}
	close(g.release)
	<-suspended
	if resp := <-minted; resp == nil || resp.IsError() {
		t.Fatalf("the mint under way: %v", resp)
	}
	e.userError(logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "after"}, "is suspended")
}

// A suspended role deleted keeps its keys refused; created again, it starts
// suspended and says so.
func TestRoleDeletedWhileSuspended(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	k := e.mint("web", nil)
	e.ok(logical.UpdateOperation, "roles/web/suspend", nil)
	e.ok(logical.DeleteOperation, "roles/web", nil)
	if v := e.verifyKey(k.Data["key"].(string)); v["reason"] != "suspended" {
		t.Fatalf("a key of a suspended role deleted: %v", v["reason"])
	}
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	if d := e.ok(logical.ReadOperation, "roles/web", nil).Data; d["suspended"] != true {
		t.Fatalf("role created again: %#v", d)
	}
	e.userError(logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "x"}, "is suspended")
	e.ok(logical.UpdateOperation, "roles/web/resume", nil)
	if v := e.verifyKey(k.Data["key"].(string)); v["valid"] != true {
		t.Fatalf("after resume: %v", v["reason"])
	}
}

// A role suspended by a version that wrote the suspension into its keys
// keeps them refused after the upgrade.
func TestRoleSuspensionMigrated(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	k := e.mint("web", nil)
	r, err := getRole(ctx, e.storage, "web")
	if err != nil {
		t.Fatal(err)
	}
	r.Suspended = true // as the old version stored it: no entry
	if err := putJSON(ctx, e.storage, rolePrefix+"web", r); err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Delete(ctx, "suspended-roles-migrated"); err != nil {
		t.Fatal(err)
	}
	if err := e.b.migrateRoleSuspensions(ctx, e.storage); err != nil {
		t.Fatal(err)
	}
	if v := e.verifyKey(k.Data["key"].(string)); v["reason"] != "suspended" {
		t.Fatalf("a key of a role suspended before the upgrade: %v", v["reason"])
	}
	e.ok(logical.UpdateOperation, "roles/web/resume", nil)
	if v := e.verifyKey(k.Data["key"].(string)); v["valid"] != true {
		t.Fatalf("after resume: %v", v["reason"])
	}
}

// A role suspended and then deleted under an older version left its
// suspension only in its keys (role_suspended_at): the upgrade keeps them
// refused (from review).
func TestRoleSuspensionMigratedFromKeys(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	e.createRole("gone", map[string]interface{}{"scopes": "read"})
	k := e.mint("gone", nil)
	id := k.Data["key_id"].(string)
	old, err := getKey(ctx, e.storage, id)
	if err != nil {
		t.Fatal(err)
	}
	old.LegacyRoleSuspendedAt = time.Now().UTC().Truncate(time.Second) // as the old version walked it
	if err := putKey(ctx, e.storage, old); err != nil {
		t.Fatal(err)
	}
	e.ok(logical.DeleteOperation, "roles/gone", nil)
	if err := e.storage.Delete(ctx, "suspended-roles-migrated"); err != nil {
		t.Fatal(err)
	}
	if err := e.b.migrateRoleSuspensions(ctx, e.storage); err != nil {
		t.Fatal(err)
	}
	if v := e.verifyKey(k.Data["key"].(string)); v["reason"] != "suspended" {
		t.Fatalf("a key of a role suspended and deleted before the upgrade: %v", v["reason"])
	}
	// The role made again is not suspended: its new keys pass, the old key
	// stays refused, as the old version had it, until it is resumed.
	e.createRole("gone", map[string]interface{}{"scopes": "read"})
	fresh := e.mint("gone", nil)
	if v := e.verifyKey(fresh.Data["key"].(string)); v["valid"] != true {
		t.Fatalf("a new key of the role made again: %v", v["reason"])
	}
	if d := e.ok(logical.ReadOperation, "roles/gone", nil).Data; d["suspended"] != false {
		t.Fatalf("the role made again: %#v", d)
	}
	e.ok(logical.UpdateOperation, "keys/gone/id/"+id+"/resume", nil)
	if v := e.verifyKey(k.Data["key"].(string)); v["valid"] != true {
		t.Fatalf("the old key once resumed: %v", v["reason"])
	}
}
