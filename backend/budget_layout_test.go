package backend

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// raftEntryLimit is integrated storage's default max_entry_size.
const raftEntryLimit = 1 << 20

// sizedStorage refuses entries over a size, as integrated storage does, and
// remembers the largest entry written below each prefix.
type sizedStorage struct {
	logical.Storage
	limit   int
	mu      sync.Mutex
	largest map[string]int
}

func (s *sizedStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if len(e.Value) > s.limit {
		return fmt.Errorf("put failed: value for %q is %d bytes, over the %d byte entry limit", e.Key, len(e.Value), s.limit)
	}
	s.mu.Lock()
	for _, p := range []string{meterPrefix, tenantPrefix} {
		if len(e.Key) > len(p) && e.Key[:len(p)] == p {
			s.largest[p] = max(s.largest[p], len(e.Value))
		}
	}
	s.mu.Unlock()
	return s.Storage.Put(ctx, e)
}

// Ten thousand live reservations in one tenant: reserves and reports keep
// working under integrated storage's entry limit, the tenant's entry stays
// small (aggregates only), and what it holds is exactly what the
// reservations hold.
func TestTenThousandReservationsInOneTenant(t *testing.T) {
	e := newTestEnv(t)
	st := &sizedStorage{Storage: e.storage, limit: raftEntryLimit, largest: map[string]int{}}
	e.storage = st
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1_000_000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme", "budget": 1000})

	const keys, perKey = 1250, maxReservationsPerOwner // 10,000 reservations
	ids := make([]string, keys)
	for i := range ids {
		ids[i] = e.mint("r", nil).Data["key_id"].(string)
	}
	var first []string
	for _, id := range ids {
		for j := 0; j < perKey; j++ {
			d := e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 3, "min_units": 3, "ttl": "10m"}).Data
			if d["granted"] != int64(3) {
				t.Fatalf("reserve on %s: %v", id, d)
			}
			if j == 0 {
				first = append(first, d["reservation_id"].(string))
			}
		}
	}
	if got := e.spend("tenants/acme"); got != [4]int64{1_000_000, 0, 3 * keys * perKey, 1_000_000 - 3*keys*perKey} {
		t.Fatalf("tenant with %d reservations: %v", keys*perKey, got)
	}
	// Reports on them, and releases, move the tenant's aggregate exactly.
	for _, res := range first[:100] {
		e.report(res, 2, false)
	}
	for _, res := range first[100:200] {
		e.report(res, 1, true)
	}
	used := int64(100*2 + 100*1)
	held := int64(3*keys*perKey - 100*3 - 100*3 + 100*1)
	if got := e.spend("tenants/acme"); got != [4]int64{1_000_000, used, held, 1_000_000 - used - held} {
		t.Fatalf("tenant after reports: %v, want used %d reserved %d", got, used, held)
	}
	if n := st.largest[tenantPrefix]; n > 4<<10 {
		t.Fatalf("the tenant's entry grew to %d bytes with %d reservations: it must hold aggregates only", n, keys*perKey)
	}
	if n := st.largest[meterPrefix]; n > 8<<10 {
		t.Fatalf("a meter with %d reservations is %d bytes", perKey, n)
	}
}

// A credential at its cap of live reservations stays well under the entry
// limit: no entry grows without bound.
func TestMeterAtItsReservationCapFits(t *testing.T) {
	e := newTestEnv(t)
	st := &sizedStorage{Storage: e.storage, limit: raftEntryLimit, largest: map[string]int{}}
	e.storage = st
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1_000_000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme"})
	id := e.mint("r", nil).Data["key_id"].(string)
	for i := 0; i < maxReservationsPerCredential; i++ {
		e.entityID = fmt.Sprintf("sidecar-%d", i)
		e.reserve(id, 1)
	}
	e.entityID = "one-more"
	e.userError(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 1}, "already has 256 live reservations")
	if n := st.largest[meterPrefix]; n > 128<<10 {
		t.Fatalf("a meter at its cap is %d bytes", n)
	}
	t.Logf("meter with %d reservations: %d bytes; tenant entry: %d bytes", maxReservationsPerCredential, st.largest[meterPrefix], st.largest[tenantPrefix])
}

// A ceiling deleted and set again under the same name starts empty:
// reservations granted against the old one neither hold nor spend from it.
func TestRecreatedTenantIgnoresOldReservations(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 100})
	e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme"})
	id := e.mint("r", nil).Data["key_id"].(string)
	old := e.reserve(id, 40).Data["reservation_id"].(string)
	e.ok(logical.DeleteOperation, "tenants/acme", nil)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 100})
	e.report(old, 30, false)
	if got := e.spend("tenants/acme"); got != [4]int64{100, 0, 0, 100} {
		t.Fatalf("new ceiling after a report on an old reservation: %v", got)
	}
	// A top-up of the old reservation makes a new one, which counts.
	d := e.ok(logical.UpdateOperation, "budget/reserve", map[string]interface{}{"id": id, "units": 10, "reservation_id": old}).Data
	if d["reservation_id"] == old {
		t.Fatal("a reservation of a deleted ceiling was topped up")
	}
	if got := e.spend("tenants/acme"); got != [4]int64{100, 0, 10, 90} {
		t.Fatalf("new ceiling after a new reservation: %v", got)
	}
}

// Budget accounting has no global lock: reserves on different credentials
// and the same tenant run concurrently and lose no update.
func TestConcurrentReservesKeepTheTenantExact(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1_000_000})
	e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme"})
	ids := make([]string, 16)
	for i := range ids {
		ids[i] = e.mint("r", nil).Data["key_id"].(string)
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
					Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage, EntityID: "s",
					Data: map[string]interface{}{"id": id, "units": 2, "min_units": 2},
				})
				if err != nil || resp.IsError() {
					t.Errorf("reserve: %v %v", err, resp)
					return
				}
				res := resp.Data["reservation_id"].(string)
				if _, err := e.b.HandleRequest(context.Background(), &logical.Request{
					Operation: logical.UpdateOperation, Path: "budget/report", Storage: e.storage, EntityID: "s",
					Data: map[string]interface{}{"reservation_id": res, "used": 1, "release": true},
				}); err != nil {
					t.Errorf("report: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := e.spend("tenants/acme"); got != [4]int64{1_000_000, 16 * 20, 0, 1_000_000 - 16*20} {
		t.Fatalf("tenant after concurrent reserves and releases: %v", got)
	}
}

// What a tenant holds for a reservation comes back when the reservation
// expires, within a second, never before.
func TestPoolLetsExpiredHoldsGo(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tn := &tenantEntry{ID: "x"}
	tn.roll(now, time.Hour)
	r := &reservation{Units: 10, ExpiresAt: now.Add(30*time.Second + time.Millisecond)}
	tn.join(r)
	tn.hold(r, now)
	tn.roll(now.Add(30*time.Second+time.Millisecond), time.Hour)
	if tn.reserved() != 10 {
		t.Fatalf("held %d just as the reservation expires, want 10 until the second ends", tn.reserved())
	}
	tn.roll(now.Add(31*time.Second), time.Hour)
	if tn.reserved() != 0 {
		t.Fatalf("held %d after the reservation expired", tn.reserved())
	}
	// A new period holds nothing of the old one.
	r = &reservation{Units: 10, ExpiresAt: now.Add(2 * time.Hour)}
	tn.join(r)
	tn.hold(r, now)
	tn.roll(now.Add(time.Hour), time.Hour)
	if tn.reserved() != 0 || tn.counts(r) {
		t.Fatal("a reservation of the last period counts in the new one")
	}
}
