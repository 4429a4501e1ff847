package backend

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// revReq is one request a review test queues behind a held meter write.
type revReq struct {
	who  string
	path string
	data map[string]interface{}
}

// lineUpReqs holds the meter's lock in the write of a first reserve (as
// "first", of units 1 on id), queues reqs in order behind it, releases
// it, and returns every answer (the first's at index 0). Requests are
// queued one at a time so their order in the queue is reqs' order.
func lineUpReqs(t *testing.T, e *testEnv, g *gatedStorage, id string, reqs []revReq) []*logical.Response {
	t.Helper()
	held, release := g.hold()
	answers := make([]*logical.Response, len(reqs)+1)
	var wg sync.WaitGroup
	send := func(i int, r revReq) {
		defer wg.Done()
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: r.path, Storage: e.storage,
			EntityID: r.who, MountPoint: "keybroker/", Data: r.data})
		if err != nil {
			resp = &logical.Response{Data: map[string]interface{}{"internal_error": err.Error()}}
		}
		answers[i] = resp
	}
	wg.Add(1)
	go send(0, revReq{"first", "budget/reserve", map[string]interface{}{"id": id, "units": 1}})
	<-held
	for i, r := range reqs {
		wg.Add(1)
		go send(i+1, r)
		for deadline := time.Now().Add(5 * time.Second); e.b.meters.queued(meterPath(id)) < i+1; time.Sleep(200 * time.Microsecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d requests queued", e.b.meters.queued(meterPath(id)), i+1)
			}
		}
	}
	close(release)
	wg.Wait()
	return answers
}

func isInternal(r *logical.Response) bool { _, ok := r.Data["internal_error"]; return ok }

// One identity's reserves queued in one batch: the cap of 8 live
// reservations per identity holds, the ones past it are refused as user
// errors, and the neighbours are not failed.
func TestReviewBatchPerOwnerCap(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 1000})
	id := e.mint("r", nil).Data["key_id"].(string)
	var reqs []revReq
	for i := 0; i < 10; i++ {
		reqs = append(reqs, revReq{"same", "budget/reserve", map[string]interface{}{"id": id, "units": 1}})
	}
	reqs = append(reqs, revReq{"other", "budget/reserve", map[string]interface{}{"id": id, "units": 1}})
	ans := lineUpReqs(t, e, g, id, reqs)
	granted, refused := 0, 0
	for i, r := range ans[1:11] {
		switch {
		case isInternal(r):
			t.Fatalf("reserve %d: internal error %v", i, r.Data)
		case r.IsError():
			if !strings.Contains(r.Error().Error(), "already holds 8") {
				t.Fatalf("reserve %d: %v", i, r.Error())
			}
			refused++
		default:
			granted++
		}
	}
	if granted != 8 || refused != 2 {
		t.Fatalf("granted %d refused %d, want 8 and 2", granted, refused)
	}
	if ans[0].IsError() || ans[11].IsError() || isInternal(ans[11]) {
		t.Fatalf("neighbours: %v / %v", ans[0], ans[11])
	}
	if got := e.spend("budget/" + id); got != [4]int64{1000, 0, 10, 990} {
		t.Fatalf("spend: %v", got)
	}
}

// A batch mixing good and bad reports and reserves on one reservation:
// each is answered as it would be one by one, in queue order.
func TestReviewBatchMixedOps(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100, "max_cost_per_request": 2, "tenant": "acme"})
	id := e.mint("r", nil).Data["key_id"].(string)
	resp, _ := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
		EntityID: "a", MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 10}})
	r1 := resp.Data["reservation_id"].(string)

	rep := func(who string, used int64, release bool) revReq {
		return revReq{who, "budget/report", map[string]interface{}{"reservation_id": r1, "used": used, "release": release}}
	}
	reqs := []revReq{
		rep("b", 5, false), // 403, changes nothing
		rep("a", 5, false), // ok
		rep("a", 3, false), // 400: below what was reported
		{"a", "budget/report", map[string]interface{}{"reservation_id": id + ":nope", "used": 1}}, // 400 unknown
		{"a", "budget/reserve", map[string]interface{}{"id": id, "units": 5, "reservation_id": r1}}, // top-up: r1 15 units
		rep("a", 30, true), // capped at 15+2=17, released
		{"a", "budget/reserve", map[string]interface{}{"id": id, "units": 5, "reservation_id": r1}}, // r1 ended: new reservation
		rep("a", 17, false), // ended: released, no change
	}
	ans := lineUpReqs(t, e, g, id, reqs)
	for i, r := range ans {
		if i != 1 && isInternal(r) {
			t.Fatalf("answer %d internal: %v", i, r.Data)
		}
	}
	if !isInternal(ans[1]) || !strings.Contains(ans[1].Data["internal_error"].(string), "another Vault identity") {
		t.Fatalf("403 report: %v", ans[1])
	}
	if ans[2].IsError() || ans[2].Data["used"].(int64) != 5 {
		t.Fatalf("report 5: %v", ans[2])
	}
	if !ans[3].IsError() || !ans[4].IsError() {
		t.Fatalf("bad reports: %v / %v", ans[3], ans[4])
	}
	if ans[5].IsError() || ans[5].Data["reservation_id"] != r1 || ans[5].Data["units"].(int64) != 15 {
		t.Fatalf("top-up: %v", ans[5].Data)
	}
	if ans[6].IsError() || ans[6].Data["capped"] != true || ans[6].Data["used"].(int64) != 17 {
		t.Fatalf("capped release: %v", ans[6].Data)
	}
	if ans[7].IsError() || ans[7].Data["reservation_id"] == r1 {
		t.Fatalf("reserve naming released: %v", ans[7].Data)
	}
	if ans[8].IsError() || ans[8].Data["released"] != true {
		t.Fatalf("report on released: %v", ans[8].Data)
	}
	// used 17; live: first's 1, new 5.
	if got := e.spend("budget/" + id); got != [4]int64{100, 17, 6, 77} {
		t.Fatalf("spend: %v", got)
	}
	if got := e.spend("tenants/acme"); got != [4]int64{1000, 17, 6, 977} {
		t.Fatalf("tenant: %v", got)
	}
}

// Show the answers on failure.
var _ = fmt.Sprint

// readGate holds the next read of one storage path until released.
type readGate struct {
	logical.Storage
	mu            sync.Mutex
	path          string
	held, release chan struct{}
}

func (g *readGate) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	g.mu.Lock()
	var held, release chan struct{}
	if key == g.path && g.release != nil {
		held, release = g.held, g.release
		g.held, g.release = nil, nil
	}
	g.mu.Unlock()
	if release != nil {
		close(held)
		<-release
	}
	return g.Storage.Get(ctx, key)
}

// A batch's now is taken before it reads its meter and waits for its
// tenant's lock. When another meter of the tenant rolls the tenant into
// a new period meanwhile, the batch's stale now rolls the tenant back
// (pool.roll resets on any other period start, earlier ones included):
// the new period's holds are wiped and its ceiling over-granted.
func TestReviewStaleNowRollsTenantBack(t *testing.T) {
	e := newTestEnv(t)
	g := &readGate{Storage: e.storage}
	e.storage = g
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 100, "budget_period": "2s"})
	e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme"})
	a := e.mint("r", nil).Data["key_id"].(string)
	b := e.mint("r", nil).Data["key_id"].(string)
	reserveAs := func(who, id string) int64 {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
			EntityID: who, MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 60, "min_units": 60, "ttl": 60}})
		if err != nil || resp.IsError() {
			t.Errorf("reserve %s on %s: %v %v", who, id, err, resp)
			return 0
		}
		return resp.Data["granted"].(int64)
	}
	// Start early in a period.
	for time.Now().UnixMilli()%2000 > 200 {
		time.Sleep(5 * time.Millisecond)
	}
	p1 := time.Now().Truncate(2 * time.Second).Add(2 * time.Second)
	g.mu.Lock()
	g.path, g.held, g.release = meterPath(a), make(chan struct{}), make(chan struct{})
	held, release := g.held, g.release
	g.mu.Unlock()
	aGranted := make(chan int64)
	go func() { aGranted <- reserveAs("x", a) }() // now taken in this period, then held reading its meter
	<-held
	time.Sleep(time.Until(p1) + 100*time.Millisecond)
	bGranted := reserveAs("y", b) // the next period: the tenant rolled, 60 held
	close(release)
	<-aGranted // rolls the tenant back to the last period
	cGranted := reserveAs("z", b)
	if bGranted+cGranted > 100 {
		t.Fatalf("in one tenant period of ceiling 100, %d and %d were granted (%d)", bGranted, cGranted, bGranted+cGranted)
	}
}

// stuckStorage answers reads of one path only when the caller's context
// ends, as a gRPC storage call to a Vault whose storage is stuck does.
type stuckStorage struct {
	logical.Storage
	path string
}

func (s *stuckStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if key == s.path {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Storage.Get(ctx, key)
}

// A reserve whose request has a deadline (Vault's max_request_duration)
// ends by it when storage does not answer: before the batches it did, as
// its storage calls carried its context. The batch runs under
// context.WithoutCancel, so the call never ends, the meter's lock (and a
// tenant's) is held forever, and every request queued behind waits too.
func TestReviewStuckStorageHonoursDeadline(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100})
	id := e.mint("r", nil).Data["key_id"].(string)
	e.storage = &stuckStorage{Storage: e.storage, path: meterPath(id)}
	done := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
				EntityID: "x", MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 1}})
			done <- err
		}()
	}
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("a reserve whose meter could not be read succeeded")
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("reserve %d still waiting 3s after its 200ms deadline", i)
		}
	}
}

// Reserves and reports through a rotated key and its successor, many at
// once: the meter and its tenant account the same use and holds, and
// no more than the budget is ever out.
func TestReviewStressThroughALinkKeepsTenantInStep(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1_000_000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 400, "max_cost_per_request": 2, "tenant": "acme"})
	oldID := e.mint("r", nil).Data["key_id"].(string)
	newID := e.ok(logical.UpdateOperation, e.keyPath(oldID)+"/rotate", map[string]interface{}{"grace": "1h"}).Data["key_id"].(string)
	call := func(who, path string, data map[string]interface{}) *logical.Response {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: path, Storage: e.storage,
			EntityID: who, MountPoint: "keybroker/", Data: data})
		if err != nil {
			t.Errorf("%s %v: %v", path, data, err)
			return nil
		}
		return resp
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var usedTotal int64
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			who := fmt.Sprintf("w%d", w)
			var held []string
			for i := 0; i < 15; i++ {
				id := []string{oldID, newID}[(w+i)%2]
				r := call(who, "budget/reserve", map[string]interface{}{"id": id, "units": 7, "ttl": 600})
				if r == nil {
					return
				}
				if r.IsError() {
					if !strings.Contains(r.Error().Error(), "already holds 8") {
						t.Errorf("reserve: %v", r.Error())
						return
					}
				} else if rid, ok := r.Data["reservation_id"].(string); ok {
					held = append(held, rid)
				}
				if len(held) > 0 && i%3 == 2 {
					rid := held[0]
					held = held[1:]
					a := call(who, "budget/report", map[string]interface{}{"reservation_id": rid, "used": 4, "release": true})
					if a == nil || a.IsError() {
						t.Errorf("report: %v", a)
						return
					}
					mu.Lock()
					usedTotal += 4
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	m := e.spend("budget/" + oldID)
	tn := e.spend("tenants/acme")
	// A report of 4 on a grant below 4 is recorded at grant+2 (capped).
	if m[1] != tn[1] || m[2] != tn[2] || m[1] > usedTotal || m[1]+m[2] > 400+2*usedTotal/4 {
		t.Fatalf("meter %v tenant %v, reported %d", m, tn, usedTotal)
	}
	if e.b.meters.queued(meterPath(oldID)) != 0 || len(e.b.meters.queues.byPath) != 0 {
		t.Fatalf("queues left: %v", e.b.meters.queues.byPath)
	}
}

// A reserve refused for want of budget (exhausted, granted 0) changes
// nothing and, one by one, is answered whatever storage does with
// others' writes. In a batch whose write fails it is answered 500.
func TestReviewExhaustedAnswerSurvivesNeighboursFailedWrite(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 2})
	id := e.mint("r", nil).Data["key_id"].(string)
	resp, _ := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
		EntityID: "a", MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 1}})
	r1 := resp.Data["reservation_id"].(string)
	g.mu.Lock()
	g.failNext = true // the write after the first's (held) one
	g.mu.Unlock()
	ans := lineUpReqs(t, e, g, id, []revReq{
		{"b", "budget/reserve", map[string]interface{}{"id": id, "units": 1}},             // exhausted: the first took the last unit
		{"a", "budget/report", map[string]interface{}{"reservation_id": r1, "used": 1}}, // needs a write, which fails
	})
	if ans[0].IsError() {
		t.Fatalf("first: %v", ans[0].Error())
	}
	if isInternal(ans[1]) || ans[1].IsError() || ans[1].Data["exhausted"] != true {
		t.Fatalf("the exhausted reserve, which wrote nothing: %v", ans[1].Data)
	}
}
