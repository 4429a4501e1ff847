package e2e

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// A rate limit with rate_limit_scope = "cluster" holds across three
// sidecars behind one Vault within its stated bound: in t seconds at most
// limit × (⌈t/window⌉ + 1) requests of a lineage pass, where three sidecars
// keeping it each on their own would pass three times the rate. Two JWTs of
// one subject (a refreshed token, say) share it.
func TestRateLimitAcrossThreeSidecars(t *testing.T) {
	const perSecond, burst = 5, 5
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/paced", map[string]interface{}{
		"scopes": "read", "rate_limit": perSecond, "rate_burst": burst, "audiences": "svc",
	})
	key := write(t, root, "keybroker/keys/paced", map[string]interface{}{"name": "k"}).Data["key"].(string)
	jwts := []string{
		write(t, root, "keybroker/token/paced", nil).Data["token"].(string),
		write(t, root, "keybroker/token/paced", nil).Data["token"].(string),
	}
	cluster := func(c *sidecar.Config) { c.RateLimitScope = "cluster" }
	sidecars := []*sidecarEnv{startSidecar(t, v, cluster), startSidecar(t, v, cluster), startSidecar(t, v, cluster)}

	window, limit := contract.RateWindow(perSecond, burst)
	const d = 3 * time.Second
	bound := limit * (int64(math.Ceil(d.Seconds()/window.Seconds())) + 1)

	// hammer sends the credentials in turn through every sidecar for d and
	// counts what passed.
	hammer := func(creds []string) (passed, limited int64) {
		var ok, no atomic.Int64
		var bad atomic.Value
		var wg sync.WaitGroup
		stop := time.Now().Add(d)
		for i, sc := range sidecars {
			for w := 0; w < 3; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := 0; time.Now().Before(stop); n++ {
						r := call(t, sc.proxy, "GET", "/read", bearer(creds[(i+w+n)%len(creds)]), "")
						switch {
						case r.status == 200:
							ok.Add(1)
						case r.status == 429 && r.header.Get("X-Keybroker-Reason") == "rate_limited" && r.header.Get("Retry-After") != "":
							no.Add(1)
						default:
							bad.Store(fmt.Sprintf("%d %s %q", r.status, r.header.Get("X-Keybroker-Reason"), r.body))
						}
					}
				}()
			}
		}
		wg.Wait()
		if b := bad.Load(); b != nil {
			t.Fatalf("unexpected answer: %v", b)
		}
		return ok.Load(), no.Load()
	}

	for _, tc := range []struct {
		name  string
		creds []string
	}{{"api key", []string{key}}, {"two JWTs of one subject", jwts}} {
		passed, limited := hammer(tc.creds)
		t.Logf("%s: %d passed, %d limited in %s through 3 sidecars (bound %d; per sidecar alone it would be %d)",
			tc.name, passed, limited, d, bound, 3*(burst+perSecond*int64(d.Seconds())))
		if passed > bound {
			t.Fatalf("%s: %d requests passed in %s across three sidecars, over the bound of %d", tc.name, passed, d, bound)
		}
		if passed < limit*int64(d/window)/2 || limited == 0 {
			t.Fatalf("%s: %d passed, %d limited: the limit should admit about %d per %s", tc.name, passed, limited, limit, window)
		}
	}
	for _, sc := range sidecars {
		if n := metric(t, sc.auth, "keybroker_sidecar_vault_requests_total", `op="rate",result="ok"`); n == 0 {
			t.Fatal("a sidecar kept the cluster rate limit without asking Vault")
		}
	}
}
