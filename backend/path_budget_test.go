package backend

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// reserve asks for units and takes no less (min_units = units), so that
// grants are what is asked or what remains.
func (e *testEnv) reserve(id string, units int64) *logical.Response {
	e.t.Helper()
	return e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": units, "min_units": units, "holder": "test"})
}

func (e *testEnv) report(resID string, used int64, release bool) *logical.Response {
	e.t.Helper()
	return e.ok(logical.UpdateOperation, "budget/report", map[string]interface{}{"reservation_id": resID, "used": used, "release": release})
}

// spend reads limit, used, reserved and remaining of a budget or tenant path.
func (e *testEnv) spend(path string) [4]int64 {
	e.t.Helper()
	d := e.ok(logical.ReadOperation, path, nil).Data
	return [4]int64{d["limit"].(int64), d["used"].(int64), d["reserved"].(int64), d["remaining"].(int64)}
}

func TestRoleLimitsBadInput(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		data map[string]interface{}
		want string
	}{
		{map[string]interface{}{"budget": -1}, "budget must be between 0"},
		{map[string]interface{}{"budget": int64(2e15)}, "budget must be between 0"},
		{map[string]interface{}{"budget": 10, "max_cost_per_request": 11}, "must not exceed budget"},
		{map[string]interface{}{"max_cost_per_request": -5}, "max_cost_per_request must be between"},
		{map[string]interface{}{"budget": 10, "budget_period": "0s"}, ""}, // 0: the default
		{map[string]interface{}{"budget_period": "400d"}, "budget_period must be"},
		{map[string]interface{}{"rate_limit": -1}, "rate_limit must be between"},
		{map[string]interface{}{"rate_limit": 2e6}, "rate_limit must be between"},
		{map[string]interface{}{"rate_burst": 5}, "rate_burst needs a rate_limit"},
		{map[string]interface{}{"budget": "lots"}, "budget"},
	}
	for _, tt := range tests {
		data := map[string]interface{}{"scopes": "read"}
		for k, v := range tt.data {
			data[k] = v
		}
		if tt.want == "" {
			e.ok(logical.UpdateOperation, "roles/r", data)
			continue
		}
		e.userError(logical.UpdateOperation, "roles/bad", data, tt.want)
	}
	if e.do(logical.ReadOperation, "roles/bad", nil) != nil {
		t.Fatal("a rejected role was stored")
	}
	d := e.ok(logical.ReadOperation, "roles/r", nil).Data
	if d["budget_period"] != int64(86400) || d["max_cost_per_request"] != int64(1) {
		t.Fatalf("defaults: budget_period %v max_cost_per_request %v, want 86400 and 1", d["budget_period"], d["max_cost_per_request"])
	}
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"rate_limit": 2.5})
	if d := e.ok(logical.ReadOperation, "roles/r", nil).Data; d["rate_burst"] != 3 {
		t.Fatalf("rate_burst defaults to rate_limit rounded up: got %v", d["rate_burst"])
	}
}

func TestMintNarrowsBudget(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"budget": 100, "max_cost_per_request": 10, "rate_limit": 5})
	e.userError(logical.UpdateOperation, "keys/agent", map[string]interface{}{"name": "k", "budget": 101}, "exceeds role \"agent\"'s budget (100)")
	e.userError(logical.UpdateOperation, "keys/agent", map[string]interface{}{"name": "k", "budget": 0}, "budget must be between 1")
	e.userError(logical.UpdateOperation, "keys/agent", map[string]interface{}{"name": "k", "budget": 5}, "below role \"agent\"'s max_cost_per_request")
	e.userError(logical.UpdateOperation, "token/agent", map[string]interface{}{"budget": 1000}, "exceeds")
	if n := len(e.storageKeys(keyPrefix)); n != 0 {
		t.Fatalf("refused mints stored %d keys", n)
	}

	key := e.mint("agent", map[string]interface{}{"budget": 50})
	if key.Data["budget"] != int64(50) {
		t.Fatalf("minted key's budget = %v, want 50", key.Data["budget"])
	}
	v := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": key.Data["key"], "remote_addr": "10.1.2.3"}).Data
	if got := v["budget"].(*jwtverify.Budget); *got != (jwtverify.Budget{Units: 50, Period: 86400, MaxCost: 10}) {
		t.Fatalf("verify answer budget = %+v", got)
	}
	if got := v["rate_limit"].(*jwtverify.RateLimit); *got != (jwtverify.RateLimit{PerSecond: 5, Burst: 5}) {
		t.Fatalf("verify answer rate_limit = %+v", got)
	}
	if got := e.spend("budget/" + key.Data["key_id"].(string)); got != [4]int64{50, 0, 0, 50} {
		t.Fatalf("budget of the narrowed key = %v, want limit 50 remaining 50", got)
	}

	tok := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing", "budget": 20})
	c, err := e.offline(tok.Data["token"].(string), "billing")
	if err != nil {
		t.Fatal(err)
	}
	if c.Budget == nil || *c.Budget != (jwtverify.Budget{Units: 20, Period: 86400, MaxCost: 10}) || c.Rate == nil || c.Rate.PerSecond != 5 {
		t.Fatalf("token claims budget %+v rate %+v", c.Budget, c.Rate)
	}
	if got := e.spend("budget/" + tok.Data["jti"].(string)); got != [4]int64{20, 0, 0, 20} {
		t.Fatalf("budget of the token = %v", got)
	}

	// A role with no budget mints unmetered credentials, or metered ones on request.
	e.createRole("free", map[string]interface{}{"scopes": "read", "audiences": "billing"})
	free := e.mint("free", nil)
	v = e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": free.Data["key"]}).Data
	if v["budget"].(*jwtverify.Budget) != nil || v["rate_limit"].(*jwtverify.RateLimit) != nil {
		t.Fatalf("an unmetered key's verify answer carries budget %v / rate_limit %v", v["budget"], v["rate_limit"])
	}
	e.userError(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": free.Data["key_id"], "units": 1}, "not a metered credential")
	if got := e.mint("free", map[string]interface{}{"budget": 7}).Data["budget"]; got != int64(7) {
		t.Fatalf("a budget on an unlimited role: %v", got)
	}
}

func TestReserveAndReport(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100, "max_cost_per_request": 10})
	id := e.mint("r", nil).Data["key_id"].(string)
	path := "budget/" + id

	a := e.reserve(id, 60).Data
	if a["granted"] != int64(60) || a["remaining"] != int64(40) || a["exhausted"] != false {
		t.Fatalf("first reservation: %v", a)
	}
	b := e.reserve(id, 60).Data
	if b["granted"] != int64(40) || b["remaining"] != int64(0) {
		t.Fatalf("second reservation gets what is left: %v", b)
	}
	c := e.reserve(id, 60).Data
	if c["granted"] != int64(0) || c["exhausted"] != true || c["reset"] == nil || c["reservation_id"] != nil {
		t.Fatalf("third reservation: %v", c)
	}
	if got := e.spend(path); got != [4]int64{100, 0, 100, 0} {
		t.Fatalf("after reserving all: %v", got)
	}

	resA := a["reservation_id"].(string)
	e.report(resA, 30, false)
	if got := e.spend(path); got != [4]int64{100, 30, 70, 0} {
		t.Fatalf("after reporting 30 of 60: %v", got)
	}
	// Release returns the unused 30.
	if d := e.report(resA, 30, true).Data; d["remaining"] != int64(30) || d["released"] != true {
		t.Fatalf("release answer: %v", d)
	}

	// A release retried after its answer was lost is answered as the
	// first was; use reported after the release still counts.
	if d := e.report(resA, 30, true).Data; d["released"] != true || d["ended"] != "released" || d["remaining"] != int64(30) {
		t.Fatalf("a retried release: %v", d)
	}
	if d := e.report(resA, 34, false).Data; d["released"] != true || d["ended"] != "released" || d["expires_at"] != nil {
		t.Fatalf("a late report on a released reservation: %v", d)
	}
	if got := e.spend(path); got != [4]int64{100, 34, 40, 26} {
		t.Fatalf("after 4 more reported on the released reservation: %v", got)
	}
	// ... and so does use reported after a reservation expired, whose
	// unused units came back: it counts, holds nothing, is not renewed.
	resC := e.reserve(id, 10).Data["reservation_id"].(string)
	e.report(resC, 2, false)
	m, err := getJSON[meter](context.Background(), e.storage, meterPrefix+id)
	if err != nil {
		t.Fatal(err)
	}
	m.Reservations[resC].ExpiresAt = time.Now().Add(-time.Second)
	if err := putJSON(context.Background(), e.storage, meterPrefix+id, m); err != nil {
		t.Fatal(err)
	}
	if d := e.report(resC, 9, false).Data; d["released"] != true || d["ended"] != "expired" {
		t.Fatalf("a late report on an expired reservation: %v", d)
	}
	if got := e.spend(path); got != [4]int64{100, 43, 40, 17} {
		t.Fatalf("after 7 more reported on the expired reservation: %v", got)
	}
	if d := e.report(resC, 9, true).Data; d["released"] != true || d["ended"] != "expired" {
		t.Fatalf("releasing an expired reservation: %v", d)
	}
	if d := e.reserve(id, 5).Data; d["reservation_id"] == resC {
		t.Fatal("an expired reservation was topped up")
	}

	// Refused reports change nothing.
	before := e.spend(path)
	resB := b["reservation_id"].(string)
	e.report(resB, 20, false)
	before = e.spend(path)
	for _, tt := range []struct {
		data map[string]interface{}
		want string
	}{
		{map[string]interface{}{"reservation_id": resA, "used": 33}, "running total"}, // released at 34
		{map[string]interface{}{"reservation_id": id + ":nope", "used": 1}, "is unknown"},
		{map[string]interface{}{"reservation_id": "AAAAAAAAAAAA:x", "used": 1}, "is unknown"},
		{map[string]interface{}{"reservation_id": "garbage", "used": 1}, "is not one"},
		{map[string]interface{}{"reservation_id": resB, "used": 10}, "running total"},
		{map[string]interface{}{"reservation_id": resB, "used": -1}, "used must be between"},
		{map[string]interface{}{"reservation_id": resB, "used": 5, "extra": 1}, "unknown field"},
	} {
		e.userError(logical.UpdateOperation, "budget/report", tt.data, tt.want)
	}
	if got := e.spend(path); got != before {
		t.Fatalf("refused reports changed the counters: %v -> %v", before, got)
	}
	for _, tt := range []struct {
		data map[string]interface{}
		want string
	}{
		{map[string]interface{}{"id": id, "units": 0}, "units must be between 1"},
		{map[string]interface{}{"id": id, "units": -5}, "units must be between 1"},
		{map[string]interface{}{"id": id, "units": int64(2e15)}, "units must be between 1"},
		{map[string]interface{}{"id": id, "units": 1, "ttl": "1s"}, "ttl must be between"},
		{map[string]interface{}{"id": id, "units": 5, "min_units": 6}, "min_units (6) must not exceed units (5)"},
		{map[string]interface{}{"id": "", "units": 1}, "id is required"},
		{map[string]interface{}{"id": "AAAAAAAAAAAA", "units": 1}, "no budget is kept"},
	} {
		e.userError(logical.UpdateOperation, "budget/reserve", tt.data, tt.want)
	}
	if got := e.spend(path); got != before {
		t.Fatalf("refused reservations changed the counters: %v -> %v", before, got)
	}
}

// Near the end of a budget, grants halve, so the last units are spread
// over the verifiers that ask rather than held by the first.
func TestGrantsShrinkNearTheEnd(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100, "max_cost_per_request": 4})
	id := e.mint("r", nil).Data["key_id"].(string)
	var got []int64
	for range 8 {
		d := e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 40, "min_units": 4}).Data
		got = append(got, d["granted"].(int64))
	}
	if want := []int64{40, 30, 15, 7, 4, 4, 0, 0}; !reflect.DeepEqual(got, want) {
		t.Fatalf("grants %v, want %v", got, want)
	}
}

func TestRevokedCredentialsCannotReserve(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"budget": 100})
	key := e.mint("agent", nil).Data["key_id"].(string)
	e.reserve(key, 10)
	e.ok(logical.DeleteOperation, e.keyPath(key), nil)
	e.userError(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": key, "units": 10}, "is revoked")

	tok := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing"})
	jti := tok.Data["jti"].(string)
	e.reserve(jti, 10)
	if _, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.RevokeOperation, Path: "token/agent", Secret: tok.Secret, Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	e.userError(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": jti, "units": 10}, "is revoked")
}

func TestTenantCeiling(t *testing.T) {
	e := newTestEnv(t)
	e.userError(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 0}, "budget must be between 1")
	e.userError(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 10, "budget_period": "0.5s"}, "budget_period")
	e.userError(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": -10}, "budget must be between 1")
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 50, "budget_period": "1h"})
	if got := e.ok(logical.ListOperation, "tenants/", nil).Data["keys"]; !reflect.DeepEqual(got, []string{"acme"}) {
		t.Fatalf("tenants list = %v", got)
	}

	// No budget of their own: only the tenant's ceiling applies.
	e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme"})
	k1 := e.mint("r", nil).Data["key_id"].(string)
	k2 := e.mint("r", nil).Data["key_id"].(string)
	if g := e.reserve(k1, 40).Data["granted"]; g != int64(40) {
		t.Fatalf("k1 granted %v, want 40", g)
	}
	r2 := e.reserve(k2, 40).Data
	if r2["granted"] != int64(10) {
		t.Fatalf("k2 granted %v, want 10 (the tenant's ceiling)", r2["granted"])
	}
	if d := e.reserve(k2, 1).Data; d["exhausted"] != true {
		t.Fatalf("tenant exhausted: %v", d)
	}
	e.report(r2["reservation_id"].(string), 10, true)
	if got := e.spend("tenants/acme"); got != [4]int64{50, 10, 40, 0} {
		t.Fatalf("tenant: %v, want limit 50 used 10 reserved 40 remaining 0", got)
	}
	if got := e.spend("budget/" + k2); got != [4]int64{0, 10, 0, -1} {
		t.Fatalf("k2's own budget: %v, want no limit, used 10, remaining -1", got)
	}
	tb := e.ok(logical.ReadOperation, "budget/"+k2, nil).Data["tenant_budget"].(map[string]interface{})
	if tb["remaining"] != int64(0) {
		t.Fatalf("k2's tenant_budget = %v", tb)
	}

	// Raising the ceiling keeps this period's use.
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 100})
	if got := e.spend("tenants/acme"); got != [4]int64{100, 10, 40, 50} {
		t.Fatalf("tenant after raising the ceiling: %v", got)
	}
	// Deleting the ceiling: the keys' own (unlimited) budgets remain.
	e.ok(logical.DeleteOperation, "tenants/acme", nil)
	if d := e.reserve(k2, 1000).Data; d["granted"] != int64(1000) || d["remaining"] != int64(-1) {
		t.Fatalf("without a ceiling: %v", d)
	}
}

func TestTenantCeilingMetersUnbudgetedCredentials(t *testing.T) {
	e := newJWTEnv(t, nil) // role "agent", tenant acme, no budget
	tok := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing"})
	if c, _ := e.offline(tok.Data["token"].(string), "billing"); c == nil || c.Budget != nil {
		t.Fatalf("a token with no budget and no tenant ceiling is not metered: %+v", c)
	}
	key := e.mint("agent", nil)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 5})

	tok = e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing"})
	if c, _ := e.offline(tok.Data["token"].(string), "billing"); c == nil || c.Budget == nil || c.Budget.Units != 0 {
		t.Fatalf("a token minted under a tenant ceiling is metered with no budget of its own: %+v", c)
	}
	// An API key minted before the ceiling is metered from now on.
	v := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": key.Data["key"], "remote_addr": "10.0.0.1"}).Data
	if v["budget"].(*jwtverify.Budget) == nil {
		t.Fatal("an API key of a tenant with a ceiling is not metered")
	}
	if d := e.reserve(key.Data["key_id"].(string), 9).Data; d["granted"] != int64(5) {
		t.Fatalf("key under the tenant ceiling granted %v, want 5", d["granted"])
	}
}

func TestRefreshDoesNotResetBudget(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h", "budget": 100})
	first := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing"})
	r := e.reserve(first.Data["jti"].(string), 70).Data
	e.report(r["reservation_id"].(string), 70, true)

	second := e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]})
	if got := e.spend("budget/" + second.Data["jti"].(string)); got != [4]int64{100, 70, 0, 30} {
		t.Fatalf("the refreshed token's budget = %v, want the family's: used 70, remaining 30", got)
	}
	if d := e.reserve(second.Data["jti"].(string), 50).Data; d["granted"] != int64(30) {
		t.Fatalf("refreshed token granted %v, want 30", d["granted"])
	}
}

func TestTidyBudgets(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"budget": 10})
	tok := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing"})
	jti := tok.Data["jti"].(string)
	if len(e.storageKeys(meterPrefix)) != 1 {
		t.Fatal("minting a budgeted token kept no budget")
	}
	if d := e.ok(logical.UpdateOperation, "tidy", nil).Data; d["budgets_deleted"] != 0 {
		t.Fatalf("tidy removed a live token's budget: %v", d)
	}
	st, err := e.b.tidy(context.Background(), e.storage, time.Now().Add(time.Hour))
	if err != nil || st.MetersDeleted != 1 {
		t.Fatalf("tidy in 1h = %+v %v, want the budget removed", st, err)
	}
	if e.do(logical.ReadOperation, "budget/"+jti, nil) != nil {
		t.Fatal("an expired token's budget is still readable after tidy")
	}
}

// Only the Vault identity that made a reservation may report on it, release
// it or top it up: another verifier cannot drain a credential (and its
// tenant) by reporting huge use on a reservation of its own or of another.
// A report records at most the units granted plus max_cost_per_request.
func TestReservationsBelongToTheirIdentity(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1000})
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "tenant": "acme", "budget": 500, "max_cost_per_request": 10})
	id := e.ok(logical.UpdateOperation, "keys/r", map[string]interface{}{"name": "victim"}).Data["key_id"].(string)
	res := e.reserve(id, 50).Data["reservation_id"].(string)
	e.report(res, 20, false)

	before, tenantBefore := e.spend("budget/"+id), e.spend("tenants/acme")
	e.entityID = "attacker"
	for _, data := range []map[string]interface{}{
		{"reservation_id": res, "used": 999999},
		{"reservation_id": res, "used": 25, "release": true},
	} {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/report", Data: data, Storage: e.storage, EntityID: e.entityID})
		if code, ok := err.(logical.HTTPCodedError); !ok || code.Code() != 403 || resp != nil {
			t.Fatalf("report by another identity %v: %v %v, want 403", data, resp, err)
		}
	}
	// Topping up another's reservation makes a new one of its own.
	top := e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 5, "reservation_id": res}).Data["reservation_id"]
	if top == res {
		t.Fatal("another identity topped up the reservation")
	}
	// Its own reservation cannot record more than it could have cost.
	ownRes := top.(string)
	if d := e.report(ownRes, 999999, true).Data; d["capped"] != true {
		t.Fatalf("an over-large report was not capped: %v", d)
	}
	after := e.spend("budget/" + id)
	if got, want := after[1]-before[1], int64(5+10); got != want {
		t.Fatalf("the attacker's report recorded %d units; the most its reservation could cost is %d", got, want)
	}
	if tenantAfter := e.spend("tenants/acme"); tenantAfter[1]-tenantBefore[1] != 15 {
		t.Fatalf("tenant used %d -> %d", tenantBefore[1], tenantAfter[1])
	}

	// The owner's reservation is intact and still reports.
	e.entityID = "test-entity"
	if d := e.report(res, 30, true).Data; d["capped"] != false {
		t.Fatalf("owner's report: %v", d)
	}
	if got := e.spend("budget/" + id); got[1] != 20+10+15 || got[2] != 0 {
		t.Fatalf("after the owner's release: %v", got)
	}
}

// One identity may hold a few live reservations per credential, not an
// unbounded number.
func TestReservationCaps(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "budget": 100000})
	id := e.ok(logical.UpdateOperation, "keys/r", map[string]interface{}{"name": "k"}).Data["key_id"].(string)
	for i := 0; i < maxReservationsPerOwner; i++ {
		e.reserve(id, 1)
	}
	e.userError(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 1}, "already holds 8 live reservations")
	e.entityID = "another-sidecar"
	e.reserve(id, 1) // another identity still can
}

// A reservation whose reports show no new use is renewed only for
// maxIdleRenewal after its last use: units cannot be hoarded forever.
func TestIdleReservationsStopRenewing(t *testing.T) {
	now := time.Now()
	a := &account{PeriodStart: periodStart(now, time.Hour)}
	r := a.grant("k:1", 10, 30*time.Second, "h", now)
	for dt := time.Duration(0); dt < maxIdleRenewal; dt += 20 * time.Second {
		if err := a.report("k:1", 0, now.Add(dt)); err != nil {
			t.Fatal(err)
		}
	}
	renewedUntil := r.ExpiresAt
	if err := a.report("k:1", 0, now.Add(maxIdleRenewal+time.Second)); err != nil {
		t.Fatal(err)
	}
	if !r.ExpiresAt.Equal(renewedUntil) {
		t.Fatalf("an idle reservation was renewed past %s", maxIdleRenewal)
	}
	// Use renews it again.
	if err := a.report("k:1", 3, now.Add(maxIdleRenewal+2*time.Second)); err != nil || !r.ExpiresAt.After(renewedUntil) {
		t.Fatalf("a report with use did not renew: %v", err)
	}
}

// A renewed key spends from the same meter: reserve follows the key's own
// expiry, renewal moves the meter's, and neither resets its spend.
func TestRenewedKeyKeepsItsMeter(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "budget": 100})
	id := e.ok(logical.UpdateOperation, "keys/r", map[string]interface{}{"name": "k"}).Data["key_id"].(string)
	res := e.reserve(id, 10).Data["reservation_id"].(string)
	e.report(res, 7, true)

	// The meter as stored before renewal: expiring now, as the key did.
	m, err := getJSON[meter](context.Background(), e.storage, meterPrefix+id)
	if err != nil || m == nil {
		t.Fatalf("meter: %v %v", m, err)
	}
	m.ExpiresAt = time.Now().Add(-time.Second)
	if err := putJSON(context.Background(), e.storage, meterPrefix+id, m); err != nil {
		t.Fatal(err)
	}
	// The key itself still lives (it was renewed): reserve follows it.
	e.reserve(id, 10)
	if got := e.spend("budget/" + id); got[1] != 7 {
		t.Fatalf("after renewal: used %d, want 7 (not reset)", got[1])
	}
	// Renewal moves the meter's expiry.
	later := time.Now().Add(72 * time.Hour).UTC()
	if err := e.b.meters.extendMeter(context.Background(), e.storage, id, later); err != nil {
		t.Fatal(err)
	}
	if m, _ := getJSON[meter](context.Background(), e.storage, meterPrefix+id); !m.ExpiresAt.Equal(later) {
		t.Fatalf("meter expires %s, want %s", m.ExpiresAt, later)
	}
}

// Tidy removes a meter only once its credential expired and its period
// ended; until then a refreshed family or renewed key keeps its spend.
func TestTidyKeepsMetersUntilTheirPeriodEnds(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "budget": 100, "budget_period": "24h", "ttl": "1m"})
	id := e.ok(logical.UpdateOperation, "keys/r", map[string]interface{}{"name": "k"}).Data["key_id"].(string)
	e.report(e.reserve(id, 10).Data["reservation_id"].(string), 4, true)
	m, _ := getJSON[meter](context.Background(), e.storage, meterPrefix+id)
	periodEnd := m.PeriodStart.Add(m.Period)
	afterExpiry := m.ExpiresAt.Add(time.Second)
	if afterExpiry.Before(periodEnd) {
		if _, err := e.b.tidy(context.Background(), e.storage, afterExpiry); err != nil {
			t.Fatal(err)
		}
		if m, _ := getJSON[meter](context.Background(), e.storage, meterPrefix+id); m == nil || m.Used != 4 {
			t.Fatalf("tidy after expiry, within the period, removed the meter: %+v", m)
		}
	}
	if _, err := e.b.tidy(context.Background(), e.storage, maxTime(periodEnd, afterExpiry).Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if m, _ := getJSON[meter](context.Background(), e.storage, meterPrefix+id); m != nil {
		t.Fatalf("tidy after the period ended kept the meter: %+v", m)
	}
}

// An operator changes a credential's budget after mint: use stays, live
// reservations shrink to what is left, and reports say the new units.
func TestOperatorChangesBudget(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "budget": 100, "max_cost_per_request": 10})
	id := e.ok(logical.UpdateOperation, "keys/r", map[string]interface{}{"name": "k"}).Data["key_id"].(string)
	res := e.reserve(id, 50).Data["reservation_id"].(string)
	e.report(res, 20, false)

	for _, tc := range []struct {
		budget interface{}
		want   string
	}{{5, "at least the credential's max_cost_per_request (10)"}, {-1, "between 0 and"}, {"lots", "budget"}} {
		e.userError(logical.UpdateOperation, "budget/r/"+id, map[string]interface{}{"budget": tc.budget}, tc.want)
	}
	if got := e.spend("budget/" + id); got != [4]int64{100, 20, 30, 50} {
		t.Fatalf("after refused writes: %v", got)
	}
	e.ok(logical.UpdateOperation, "budget/r/"+id, map[string]interface{}{"budget": 30})
	if got := e.spend("budget/" + id); got != [4]int64{30, 20, 10, 0} {
		t.Fatalf("lowered to 30 with 20 used: limit/used/reserved/remaining %v, want [30 20 10 0]", got)
	}
	if d := e.report(res, 25, false).Data; d["units"] != int64(30) {
		t.Fatalf("the report does not say the shrunk units: %v", d)
	}
	if k, _ := getKey(context.Background(), e.storage, id); k.Budget != 30 {
		t.Fatalf("the key's record says budget %d", k.Budget)
	}
	// Raising it lets reservations grow again.
	e.ok(logical.UpdateOperation, "budget/r/"+id, map[string]interface{}{"budget": 200})
	if g := e.reserve(id, 100).Data["granted"]; g != int64(100) {
		t.Fatalf("after raising to 200: granted %v", g)
	}
}

// Ended reservations are kept for endedKeep, at most maxEnded of them, the
// newest: a meter's entry stays small however many reservations a busy
// credential goes through.
func TestEndedReservationsAreBounded(t *testing.T) {
	now := time.Now()
	a := &account{PeriodStart: periodStart(now, time.Hour)}
	for i := range maxEnded + 5 {
		id := fmt.Sprintf("k:%d", i)
		a.grant(id, 1, 30*time.Second, "h", now)
		a.end(id, now.Add(time.Duration(i)*time.Second), true)
	}
	if len(a.Ended) != maxEnded || a.Ended["k:4"] != nil || a.Ended["k:5"] == nil {
		t.Fatalf("%d ended kept (want the newest %d)", len(a.Ended), maxEnded)
	}
	if err := a.report("k:5", 1, now); err != nil {
		t.Fatalf("a report on a kept ended reservation: %v", err)
	}
	a.roll(now.Add(endedKeep+time.Duration(maxEnded+5)*time.Second), time.Hour)
	if len(a.Ended) != 0 {
		t.Fatalf("%d ended reservations kept past %s", len(a.Ended), endedKeep)
	}
	if err := a.report("k:5", 1, now); !errors.Is(err, errUnknownReservation) {
		t.Fatalf("a report after the ended reservation was forgotten: %v", err)
	}
}

// Churn of released reservations does not push out an expired one, whose
// holder may still have use to report.
func TestEndedKeepsExpiredOverReleased(t *testing.T) {
	now := time.Now()
	a := &account{PeriodStart: periodStart(now, time.Hour)}
	a.grant("k:expired", 10, 30*time.Second, "h", now)
	a.end("k:expired", now.Add(-time.Minute), false)
	for i := range 2 * maxEnded {
		id := fmt.Sprintf("k:%d", i)
		a.grant(id, 1, 30*time.Second, "h", now)
		a.end(id, now.Add(time.Duration(i)*time.Second), true)
	}
	if a.Ended["k:expired"] == nil || len(a.Ended) != maxEnded {
		t.Fatalf("after %d releases: expired kept %v, %d ended", 2*maxEnded, a.Ended["k:expired"] != nil, len(a.Ended))
	}
}

// A change of a budget names the role whose credential opened it, so that a
// policy on budget/<role>/* reaches that role's budgets and no others; a
// rotated key's successor and a refreshed token are reached under the same
// role, and budget/<id> only reads (from review of issue 23).
func TestBudgetChangesScopedByRole(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	e.createRole("billing", map[string]interface{}{"scopes": "read", "budget": 100, "ttl": "1h", "audiences": "svc"})
	e.createRole("admin", map[string]interface{}{"scopes": "read", "budget": 100, "ttl": "1h"})
	bill := e.mint("billing", nil).Data["key_id"].(string)
	adm := e.mint("admin", nil).Data["key_id"].(string)
	jti := e.ok(logical.UpdateOperation, "token/billing", nil).Data["jti"].(string)
	set := map[string]interface{}{"budget": 50}

	e.userError(logical.UpdateOperation, "budget/billing/"+adm, set, `no budget is kept for "`+adm+`" under role "billing"`)
	if r := e.ok(logical.ReadOperation, "budget/billing/"+adm, nil); r != nil {
		t.Fatalf("read of another role's budget under billing: %#v", r)
	}
	if got := e.spend("budget/" + adm); got[0] != 100 {
		t.Fatalf("the admin key's budget changed through billing's path: %v", got)
	}
	e.ok(logical.UpdateOperation, "budget/admin/"+adm, set)
	e.ok(logical.UpdateOperation, "budget/billing/"+jti, set)
	if got := e.spend("budget/billing/" + jti); got[0] != 50 {
		t.Fatalf("a token's budget under its role: %v", got)
	}
	next := e.ok(logical.UpdateOperation, "keys/billing/id/"+bill+"/rotate", nil).Data["key_id"].(string)
	e.ok(logical.UpdateOperation, "budget/billing/"+next, set)
	if _, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/" + adm, Data: set, Storage: e.storage}); err == nil {
		t.Fatalf("budget/<id> still takes a change")
	}
	// A JWT meter of an older version names no role: refused, saying why.
	if err := putJSON(context.Background(), e.storage, meterPrefix+"old-jti", &meter{Limit: 10, Period: time.Hour, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	e.userError(logical.UpdateOperation, "budget/billing/old-jti", set, "an older version that noted no role")
	// A key's meter of an older version: reached under its key's role,
	// also once the key it was opened for is tidied (a rotated one: its
	// successor has its role), and noted from then on.
	old := e.mint("billing", nil).Data["key_id"].(string)
	if err := putJSON(context.Background(), e.storage, meterPrefix+old, &meter{Limit: 10, Period: time.Hour, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	succ := e.ok(logical.UpdateOperation, "keys/billing/id/"+old+"/rotate", nil).Data["key_id"].(string)
	if err := e.storage.Delete(context.Background(), keyPrefix+old); err != nil {
		t.Fatal(err)
	}
	e.ok(logical.UpdateOperation, "budget/billing/"+succ, set)
	if m, _ := getJSON[meter](context.Background(), e.storage, meterPrefix+old); m == nil || m.Role != "billing" || m.Limit != 50 {
		t.Fatalf("the older meter after a change under its role: %+v", m)
	}
	// Read under the role shows the tenant's ceiling too.
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1000})
	e.createRole("tenanted", map[string]interface{}{"scopes": "read", "budget": 100, "tenant": "acme"})
	tk := e.mint("tenanted", nil).Data["key_id"].(string)
	if d := e.ok(logical.ReadOperation, "budget/tenanted/"+tk, nil).Data; d["tenant_budget"] == nil {
		t.Fatalf("read under the role: %#v", d)
	}
}
