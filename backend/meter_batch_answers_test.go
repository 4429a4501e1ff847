package backend

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// queuedReq is one request a test queues behind a held meter write.
type queuedReq struct {
	who  string
	path string
	data map[string]interface{}
}

// lineUpReqs holds the meter's lock in the write of a first reserve (as
// "first", of units 1 on id), queues reqs in order behind it, releases
// it, and returns every answer (the first's at index 0). Requests are
// queued one at a time so their order in the queue is reqs' order.
func lineUpReqs(t *testing.T, e *testEnv, g *gatedStorage, id string, reqs []queuedReq) []*logical.Response {
	t.Helper()
	held, release := g.hold()
	answers := make([]*logical.Response, len(reqs)+1)
	var wg sync.WaitGroup
	send := func(i int, r queuedReq) {
		defer wg.Done()
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: r.path, Storage: e.storage,
			EntityID: r.who, MountPoint: "keybroker/", Data: r.data})
		if err != nil {
			resp = &logical.Response{Data: map[string]interface{}{"internal_error": err.Error()}}
		}
		answers[i] = resp
	}
	wg.Add(1)
	go send(0, queuedReq{"first", "budget/reserve", map[string]interface{}{"id": id, "units": 1}})
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
func TestBatchKeepsTheCapOnReservationsPerIdentity(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 1000})
	id := e.mint("r", nil).Data["key_id"].(string)
	var reqs []queuedReq
	for i := 0; i < 10; i++ {
		reqs = append(reqs, queuedReq{"same", "budget/reserve", map[string]interface{}{"id": id, "units": 1}})
	}
	reqs = append(reqs, queuedReq{"other", "budget/reserve", map[string]interface{}{"id": id, "units": 1}})
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
func TestBatchAnswersEachOpAsOneByOne(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100, "max_cost_per_request": 2, "tenant": "acme"})
	id := e.mint("r", nil).Data["key_id"].(string)
	resp, _ := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
		EntityID: "a", MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 10}})
	r1 := resp.Data["reservation_id"].(string)

	rep := func(who string, used int64, release bool) queuedReq {
		return queuedReq{who, "budget/report", map[string]interface{}{"reservation_id": r1, "used": used, "release": release}}
	}
	reqs := []queuedReq{
		rep("b", 5, false), // 403, changes nothing
		rep("a", 5, false), // ok
		rep("a", 3, false), // 400: below what was reported
		{"a", "budget/report", map[string]interface{}{"reservation_id": id + ":nope", "used": 1}},   // 400 unknown
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

// Reserves and reports through a rotated key and its successor, many at
// once: the meter and its tenant account the same use and holds, and
// no more than the budget is ever out.
func TestBatchesThroughALinkKeepTheTenantInStep(t *testing.T) {
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

// outcome names how a request was answered, for tables of answers.
func outcome(r *logical.Response) string {
	switch {
	case isInternal(r):
		return "internal"
	case r.IsError():
		return "refused"
	case r.Data["exhausted"] == true:
		return "exhausted"
	}
	return "ok"
}

// A batch whose write fails fails the ops from the first that changed the
// meter on, refusals among them (they may rest on the change that was not
// stored), and keeps the answers of the ops before it, which changed
// nothing and so are answered as one by one whatever storage does.
func TestFailedWriteFailsTheOpsFromTheFirstChange(t *testing.T) {
	tests := []struct {
		name string
		// reqs are queued behind a reserve that takes the last of a
		// budget of 2; r1, a reservation of 1, stands for the other.
		reqs func(id, r1 string) []queuedReq
		want []string
	}{
		{"an exhausted reserve before a change", func(id, r1 string) []queuedReq {
			return []queuedReq{
				{"b", "budget/reserve", map[string]interface{}{"id": id, "units": 1}},
				{"a", "budget/report", map[string]interface{}{"reservation_id": r1, "used": 1}},
			}
		}, []string{"exhausted", "internal"}},
		{"a refusal resting on an unstored report", func(id, r1 string) []queuedReq {
			return []queuedReq{
				{"a", "budget/report", map[string]interface{}{"reservation_id": r1, "used": 1}},
				{"a", "budget/report", map[string]interface{}{"reservation_id": r1, "used": 0}}, // below the unstored 1
			}
		}, []string{"internal", "internal"}},
		{"refusals before a change", func(id, r1 string) []queuedReq {
			return []queuedReq{
				{"b", "budget/report", map[string]interface{}{"reservation_id": id + ":nope", "used": 1}},
				{"a", "budget/reserve", map[string]interface{}{"id": id, "units": 1}},
				{"a", "budget/report", map[string]interface{}{"reservation_id": r1, "used": 1, "release": true}},
			}
		}, []string{"refused", "exhausted", "internal"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			g := &gatedStorage{Storage: e.storage}
			e.storage = g
			e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 2})
			id := e.mint("r", nil).Data["key_id"].(string)
			resp, err := e.reserveAs("a", id, 1)
			if err != nil || resp.IsError() {
				t.Fatalf("reserve: %v %v", err, resp)
			}
			r1 := resp.Data["reservation_id"].(string)
			g.mu.Lock()
			g.failNext = true // the write after the first's (held) one
			g.mu.Unlock()
			ans := lineUpReqs(t, e, g, id, tt.reqs(id, r1))
			if ans[0].IsError() {
				t.Fatalf("first: %v", ans[0].Error())
			}
			for i, want := range tt.want {
				if got := outcome(ans[i+1]); got != want {
					t.Errorf("answer %d: %s (%v), want %s", i, got, ans[i+1].Data, want)
				}
			}
			// Only the two reservations of 1 hold, nothing is used.
			if got := e.spend("budget/" + id); got != [4]int64{2, 0, 2, 0} {
				t.Fatalf("spend: %v", got)
			}
		})
	}
}

// An op that panics in a batch fails, and so do the ops after it; the
// ones before it are answered, and their changes stored without any part
// of the panicking op's.
func TestPanickingOpFailsOnlyItselfAndThoseAfter(t *testing.T) {
	mt, s := newMeters(), &logical.InmemStorage{}
	path := meterPath("jti-1")
	if err := putJSON(context.Background(), s, path, &meter{Limit: 10, Period: time.Hour}); err != nil {
		t.Fatal(err)
	}
	l := locksutil.LockForKey(mt.meterLocks, path)
	l.Lock() // so that the three ops queue into one batch
	applies := []func(b *meterBatch) error{
		func(b *meterBatch) error { b.m.Used++; b.changed = true; return nil },
		func(b *meterBatch) error { b.m.Limit = 999; b.changed = true; panic("boom") },
		func(b *meterBatch) error { return nil },
	}
	errs := make([]error, len(applies))
	panics := make([]any, len(applies))
	var wg sync.WaitGroup
	for i, apply := range applies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { panics[i] = recover() }()
			errs[i] = mt.run(context.Background(), s, &meterOp{id: "jti-1", apply: apply})
		}()
		for deadline := time.Now().Add(5 * time.Second); mt.queued(path) < i+1; time.Sleep(200 * time.Microsecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d ops queued", mt.queued(path), i+1)
			}
		}
	}
	l.Unlock()
	wg.Wait()
	if errs[0] != nil || panics[0] != nil {
		t.Errorf("the op before the panic: %v %v", errs[0], panics[0])
	}
	if panics[1] != "boom" {
		t.Errorf("the panicking op's request: %v, want its panic", panics[1])
	}
	if errs[2] == nil || panics[2] != nil {
		t.Errorf("the op after the panic: %v %v, want an error", errs[2], panics[2])
	}
	m, err := getJSON[meter](context.Background(), s, path)
	if err != nil || m.Used != 1 || m.Limit != 10 {
		t.Fatalf("stored meter %+v %v, want used 1 and limit 10", m, err)
	}
}

// Ops on a meter that storage does not hold, or holds from before it kept
// max_cost_per_request, each see the meter their own key makes, as one by
// one: a rotated key and its successor queued together on the shared
// meter do not both get the first one's. One whose meter names another
// tenant than the batch's is applied in a batch of its own.
func TestBatchCompletesTheMeterFromEachOpsOwnKey(t *testing.T) {
	tests := []struct {
		name   string
		stored *meter // at the rotated key's meter (nil: none)
		tenant string // the successor's
	}{
		{"no meter stored", nil, ""},
		{"no meter stored, the successor's of a tenant", nil, "acme"},
		{"a meter from before max_cost_per_request", &meter{Limit: 50, Period: time.Hour}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.createRole("small", map[string]interface{}{"scopes": "read", "budget": 10, "max_cost_per_request": 1})
			large := map[string]interface{}{"scopes": "read", "budget": 20, "max_cost_per_request": 2}
			if tt.tenant != "" {
				e.ok(logical.UpdateOperation, "tenants/"+tt.tenant, map[string]interface{}{"budget": 100})
				large["tenant"] = tt.tenant
			}
			e.createRole("large", large)
			old := e.mint("small", nil).Data["key_id"].(string)
			succ := e.mint("large", nil).Data["key_id"].(string)
			ctx, s, mt := context.Background(), e.storage, e.b.meters
			path := meterPath(old)
			if err := s.Delete(ctx, path); err != nil {
				t.Fatal(err)
			}
			if tt.stored != nil {
				if err := putJSON(ctx, s, path, tt.stored); err != nil {
					t.Fatal(err)
				}
			}
			if err := putJSON(ctx, s, meterPath(succ), &meter{Link: old}); err != nil {
				t.Fatal(err)
			}
			l := locksutil.LockForKey(mt.meterLocks, path)
			l.Lock() // so that both ops queue into one batch
			var seen [2]meter
			var withTenant [2]bool
			var wg sync.WaitGroup
			for i, id := range []string{old, succ} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := mt.run(ctx, s, &meterOp{id: id, apply: func(b *meterBatch) error {
						if b.m != nil {
							seen[i] = *b.m
						}
						withTenant[i] = b.t != nil
						return nil
					}})
					if err != nil {
						t.Error(err)
					}
				}()
				for deadline := time.Now().Add(5 * time.Second); mt.queued(path) < i+1; time.Sleep(200 * time.Microsecond) {
					if time.Now().After(deadline) {
						l.Unlock()
						t.Fatalf("%d of %d ops queued", mt.queued(path), i+1)
					}
				}
			}
			l.Unlock()
			wg.Wait()
			if seen[0].MaxCost != 1 || seen[1].MaxCost != 2 {
				t.Fatalf("caps on reports seen: %d and %d, want each key's, 1 and 2", seen[0].MaxCost, seen[1].MaxCost)
			}
			if seen[1].Tenant != tt.tenant || withTenant[1] != (tt.tenant != "") {
				t.Fatalf("the successor's meter names tenant %q (entry held: %v), want %q", seen[1].Tenant, withTenant[1], tt.tenant)
			}
			if tt.stored == nil && (seen[0].Limit != 10 || seen[1].Limit != 20) {
				t.Fatalf("budgets seen: %d and %d, want each key's, 10 and 20", seen[0].Limit, seen[1].Limit)
			}
		})
	}
}
