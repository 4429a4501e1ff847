package backend

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/sdk/logical"
)

// A role in memory is the one stored: every write of this node (write,
// suspend, resume, delete) is seen by the next mint, and a write of another
// node once Vault invalidates the entry.
func TestRoleCacheFollowsWrites(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	e.mint("web", nil)
	e.ok(logical.UpdateOperation, "roles/web", map[string]interface{}{"scopes": "read,write"})
	if got := e.mint("web", map[string]interface{}{"scopes": "write"}).Data["scopes"]; len(got.([]string)) != 1 {
		t.Fatalf("after a role write: scopes %v", got)
	}
	e.ok(logical.UpdateOperation, "roles/web/suspend", nil)
	e.userError(logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"}, "is suspended")
	e.ok(logical.UpdateOperation, "roles/web/resume", nil)
	e.mint("web", nil)
	e.ok(logical.DeleteOperation, "roles/web", nil)
	e.userError(logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"}, "does not exist")

	// Another node's write reaches this one as a storage change and an
	// invalidation of its key.
	e.createRole("api", map[string]interface{}{"scopes": "read"})
	e.mint("api", nil)
	r, err := getRole(context.Background(), e.storage, "api")
	if err != nil {
		t.Fatal(err)
	}
	r.Suspended = true
	if err := putJSON(context.Background(), e.storage, rolePath("api"), r); err != nil {
		t.Fatal(err)
	}
	e.mint("api", nil) // not yet invalidated: the role in memory
	e.b.invalidate(context.Background(), rolePath("api"))
	e.userError(logical.UpdateOperation, "keys/api", map[string]interface{}{"name": "k"}, "is suspended")
}

// The config in memory follows this node's writes and another node's.
func TestConfigCacheFollowsWrites(t *testing.T) {
	e := newTestEnv(t)
	iss := func() string {
		tok := e.ok(logical.UpdateOperation, "token/web", nil).Data["token"].(string)
		var c jwt.RegisteredClaims
		if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil {
			t.Fatal(err)
		}
		return c.Issuer
	}
	e.createRole("web", map[string]interface{}{"scopes": "read", "audiences": "svc"})
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": "https://one.example"})
	if got := iss(); got != "https://one.example" {
		t.Fatalf("iss %q", got)
	}
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": "https://two.example"})
	if got := iss(); got != "https://two.example" {
		t.Fatalf("after a config write: iss %q", got)
	}
	c, err := getConfig(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	c.Issuer = "https://three.example"
	if err := putJSON(context.Background(), e.storage, configPath, c); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(context.Background(), configPath)
	if got := iss(); !strings.HasPrefix(got, "https://three.example") {
		t.Fatalf("after another node's config write: iss %q", got)
	}
}

// A read that raced a write does not put back what the write replaced.
func TestStoredCacheRacingFill(t *testing.T) {
	stored := "old"
	var c *storedCache[string]
	c = newStoredCache(func(context.Context, logical.Storage, string) (*string, error) {
		v := stored
		// The write lands after this read and before it is kept.
		stored = "new"
		c.forget("x")
		return &v, nil
	}, func(s *string) *string { v := *s; return &v })
	if v, _ := c.get(context.Background(), nil, "x"); *v != "old" {
		t.Fatalf("get: %q", *v)
	}
	c.load = func(context.Context, logical.Storage, string) (*string, error) { v := stored; return &v, nil }
	if v, _ := c.get(context.Background(), nil, "x"); *v != "new" {
		t.Fatalf("after the racing write: %q; want the write's", *v)
	}
}

// Answers do not share the role in memory: a caller changing its answer
// in place (a key's scopes, a role read's metadata) changes nothing a
// later mint reads.
func TestAnswersDoNotShareTheRoleInMemory(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read,admin", "default_scopes": "read", "bound_cidrs": "10.0.0.0/8", "metadata": "team=core"})
	first := e.mint("web", nil)
	first.Data["scopes"].([]string)[0] = "admin"
	first.Data["bound_cidrs"].([]string)[0] = "0.0.0.0/0"
	read := e.ok(logical.ReadOperation, "roles/web", nil)
	read.Data["metadata"].(map[string]string)["team"] = "evil"
	second := e.mint("web", nil)
	if got := second.Data["scopes"].([]string); len(got) != 1 || got[0] != "read" {
		t.Errorf("a later mint with the default scopes got %v: the first answer's slice was the role's", got)
	}
	if got := second.Data["bound_cidrs"].([]string); len(got) != 1 || got[0] != "10.0.0.0/8" {
		t.Errorf("a later mint got bound_cidrs %v: the first answer's slice was the role's", got)
	}
	k, err := getKey(context.Background(), e.storage, second.Data["key_id"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if k.Metadata["team"] != "core" {
		t.Errorf("a later key carries metadata %v: the role read's map was the role's", k.Metadata)
	}
}

// cloneRole and cloneConfig share no slice or map, whatever field is
// added: every slice and map field, however nested, is checked.
func TestStoredCacheClonesShareNothing(t *testing.T) {
	check := func(name string, orig, clone reflect.Value) {
		t.Helper()
		for _, f := range sharedFields(orig, "") {
			o, c := orig.FieldByIndex(f.index), clone.FieldByIndex(f.index)
			if o.Pointer() == c.Pointer() {
				t.Errorf("%s: field %s is shared with the copy in memory", name, f.name)
			}
		}
	}
	r := &role{}
	fillShared(reflect.ValueOf(r).Elem())
	check("cloneRole", reflect.ValueOf(r).Elem(), reflect.ValueOf(cloneRole(r)).Elem())
	if !reflect.DeepEqual(r, cloneRole(r)) {
		t.Error("cloneRole is not equal to the role")
	}
	c := &config{}
	fillShared(reflect.ValueOf(c).Elem())
	check("cloneConfig", reflect.ValueOf(c).Elem(), reflect.ValueOf(cloneConfig(c)).Elem())
}

type sharedField struct {
	name  string
	index []int
}

// sharedFields lists the slice and map fields of struct v, nested structs
// included.
func sharedFields(v reflect.Value, prefix string) []sharedField {
	var out []sharedField
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		switch f.Type.Kind() {
		case reflect.Slice, reflect.Map:
			out = append(out, sharedField{prefix + f.Name, []int{i}})
		case reflect.Struct:
			for _, n := range sharedFields(v.Field(i), prefix+f.Name+".") {
				out = append(out, sharedField{n.name, append([]int{i}, n.index...)})
			}
		}
	}
	return out
}

// fillShared sets every slice and map field of struct v to one element.
func fillShared(v reflect.Value) {
	for _, f := range sharedFields(v, "") {
		fv := v.FieldByIndex(f.index)
		if !fv.CanSet() {
			continue
		}
		switch fv.Kind() {
		case reflect.Slice:
			fv.Set(reflect.MakeSlice(fv.Type(), 1, 1))
		case reflect.Map:
			m := reflect.MakeMap(fv.Type())
			m.SetMapIndex(reflect.Zero(fv.Type().Key()), reflect.Zero(fv.Type().Elem()))
			fv.Set(m)
		}
	}
}

// An entry is read from storage again once it is storedMaxAge old, so a
// change whose invalidation was missed is seen by then.
func TestStoredCacheEntryMaxAge(t *testing.T) {
	stored, loads := "old", 0
	c := newStoredCache(func(context.Context, logical.Storage, string) (*string, error) {
		loads++
		v := stored
		return &v, nil
	}, func(s *string) *string { v := *s; return &v })
	c.get(context.Background(), nil, "x")
	stored = "new" // changed, the invalidation missed
	if v, _ := c.get(context.Background(), nil, "x"); *v != "old" || loads != 1 {
		t.Fatalf("a fresh entry: %q after %d loads; want it from memory", *v, loads)
	}
	e := c.entries["x"]
	e.at = e.at.Add(-storedMaxAge)
	c.entries["x"] = e
	if v, _ := c.get(context.Background(), nil, "x"); *v != "new" || loads != 2 {
		t.Fatalf("an entry %s old: %q after %d loads; want storage read again", storedMaxAge, *v, loads)
	}
	if v, _ := c.get(context.Background(), nil, "x"); *v != "new" || loads != 2 {
		t.Fatalf("after the read again: %q after %d loads; want it kept", *v, loads)
	}
}

// With Vault's caching disabled (disable_cache), every mint reads its role
// and the config from storage.
func TestStoredCacheOffWhenVaultCachingDisabled(t *testing.T) {
	for _, disabled := range []bool{false, true} {
		sys := logical.TestSystemView()
		sys.CachingDisabledVal = disabled
		e := newTestEnvWith(t, sys)
		e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
		e.createRole("web", map[string]interface{}{"scopes": "read", "audiences": "svc"})
		e.mint("web", nil)
		e.ok(logical.UpdateOperation, "token/web", nil)
		c := newCountingStorage(e.storage)
		e.storage = c
		for range 3 {
			e.mint("web", nil)
			e.ok(logical.UpdateOperation, "token/web", nil)
		}
		want := 0
		if disabled {
			want = 6
		}
		if got := c.n("get", rolePrefix); got != want {
			t.Errorf("disable_cache %v: 3 key and 3 token mints read roles %d times; want %d", disabled, got, want)
		}
		if disabled && c.n("get", configPath) < 3 {
			t.Errorf("disable_cache: 3 token mints read the config %d times; want at least 3", c.n("get", configPath))
		}
	}
}

// slowRoleStorage delays reads of roles/ and config, so that a fill of the
// cache overlaps the writes it races.
type slowRoleStorage struct{ logical.Storage }

func (s slowRoleStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	e, err := s.Storage.Get(ctx, key)
	if strings.HasPrefix(key, rolePrefix) || key == configPath {
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
	}
	return e, err
}

// req sends a request without touching t (safe from any goroutine).
func (e *testEnv) req(entity string, op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: path, Data: data, Storage: e.storage,
		EntityID: entity, MountPoint: "keybroker/",
	})
}

// No key mint that starts after a suspension answered succeeds until a
// resume starts, whatever mints filled the role in memory meanwhile.
func TestNoKeyMintAfterASuspensionAnswered(t *testing.T) {
	e := newTestEnv(t)
	e.storage = slowRoleStorage{e.storage}
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	var suspended atomic.Bool
	var epoch atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Value
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ep, sus := epoch.Load(), suspended.Load()
				resp, err := e.req("e", logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"})
				if err != nil {
					bad.Store(err.Error())
					return
				}
				if sus && !resp.IsError() && epoch.Load() == ep {
					bad.Store(fmt.Sprintf("key %v minted after the suspension answered", resp.Data["key_id"]))
					return
				}
			}
		}()
	}
	for i := 0; i < 60; i++ {
		e.ok(logical.UpdateOperation, "roles/web/suspend", nil)
		suspended.Store(true)
		time.Sleep(2 * time.Millisecond)
		// Cleared before the epoch moves: a minter that saw suspended read
		// the epoch of this suspension (it reads the epoch first).
		suspended.Store(false)
		epoch.Add(1)
		e.ok(logical.UpdateOperation, "roles/web/resume", nil)
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
}

// A role deleted (and answered) is not minted from, by a key or a token,
// whatever concurrent mints filled memory with.
func TestNoMintAfterARoleDeleteAnswered(t *testing.T) {
	e := newTestEnv(t)
	e.storage = slowRoleStorage{e.storage}
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			path, data := "token/web", map[string]interface{}{}
			if g%2 == 0 {
				path, data = "keys/web", map[string]interface{}{"name": "k"}
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = e.req("e", logical.UpdateOperation, path, data)
			}
		}(g)
	}
	defer func() { close(stop); wg.Wait() }()
	for i := 0; i < 80; i++ {
		e.createRole("web", map[string]interface{}{"scopes": "read", "audiences": "svc"})
		time.Sleep(time.Millisecond)
		e.ok(logical.DeleteOperation, "roles/web", nil)
		for p, data := range map[string]map[string]interface{}{"keys/web": {"name": "k"}, "token/web": {}} {
			resp, err := e.req("e", logical.UpdateOperation, p, data)
			if err != nil || resp == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "does not exist") {
				t.Fatalf("round %d: %s after the delete answered: %v %v", i, p, resp, err)
			}
		}
	}
}

// A config write that answered is what the next JWT mint signs under
// (iss), whatever concurrent mints and verifications filled memory with.
func TestTokenMintSignsUnderEachAnsweredConfigWrite(t *testing.T) {
	e := newTestEnv(t)
	e.storage = slowRoleStorage{e.storage}
	e.createRole("web", map[string]interface{}{"scopes": "read", "audiences": "svc"})
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": "https://i0.example"})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = e.req("e", logical.UpdateOperation, "token/web", nil)
				_, _ = e.req("", logical.ReadOperation, "jwks", nil)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	for i := 1; i <= 100; i++ {
		want := fmt.Sprintf("https://i%d.example", i)
		e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": want})
		tok := e.ok(logical.UpdateOperation, "token/web", nil).Data["token"].(string)
		var c jwt.RegisteredClaims
		if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil {
			t.Fatal(err)
		}
		if c.Issuer != want {
			t.Fatalf("config write %d answered, then a mint signed iss %q", i, c.Issuer)
		}
	}
}

// Mints of every kind, concurrently, on the roles in memory, with reads of
// them: -race says whether any writes through a shared slice or map; after,
// the role in memory is still what storage holds.
func TestMintsLeaveTheRoleInMemoryAlone(t *testing.T) {
	e := delegationEnv(t)
	e.createRole("web", map[string]interface{}{
		"scopes": "read,write,admin", "default_scopes": "read", "bound_cidrs": "10.0.0.0/8,192.168.0.0/16",
		"metadata": "team=core", "audiences": "svc,other", "ttl": "1h", "refresh_ttl": "1h",
	})
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", map[string]interface{}{"scopes": "read,write"})
	var wg sync.WaitGroup
	var bad atomic.Value
	run := func(entity string, op logical.Operation, path string, data func() map[string]interface{}) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				resp, err := e.req(entity, op, path, data())
				if err != nil || (resp != nil && resp.IsError()) {
					bad.Store(fmt.Sprintf("%s: %v %v", path, resp, err))
					return
				}
			}
		}()
	}
	run("e", logical.UpdateOperation, "keys/web", func() map[string]interface{} {
		return map[string]interface{}{"name": "k", "scopes": "write,read", "bound_cidrs": "10.1.0.0/16", "metadata": "owner=me"}
	})
	run("e", logical.UpdateOperation, "keys/web", func() map[string]interface{} { return map[string]interface{}{"name": "k"} })
	run("e", logical.UpdateOperation, "token/web", func() map[string]interface{} {
		return map[string]interface{}{"audience": "other", "scopes": "admin"}
	})
	run("e", logical.UpdateOperation, "token/web", func() map[string]interface{} { return map[string]interface{}{"audience": "svc"} })
	run("tool-entity", logical.UpdateOperation, "token/exchange", func() map[string]interface{} {
		return map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"], "scopes": "read"}
	})
	run("e", logical.ReadOperation, "roles/web", func() map[string]interface{} { return nil })
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	for _, name := range []string{"web", "user", "tool"} {
		held, _ := e.b.roles.get(context.Background(), e.storage, name)
		stored, _ := getRole(context.Background(), e.storage, name)
		if !reflect.DeepEqual(held, stored) {
			t.Fatalf("role %s in memory changed by mints:\n%+v\n%+v", name, held, stored)
		}
	}
}

// FINDING (low): mountTTLs' argument is that Vault caps the lease of a
// credential minted under a max_lease_ttl up to a second old. An orphan
// role's keys have no lease: one minted within mountTTLEvery of a tune
// that lowered max_lease_ttl keeps the old max, and nothing caps it.
// roleReadGate holds one read of roles/web, once armed, after it read
// storage and before it returns: the read saw the old role.
type roleReadGate struct {
	logical.Storage
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (s *roleReadGate) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	e, err := s.Storage.Get(ctx, key)
	if key == rolePath("web") && s.armed.CompareAndSwap(true, false) {
		close(s.reached)
		<-s.release
	}
	return e, err
}

// The interleaving itself, deterministic: a token mint reads the old role
// from storage, a write of the role runs and answers, then the mint's fill
// lands. The next mint must see the write.
func TestTokenMintRacingARoleWriteKeepsNothingStale(t *testing.T) {
	e := newTestEnv(t)
	gs := &roleReadGate{Storage: e.storage, reached: make(chan struct{}), release: make(chan struct{})}
	e.storage = gs
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	e.createRole("web", map[string]interface{}{"scopes": "old", "audiences": "svc"})
	e.b.roles.forget("web")
	gs.armed.Store(true)
	done := make(chan []string)
	go func() {
		resp, err := e.req("e", logical.UpdateOperation, "token/web", nil)
		if err != nil || resp.IsError() {
			done <- nil
			return
		}
		done <- resp.Data["scopes"].([]string)
	}()
	<-gs.reached
	e.ok(logical.UpdateOperation, "roles/web", map[string]interface{}{"scopes": "new"})
	close(gs.release)
	if got := <-done; len(got) != 1 || got[0] != "old" {
		t.Fatalf("the racing mint: %v", got)
	}
	if got := e.ok(logical.UpdateOperation, "token/web", nil).Data["scopes"].([]string); len(got) != 1 || got[0] != "new" {
		t.Fatalf("after the write answered and the racing fill landed: scopes %v", got)
	}
}
