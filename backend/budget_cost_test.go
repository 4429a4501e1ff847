package backend

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// budgetCostEnv is a key of a tenant with a ceiling, as make bench's
// reserve and report rows use, with one reservation made; storage calls
// are counted from here on.
func budgetCostEnv(t *testing.T) (e *testEnv, c *countingStorage, id, resID string) {
	e = newTestEnv(t)
	e.ok(logical.UpdateOperation, "tenants/bench", map[string]interface{}{"budget": int64(1e15)})
	e.createRole("tenant", map[string]interface{}{"scopes": "read", "tenant": "bench", "ttl": "24h", "max_cost_per_request": 1})
	id = e.mint("tenant", nil).Data["key_id"].(string)
	resID = e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 1, "ttl": "10m"}).Data["reservation_id"].(string)
	c = newCountingStorage(e.storage)
	e.storage = c
	return e, c, id, resID
}

// What one reserve (a top-up) and one report cost in storage calls: one
// read of the key record (for the revocation and expiry checks), of the
// meter and of its tenant; one write of each. Before issue 26 a reserve
// read the key and the meter twice each, a report the meter twice.
func TestBudgetStorageCalls(t *testing.T) {
	e, c, id, resID := budgetCostEnv(t)
	want := map[string]int{"get keys/": 1, "get meters/": 1, "get tenants/": 1, "put meters/": 1, "put tenants/": 1, "get": 3, "put": 2, "list": 0, "delete": 0}
	check := func(what string, want map[string]int) {
		t.Helper()
		for call, n := range want {
			if got := c.calls[call]; got != n {
				t.Errorf("%s: %d %q calls, want %d (all: %v)", what, got, call, n, c.calls)
			}
		}
		c.reset()
	}
	for i := 0; i < 3; i++ { // the same each time, and on a new reservation
		e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 1, "ttl": "10m", "reservation_id": resID})
		check("reserve (top-up)", want)
	}
	e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 1, "ttl": "10m"})
	check("reserve (new reservation)", want)

	want["get keys/"], want["get"] = 0, 2 // a report needs nothing of the key
	for i := int64(1); i <= 3; i++ {
		e.ok(logical.UpdateOperation, "budget/report", map[string]interface{}{"reservation_id": resID, "used": i})
		check("report", want)
	}
	// A report of no new use only renews the reservation: the tenant's
	// entry changes only when its expiry passes into another second.
	e.ok(logical.UpdateOperation, "budget/report", map[string]interface{}{"reservation_id": resID, "used": 3})
	if c.n("put", tenantPrefix) > 1 || c.n("put", meterPrefix) != 1 || c.n("get") != 2 {
		t.Errorf("a renewal: %v", c.calls)
	}
}

// benchBudget is budgetCostEnv for a benchmark: the backend as Vault
// runs it (no answer checks wrapped around its handlers), on in-memory
// storage, and a request sender.
func benchBudget(b *testing.B, s logical.Storage) (do func(path string, data map[string]interface{}), id, resID string) {
	conf := logical.TestBackendConfig()
	conf.StorageView = s
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		b.Fatal(err)
	}
	lb.(*backend).tidySchedule.disabled = true
	var last map[string]interface{}
	do = func(path string, data map[string]interface{}) {
		resp, err := lb.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: path, Data: data,
			Storage: conf.StorageView, EntityID: "bench", MountPoint: "keybroker/"})
		if err != nil || (resp != nil && resp.IsError()) {
			b.Fatalf("%s: %v %v", path, err, resp)
		}
		if resp != nil {
			last = resp.Data
		}
	}
	do("tenants/bench", map[string]interface{}{"budget": int64(1e15)})
	do("roles/tenant", map[string]interface{}{"scopes": "read", "tenant": "bench", "ttl": "24h", "max_cost_per_request": 1})
	do("keys/tenant", map[string]interface{}{"name": "bench"})
	id = last["key_id"].(string)
	do("budget/reserve", map[string]interface{}{"id": id, "units": 1, "ttl": "10m"})
	return do, id, last["reservation_id"].(string)
}

// BenchmarkBudgetReserve is one credential's reserve (a top-up) through
// HandleRequest on in-memory storage: the plugin's own cost, without
// Vault's gRPC round trips to storage.
func BenchmarkBudgetReserve(b *testing.B) {
	do, id, resID := benchBudget(b, &logical.InmemStorage{})
	b.ReportAllocs()
	for b.Loop() {
		do("budget/reserve", map[string]interface{}{"id": id, "units": 1, "ttl": "10m", "reservation_id": resID})
	}
}

// BenchmarkBudgetReport is one report on one reservation.
func BenchmarkBudgetReport(b *testing.B) {
	do, _, resID := benchBudget(b, &logical.InmemStorage{})
	b.ReportAllocs()
	for b.Loop() {
		do("budget/report", map[string]interface{}{"reservation_id": resID, "used": 0})
	}
}

// slowStorage answers each call after a delay, as Vault's storage does a
// plugin: a gRPC round trip and the storage behind it.
type slowStorage struct {
	logical.Storage
	delay time.Duration
}

func (s slowStorage) Get(ctx context.Context, k string) (*logical.StorageEntry, error) {
	time.Sleep(s.delay)
	return s.Storage.Get(ctx, k)
}

func (s slowStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	time.Sleep(s.delay)
	return s.Storage.Put(ctx, e)
}

// BenchmarkBudgetReserveContended is 32 callers reserving on one
// credential over storage that takes 100µs a call: what serialises on
// the meter's lock shows here (ns/op is wall time per reserve of all of
// them together).
func BenchmarkBudgetReserveContended(b *testing.B) {
	do, id, resID := benchBudget(b, slowStorage{&logical.InmemStorage{}, 100 * time.Microsecond})
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			do("budget/reserve", map[string]interface{}{"id": id, "units": 1, "ttl": "10m", "reservation_id": resID})
		}
	})
}
