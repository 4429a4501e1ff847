package backend

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// countingSystemView counts the calls a request makes to Vault's system
// view: in a real Vault each is a gRPC round trip from the plugin, as a
// storage call is.
type countingSystemView struct {
	logical.SystemView
	mu    sync.Mutex
	calls map[string]int
}

func (c *countingSystemView) count(name string) {
	c.mu.Lock()
	c.calls[name]++
	c.mu.Unlock()
}

func (c *countingSystemView) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	for _, v := range c.calls {
		total += v
	}
	return total
}

func (c *countingSystemView) reset() {
	c.mu.Lock()
	c.calls = map[string]int{}
	c.mu.Unlock()
}

func (c *countingSystemView) DefaultLeaseTTL() time.Duration {
	c.count("DefaultLeaseTTL")
	return c.SystemView.DefaultLeaseTTL()
}

func (c *countingSystemView) MaxLeaseTTL() time.Duration {
	c.count("MaxLeaseTTL")
	return c.SystemView.MaxLeaseTTL()
}

func (c *countingSystemView) ReplicationState() consts.ReplicationState {
	c.count("ReplicationState")
	return c.SystemView.ReplicationState()
}

func (c *countingSystemView) EntityInfo(id string) (*logical.Entity, error) {
	c.count("EntityInfo")
	return c.SystemView.EntityInfo(id)
}

func (c *countingSystemView) LocalMount() bool {
	c.count("LocalMount")
	return c.SystemView.LocalMount()
}

func (c *countingSystemView) Tainted() bool {
	c.count("Tainted")
	return c.SystemView.Tainted()
}

// mintCostEnv is delegationEnv with a key role, counting what each request
// asks of storage and of the system view.
func mintCostEnv(t testing.TB) (*testEnv, *countingStorage, *countingSystemView) {
	sys := &countingSystemView{SystemView: logical.TestSystemView(), calls: map[string]int{}}
	e := withDelegationRoles(newTestEnvWith(t, sys))
	e.createRole("web", map[string]interface{}{"scopes": "read", "ttl": "1h"})
	c := newCountingStorage(e.storage)
	e.storage = c
	return e, c, sys
}

// What one mint costs, in storage calls and system-view calls, each a
// round trip to Vault from a plugin. Before issue 26: a key mint read its
// role and its key_id and wrote its key (2 gets, 1 put), a JWT mint read
// its role and the config (2 gets), an exchange 7 gets and 2 puts; each
// asked the system view for the replication state and the mount's max
// TTL. Now the role and the config are in memory, a key_id is checked
// against the ledger, and the replication state and the mount's TTLs are
// asked at most once a second (system_view.go).
// The first mint of each reads what later ones find in memory; then the
// counts are per mint.
func TestMintStorageCalls(t *testing.T) {
	e, c, sys := mintCostEnv(t)
	e.b.keyIDs.trustFrom.Store(0) // past the ledger's warm-up (TestKeyIDLedger)
	subject := func() string {
		return e.as("user-entity", logical.UpdateOperation, "token/user", nil).Data["token"].(string)
	}
	cases := []struct {
		name             string
		mint             func()
		gets, puts, sysv int
	}{
		{"key", func() { e.mint("web", nil) }, 0, 1, 0},
		{"jwt", func() { subject() }, 0, 0, 0},
		// An exchange reads the subject's revocation twice (the second
		// under the revocation lock, so that a revocation in between is
		// seen), its derived index and its meter, and writes its chain and
		// the index.
		{"exchange", func() {
			tok := subject()
			c.reset()
			sys.reset()
			e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": tok})
		}, 4, 2, 0},
	}
	for _, tc := range cases {
		tc.mint()
		c.reset()
		sys.reset()
		tc.mint()
		t.Logf("%s: storage %v, system view %v", tc.name, c.calls, sys.calls)
		if c.n("get") != tc.gets || c.n("put") != tc.puts || c.n("list")+c.n("delete") != 0 || sys.n() != tc.sysv {
			t.Errorf("%s mint: storage %v, system view %v; want %d gets, %d puts, %d system-view calls", tc.name, c.calls, sys.calls, tc.gets, tc.puts, tc.sysv)
		}
	}
}

// One mint through HandleRequest over in-memory storage: the plugin's own
// work per mint, without the round trips TestMintStorageCalls counts.
//
//	go test -run '^$' -bench Mint -benchmem -count 3 ./backend/
func BenchmarkMint(b *testing.B) {
	// Not newTestEnv: its answer checks (checkAnswers) would be half of
	// what is measured.
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		b.Fatal(err)
	}
	e := withDelegationRoles(&testEnv{t: b, b: lb.(*backend), storage: conf.StorageView})
	e.createRole("web", map[string]interface{}{"scopes": "read", "ttl": "1h"})
	e.b.keyIDs.trustFrom.Store(0)
	subjects := make([]string, 0, 64)
	for range cap(subjects) {
		subjects = append(subjects, e.as("user-entity", logical.UpdateOperation, "token/user", nil).Data["token"].(string))
	}
	for _, bc := range []struct {
		name   string
		entity string
		path   string
		data   func(i int) map[string]interface{}
	}{
		{"key", "test-entity", "keys/web", func(int) map[string]interface{} { return map[string]interface{}{"name": "bench"} }},
		{"jwt", "user-entity", "token/user", func(int) map[string]interface{} { return map[string]interface{}{} }},
		{"exchange", "tool-entity", "token/exchange", func(i int) map[string]interface{} {
			return map[string]interface{}{"role": "tool", "subject_token": subjects[i%len(subjects)]}
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e.entityID = bc.entity
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				e.ok(logical.UpdateOperation, bc.path, bc.data(i))
			}
		})
	}
}
