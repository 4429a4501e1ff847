package backend

// Adversarial review of issue 26's mint path (3a4c610): roles and config in
// memory (storedCache), the key_id ledger, the chain written outside the
// revocation lock.

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

// A token mint (no role lock) that reads the role while a write replaces
// it must not put the old role back in memory: once a write answered, the
// next mint sees it. Many concurrent fills, storage reads slowed.
func TestRevTokenMintSeesEachAnsweredRoleWrite(t *testing.T) {
	e := newTestEnv(t)
	e.storage = slowRoleStorage{e.storage}
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	e.createRole("web", map[string]interface{}{"scopes": "s0", "audiences": "svc"})
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
				resp, err := e.req("e", logical.UpdateOperation, "token/web", nil)
				if err != nil {
					bad.Store(err.Error())
					return
				}
				_ = resp
			}
		}()
	}
	for i := 1; i <= 150; i++ {
		want := fmt.Sprintf("s%d", i)
		e.ok(logical.UpdateOperation, "roles/web", map[string]interface{}{"scopes": want})
		resp := e.ok(logical.UpdateOperation, "token/web", nil)
		if got := resp.Data["scopes"].([]string); len(got) != 1 || got[0] != want {
			close(stop)
			wg.Wait()
			t.Fatalf("write %d answered, then a mint used scopes %v (a stale role in memory)", i, got)
		}
	}
	close(stop)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
}

// No key mint that starts after a suspension answered succeeds until a
// resume starts, whatever mints filled the role in memory meanwhile.
func TestRevNoKeyMintAfterSuspendAnswered(t *testing.T) {
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
		epoch.Add(1)
		suspended.Store(false)
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
func TestRevNoMintAfterDeleteAnswered(t *testing.T) {
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
func TestRevJWTMintSeesEachAnsweredConfigWrite(t *testing.T) {
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
// them: -race says whether any writes through the shared *role; after,
// the role in memory is still what storage holds.
func TestRevConcurrentMintsLeaveSharedRoleAlone(t *testing.T) {
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

// FINDING (low): answers share the role in memory. A key mint's scopes
// (the role's default scopes), bound_cidrs, and a role read's slices and
// metadata map are the cached role's own: whoever changes an answer in
// place changes the role every later mint narrows to. Out of process
// (gRPC) nobody can; in process (tests, an embedding, a future handler
// that post-processes resp.Data) it is a privilege widening.
// The ledger under concurrent claims of one id in one second: one wins.
// FINDING (low): a second older than the two held (the clock stepped back
// more than a second) is neither checked against nor recorded in the
// ledger: two mints that draw the same id in it are both told fresh, both
// look storage up before either writes, and the second overwrites the
// first's key (the pre-change createKey had this check-then-write for
// every mint; the ledger closes it for all seconds but these).
// The ledger's maps hold two seconds' ids, however long mints go on.
// flakySystemView answers MaxLeaseTTL 0 once, as the gRPC system view
// client does when its call to Vault fails (it swallows the error).
// FINDING (low-medium, availability): one failed read of the mount's TTLs
// is kept for mountTTLEvery: every mint in that second fails ("max TTL
// must be greater than zero", a 500), not only the one whose call failed.
// flakyDefaultView answers DefaultLeaseTTL 0 once (a failed gRPC call).
// The same with the mount's default TTL: a role without ttl mints, for a
// second after one failed read, keys whose lifetime is 0 (expired as
// answered), not only in the one mint whose call failed.
// The chain is filed outside the revocation lock: a revocation of the
// subject racing exchanges still revokes every token exchanged from it
// (the slot is taken under the lock), and down a level too.
func TestRevExchangeRacingSubjectRevocation(t *testing.T) {
	for round := 0; round < 5; round++ {
		e := delegationEnv(t)
		t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
		var mu sync.Mutex
		var minted []string
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 6; i++ {
					r1, err := e.req("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]})
					if err != nil || r1.IsError() {
						continue
					}
					mu.Lock()
					minted = append(minted, r1.Data["jti"].(string))
					mu.Unlock()
					r2, err := e.req("subtool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "subtool", "subject_token": r1.Data["token"]})
					if err != nil || r2.IsError() {
						continue
					}
					mu.Lock()
					minted = append(minted, r2.Data["jti"].(string))
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(round) * 3 * time.Millisecond)
		if resp, err := e.lease(logical.RevokeOperation, t0.Secret); err != nil || resp.IsError() {
			t.Fatalf("revoking the subject: %v %v", resp, err)
		}
		wg.Wait()
		for _, jti := range minted {
			if en, _ := e.storage.Get(context.Background(), revokedJTIPath(jti)); en == nil {
				t.Errorf("round %d: %s exchanged (directly or down a level) from a revoked subject is not revoked", round, jti)
			}
		}
		t.Logf("round %d: %d exchanged, all revoked", round, len(minted))
	}
}

// FINDING (low): mountTTLs' argument is that Vault caps the lease of a
// credential minted under a max_lease_ttl up to a second old. An orphan
// role's keys have no lease: one minted within mountTTLEvery of a tune
// that lowered max_lease_ttl keeps the old max, and nothing caps it.
// revGateStorage holds one read of roles/web, once armed, after it read
// storage and before it returns: the read saw the old role.
type revGateStorage struct {
	logical.Storage
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (s *revGateStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
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
func TestRevStaleFillAfterAnsweredWrite(t *testing.T) {
	e := newTestEnv(t)
	gs := &revGateStorage{Storage: e.storage, reached: make(chan struct{}), release: make(chan struct{})}
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
