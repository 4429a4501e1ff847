package e2e

import (
	"fmt"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// Ten thousand live reservations in one tenant, on a Vault that refuses
// entries over 1 MiB as integrated storage does: reservations keep being
// granted and reported, the tenant's read is exact, and a sidecar still
// serves and meters a key of the tenant.
func TestBudgetTenThousandReservationsInOneTenant(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 reservations take ~20s")
	}
	const keys, perKey, units = 1250, 8, 2 // 8: one identity's cap per credential
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/tenants/big", map[string]interface{}{"budget": 1_000_000})
	write(t, root, "keybroker/roles/big", map[string]interface{}{"scopes": "read", "tenant": "big", "budget": 1000, "max_cost_per_request": 10})

	ids := make(chan string, keys)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < keys; i += 8 {
				s, err := root.Logical().Write("keybroker/keys/big", map[string]interface{}{"name": fmt.Sprint("k", i)})
				if err != nil {
					errs <- err
					return
				}
				id := s.Data["key_id"].(string)
				for j := 0; j < perKey; j++ {
					r, err := root.Logical().Write("keybroker/budget/reserve", map[string]interface{}{"id": id, "units": units, "min_units": units, "ttl": "10m"})
					if err != nil {
						errs <- fmt.Errorf("reservation %d on key %d: %w", j, i, err)
						return
					}
					if fmt.Sprint(r.Data["granted"]) != fmt.Sprint(units) {
						errs <- fmt.Errorf("reservation %d on key %d: granted %v", j, i, r.Data["granted"])
						return
					}
				}
				ids <- id
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	close(ids)
	tenant := read(t, root, "keybroker/tenants/big", nil).Data
	if got := fmt.Sprint(tenant["reserved"]); got != fmt.Sprint(keys*perKey*units) {
		t.Fatalf("tenant holds %s with %d live reservations, want %d", got, keys*perKey, keys*perKey*units)
	}

	// A sidecar serves a new key of the tenant and its spend reaches Vault.
	up := newLLMUpstream(t, 10)
	sc := meteredSidecar(t, v, up)
	minted := write(t, root, "keybroker/keys/big", map[string]interface{}{"name": "served"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	for i := 0; i < 10; i++ {
		if r := call(t, sc.proxy, "GET", "/llm/complete", bearer(key), ""); r.status != 200 {
			t.Fatalf("request %d with %d reservations in the tenant: %d %s", i, keys*perKey, r.status, r.body)
		}
	}
	sc.stop()
	if used, _, _ := spend(t, root, keyID); used != up.served.Load() {
		t.Fatalf("Vault recorded %d, the upstream served %d", used, up.served.Load())
	}
	if got := fmt.Sprint(read(t, root, "keybroker/tenants/big", nil).Data["used"]); got != fmt.Sprint(up.served.Load()) {
		t.Fatalf("tenant used %s, want %d", got, up.served.Load())
	}
}
