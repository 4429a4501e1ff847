package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// gatedStorage holds the next write of a meter until released, and can
// fail the one after, so that a test can line requests up behind a
// meter's lock.
type gatedStorage struct {
	logical.Storage
	mu       sync.Mutex
	held     chan struct{} // closed when a write is held
	release  chan struct{}
	failNext bool
	puts     int // writes of meters
}

func (g *gatedStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if !strings.HasPrefix(e.Key, meterPrefix) {
		return g.Storage.Put(ctx, e)
	}
	g.mu.Lock()
	g.puts++
	held, release, fail := g.held, g.release, g.failNext
	g.held, g.release = nil, nil
	if release == nil {
		g.failNext = false
	}
	g.mu.Unlock()
	if release != nil {
		close(held)
		<-release
	} else if fail {
		return errors.New("storage is down")
	}
	return g.Storage.Put(ctx, e)
}

// hold arms the gate: the next meter write waits for the returned
// release; held is closed once it does.
func (g *gatedStorage) hold() (held, release chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held, g.release = make(chan struct{}), make(chan struct{})
	return g.held, g.release
}

func (mt *meters) queued(path string) int {
	mt.queues.mu.Lock()
	defer mt.queues.mu.Unlock()
	if q := mt.queues.byPath[path]; q != nil {
		return len(q.ops)
	}
	return 0
}

// reserveAs sends a reserve as Vault identity who.
func (e *testEnv) reserveAs(who, id string, units int64) (*logical.Response, error) {
	return e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
		EntityID: who, MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": units, "min_units": units}})
}

// lineUp starts a reserve of units that holds the meter's lock in its
// write, then n more (as n identities) that queue behind it, and returns
// when they all have queued; release lets them go, and wait collects
// their answers.
func lineUp(t *testing.T, e *testEnv, g *gatedStorage, id string, n int, units int64) (release chan struct{}, wait func() []*logical.Response) {
	t.Helper()
	held, release := g.hold()
	answers := make([]*logical.Response, n+1)
	var wg sync.WaitGroup
	send := func(i int) {
		defer wg.Done()
		resp, err := e.reserveAs(fmt.Sprintf("s%d", i), id, units)
		if err != nil {
			resp = logical.ErrorResponse(err.Error())
		}
		answers[i] = resp
	}
	wg.Add(1)
	go send(0)
	<-held
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go send(i)
	}
	for deadline := time.Now().Add(5 * time.Second); e.b.meters.queued(meterPath(id)) < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d reserves queued", e.b.meters.queued(meterPath(id)), n)
		}
	}
	return release, func() []*logical.Response { wg.Wait(); return answers }
}

// Reserves queued behind a meter's lock are applied together and cost one
// write; what they are granted is what they would have been one by one.
func TestQueuedReservesShareOneWrite(t *testing.T) {
	e := newTestEnv(t)
	c := newCountingStorage(e.storage)
	g := &gatedStorage{Storage: c}
	e.storage = g
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100, "max_cost_per_request": 10})
	id := e.mint("r", nil).Data["key_id"].(string)

	const n = 12 // 12 x 10 > 100: the last are refused what is not there
	release, wait := lineUp(t, e, g, id, n, 10)
	before := g.puts
	c.reset()
	close(release)
	granted, ids := int64(0), map[string]bool{}
	for i, resp := range wait() {
		if resp.IsError() {
			t.Fatalf("reserve %d: %v", i, resp.Error())
		}
		granted += resp.Data["granted"].(int64)
		if r, ok := resp.Data["reservation_id"].(string); ok {
			ids[r] = true
		}
	}
	if granted != 100 || len(ids) != 10 {
		t.Fatalf("granted %d in %d reservations, want 100 in 10", granted, len(ids))
	}
	if writes := g.puts - before; writes != 1 {
		t.Fatalf("the %d queued reserves wrote the meter %d times, want once", n, writes)
	}
	if c.n("get", keyPrefix) != 1 || c.n("get", meterPrefix) != 1 {
		t.Fatalf("the %d queued reserves read the key and the meter: %v, want each once", n, c.calls)
	}
	if got := e.spend("budget/" + id); got != [4]int64{100, 0, 100, 0} {
		t.Fatalf("spend after the batch: %v", got)
	}
}

// A batch whose write fails fails every op in it, and none is counted.
func TestFailedBatchGrantsNothing(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100, "tenant": "acme"})
	id := e.mint("r", nil).Data["key_id"].(string)

	release, wait := lineUp(t, e, g, id, 5, 10)
	g.mu.Lock()
	g.failNext = true
	g.mu.Unlock()
	close(release)
	answers := wait()
	if answers[0].IsError() {
		t.Fatalf("the first reserve, written alone: %v", answers[0].Error())
	}
	for i, resp := range answers[1:] {
		if !resp.IsError() || !strings.Contains(resp.Error().Error(), "storage is down") {
			t.Fatalf("reserve %d of the failed batch: %v", i+1, resp)
		}
	}
	// The tenant's entry was written before the meter's failed: what it
	// holds for the lost grants comes back when they would have expired.
	if got := e.spend("budget/" + id); got != [4]int64{100, 0, 10, 90} {
		t.Fatalf("spend after a failed batch: %v", got)
	}
}

// A rotated key and its successor spend from one meter: reserves on both
// at once, queued on their own meters and then the shared one, grant
// exactly the budget, once.
func TestConcurrentReservesThroughALink(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1_000_000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 500, "tenant": "acme"})
	oldID := e.mint("r", nil).Data["key_id"].(string)
	e.reserve(oldID, 1) // the meter is made before the rotation links to it
	newID := e.ok(logical.UpdateOperation, e.keyPath(oldID)+"/rotate", map[string]interface{}{"grace": "1h"}).Data["key_id"].(string)

	var granted atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, id := range []string{oldID, newID, newID, oldID} {
				resp, err := e.reserveAs(fmt.Sprintf("s%d-%s", i, id), id, 10)
				if err != nil || resp.IsError() {
					t.Errorf("reserve on %s: %v %v", id, err, resp)
					return
				}
				granted.Add(resp.Data["granted"].(int64))
			}
		}()
	}
	wg.Wait()
	if granted.Load() != 499 {
		t.Fatalf("granted %d through both keys, want the 499 left", granted.Load())
	}
	for _, path := range []string{"budget/" + oldID, "budget/" + newID} {
		if got := e.spend(path); got != [4]int64{500, 0, 500, 0} {
			t.Fatalf("%s: %v", path, got)
		}
	}
	if got := e.spend("tenants/acme"); got != [4]int64{1_000_000, 0, 500, 1_000_000 - 500} {
		t.Fatalf("tenant: %v", got)
	}
}

// A batch that panics lets the meter go: its ops fail, and the next
// request on the meter is served.
func TestPanickingBatchLetsTheMeterGo(t *testing.T) {
	mt, s := newMeters(), &logical.InmemStorage{}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic was swallowed; guard would not answer 500")
			}
		}()
		_ = mt.run(context.Background(), s, &meterOp{id: "jti-1", apply: func(*meterBatch) error { panic("boom") }})
	}()
	done := make(chan error, 1)
	go func() {
		done <- mt.run(context.Background(), s, &meterOp{id: "jti-1", apply: func(b *meterBatch) error {
			if b.m != nil {
				return errors.New("a meter appeared")
			}
			return nil
		}})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the meter stayed locked after a panic")
	}
}

// A revocation stored while reserves wait in a meter's queue is seen by
// them: the batch reads the key when it runs.
func TestQueuedReservesSeeARevocation(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100})
	id := e.mint("r", nil).Data["key_id"].(string)

	release, wait := lineUp(t, e, g, id, 4, 1)
	e.ok(logical.DeleteOperation, e.keyPath(id), nil)
	close(release)
	answers := wait()
	if answers[0].IsError() {
		t.Fatalf("the reserve before the revocation: %v", answers[0].Error())
	}
	for i, resp := range answers[1:] {
		if !resp.IsError() || !strings.Contains(resp.Error().Error(), "is revoked") {
			t.Fatalf("reserve %d, queued when the key was revoked: %v", i+1, resp)
		}
	}
	if got := e.spend("budget/" + id); got != [4]int64{100, 0, 1, 99} {
		t.Fatalf("spend: %v", got)
	}
}
