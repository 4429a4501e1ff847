package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// llmUpstream answers like a metered API: each response says what it cost
// in X-Usage-Tokens, between 1 and maxCost, and the upstream adds it up.
type llmUpstream struct {
	*httptest.Server
	served atomic.Int64 // units the upstream says it spent
}

func newLLMUpstream(t *testing.T, maxCost int64) *llmUpstream {
	u := &llmUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cost := maxCost
		if r.URL.Query().Get("cost") != "max" {
			cost = 1 + rand.Int64N(maxCost)
		}
		u.served.Add(cost)
		w.Header().Set("X-Usage-Tokens", strconv.FormatInt(cost, 10))
		fmt.Fprint(w, "completion")
	}))
	t.Cleanup(u.Close)
	return u
}

// meteredSidecar is a sidecar in front of up whose /llm route is charged
// what the upstream's X-Usage-Tokens says.
func meteredSidecar(t *testing.T, v *vaultserver.Server, up *llmUpstream) *sidecarEnv {
	return startSidecar(t, v, func(c *sidecar.Config) {
		c.Upstream = up.URL
		c.BudgetIdleRelease = "1s"
		fallback := int64(10)
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/llm", Scopes: []string{"read"}, UsageHeader: "X-Usage-Tokens", Cost: &fallback})
	})
}

// spend reads used, reserved and remaining from keybroker/budget/<id>.
func spend(t *testing.T, c *api.Client, id string) (used, reserved, remaining int64) {
	t.Helper()
	d := read(t, c, "keybroker/budget/"+id, nil).Data
	n := func(k string) int64 {
		v, err := strconv.ParseInt(fmt.Sprint(d[k]), 10, 64)
		if err != nil {
			t.Fatalf("budget %s: %v", k, err)
		}
		return v
	}
	return n("used"), n("reserved"), n("remaining")
}

// Three sidecars spend one key's budget concurrently: the total stays within
// budget + 3 x max_cost_per_request, every sidecar ends with 429
// budget_exhausted, and Vault's count matches what the upstream served. A
// sidecar stopped cleanly first loses none of its use.
func TestBudgetAcrossSidecars(t *testing.T) {
	const budget, maxCost = 1000, 10
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	key, keyID := meteredKey(t, root, budget, maxCost)
	up := newLLMUpstream(t, maxCost)

	// A clean stop reports every use and gives the rest of its chunk back.
	first := meteredSidecar(t, v, up)
	for i := 0; i < 20; i++ {
		r := call(t, first.proxy, "GET", "/llm/complete", bearer(key), "")
		if r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
		if rem, err := strconv.Atoi(r.header.Get("X-Budget-Remaining")); err != nil || rem < 0 || rem > budget {
			t.Fatalf("X-Budget-Remaining = %q", r.header.Get("X-Budget-Remaining"))
		}
	}
	first.stop()
	used, reserved, _ := spend(t, root, keyID)
	if used != up.served.Load() || reserved != 0 {
		t.Fatalf("after a clean stop: Vault has used %d reserved %d; the upstream served %d", used, reserved, up.served.Load())
	}

	sidecars := []*sidecarEnv{meteredSidecar(t, v, up), meteredSidecar(t, v, up), meteredSidecar(t, v, up)}
	var wg sync.WaitGroup
	var exhausted, allowed atomic.Int64
	var bad atomic.Value
	for _, sc := range sidecars {
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				inARow := 0
				for i := 0; i < 400 && inARow < 3; i++ {
					req, _ := http.NewRequest("GET", sc.proxy+"/llm/complete", nil)
					req.Header.Set("X-API-Key", key)
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						bad.Store(err.Error())
						return
					}
					resp.Body.Close()
					switch {
					case resp.StatusCode == 200:
						allowed.Add(1)
						inARow = 0
					case resp.StatusCode == 429 && resp.Header.Get("X-Keybroker-Reason") == "budget_exhausted" && resp.Header.Get("Retry-After") != "":
						exhausted.Add(1)
						inARow++
					default:
						bad.Store(fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("X-Keybroker-Reason")))
						return
					}
				}
				if inARow < 3 {
					bad.Store("a client never saw the budget exhausted")
				}
			}()
		}
	}
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatalf("unexpected answer: %v", b)
	}
	served := up.served.Load()
	t.Logf("allowed %d, 429 budget_exhausted %d, units served %d of a %d budget", allowed.Load(), exhausted.Load(), served, budget)
	if served > budget+3*maxCost {
		t.Fatalf("spent %d: over budget + 3 x max_cost_per_request = %d", served, budget+3*maxCost)
	}
	// Every use reaches Vault within a report interval or two, and chunks
	// left idle come back: nothing is lost or stranded.
	eventually(t, 10*time.Second, "Vault's count never matched what the upstream served with nothing reserved", func() bool {
		used, reserved, remaining := spend(t, root, keyID)
		return used == up.served.Load() && reserved == 0 && used+remaining == max(budget, used)
	})
	// What came back can be spent until the budget is gone, once the
	// sidecar asks again (an exhausted answer is kept 1s).
	time.Sleep(1100 * time.Millisecond)
	for i := 0; ; i++ {
		r := call(t, sidecars[1].proxy, "GET", "/llm/complete", bearer(key), "")
		if r.status == 429 {
			if r.header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
			break
		}
		if r.status != 200 || i > 100 {
			t.Fatalf("draining the rest: %d after %d requests", r.status, i)
		}
	}
	served = up.served.Load()
	if served < budget || served > budget+3*maxCost {
		t.Fatalf("spent %d in all; want the whole budget %d and at most %d", served, budget, budget+3*maxCost)
	}
	eventually(t, 5*time.Second, "Vault's used never matched the final spend", func() bool {
		used, _, _ := spend(t, root, keyID)
		return used == up.served.Load()
	})

	// Reservations and reports are audited requests, the credential in clear.
	audit, err := os.ReadFile(v.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"path":"keybroker/budget/reserve"`, `"path":"keybroker/budget/report"`, `"id":"` + keyID + `"`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("the audit log has no %s", want)
		}
	}
	if strings.Contains(string(audit), key) {
		t.Error("the key is in the audit log in clear")
	}
}

// A short budget period and three sidecars: the budget is spent within one
// period, every sidecar answers 429 until its end, and in the next period
// each of them allows requests again.
func TestBudgetResetsAtPeriodBoundary(t *testing.T) {
	const period, budget, maxCost = 4 * time.Second, 30, 10
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/short", map[string]interface{}{
		"scopes": "read", "budget": budget, "max_cost_per_request": maxCost, "budget_period": "4s",
	})
	minted := write(t, root, "keybroker/keys/short", map[string]interface{}{"name": "agent"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	up := newLLMUpstream(t, maxCost)
	sidecars := []*sidecarEnv{meteredSidecar(t, v, up), meteredSidecar(t, v, up), meteredSidecar(t, v, up)}

	// Start right after a boundary (periods are multiples of 4s since year 1, so of Unix time too).
	sleepUntil(time.Now().Truncate(period).Add(period + 100*time.Millisecond))
	deadline := time.Now().Truncate(period).Add(period)
	denied := 0
	for i := 0; denied < 3; i++ {
		r := call(t, sidecars[i%3].proxy, "GET", "/llm?cost=max", bearer(key), "")
		switch {
		case r.status == 200:
			denied = 0
		case r.status == 429 && r.header.Get("X-Keybroker-Reason") == "budget_exhausted":
			if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 4 {
				t.Fatalf("Retry-After %q, want the seconds to the period's end (1 to 4)", r.header.Get("Retry-After"))
			}
			denied++
		default:
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
		if i > 20 {
			t.Fatal("three sidecars never all said the budget was spent")
		}
	}
	if time.Now().After(deadline) {
		t.Fatal("spending 30 units took more than one 4s period")
	}
	if served := up.served.Load(); served < budget || served > budget+3*maxCost {
		t.Fatalf("spent %d in one period; want %d to %d", served, budget, budget+3*maxCost)
	}

	sleepUntil(deadline.Add(200 * time.Millisecond))
	for i, sc := range sidecars {
		if r := call(t, sc.proxy, "GET", "/llm?cost=max", bearer(key), ""); r.status != 200 || r.header.Get("X-Budget-Remaining") == "" {
			t.Fatalf("sidecar %d in the next period: %d, X-Budget-Remaining %q", i, r.status, r.header.Get("X-Budget-Remaining"))
		}
	}
	if used, _, _ := spend(t, root, keyID); used > 3*maxCost {
		t.Fatalf("the new period starts with used %d, more than these three requests", used)
	}
}

func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

func TestRateLimit(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/slow", map[string]interface{}{
		"scopes": "read", "rate_limit": 0.5, "rate_burst": 2, "audiences": "svc",
	})
	tok := write(t, root, "keybroker/token/slow", nil).Data["token"].(string)
	e := startSidecar(t, v, nil)
	for i := 0; i < 2; i++ {
		if r := call(t, e.proxy, "GET", "/read", bearer(tok), ""); r.status != 200 {
			t.Fatalf("request %d within the burst: %d", i, r.status)
		}
	}
	r := call(t, e.proxy, "GET", "/read", bearer(tok), "")
	if r.status != 429 || r.header.Get("X-Keybroker-Reason") != "rate_limited" || r.header.Get("Retry-After") != "2" {
		t.Fatalf("over the rate: %d %q Retry-After %q", r.status, r.header.Get("X-Keybroker-Reason"), r.header.Get("Retry-After"))
	}
	// A token that is not rate limited is not slowed by another's limit.
	other := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	for i := 0; i < 5; i++ {
		if r := call(t, e.proxy, "GET", "/read", bearer(other), ""); r.status != 200 {
			t.Fatalf("unlimited token: %d", r.status)
		}
	}
}

// Two verifiers with the sidecar policy but different Vault identities: the
// second cannot report on or release the first's reservation (403, counters
// unchanged), and what it reserves itself records at most its units plus
// max_cost_per_request, so it cannot drain the credential or its tenant.
func TestBudgetReservationOwnership(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/tenants/acme", map[string]interface{}{"budget": 1000})
	write(t, root, "keybroker/roles/llm", map[string]interface{}{"scopes": "read", "tenant": "acme", "budget": 500, "max_cost_per_request": 10})
	id := write(t, root, "keybroker/keys/llm", map[string]interface{}{"name": "victim"}).Data["key_id"].(string)
	policy := readExample(t, "policies/sidecar.hcl")
	a, err := v.LoginAs(ctxT(t), "verifier-a", policy)
	if err != nil {
		t.Fatal(err)
	}
	b, err := v.LoginAs(ctxT(t), "verifier-b", policy)
	if err != nil {
		t.Fatal(err)
	}
	res := write(t, a, "keybroker/budget/reserve", map[string]interface{}{"id": id, "units": 50, "min_units": 50}).Data["reservation_id"].(string)
	write(t, a, "keybroker/budget/report", map[string]interface{}{"reservation_id": res, "used": 20})
	used, reserved, _ := spend(t, root, id)
	for _, data := range []map[string]interface{}{
		{"reservation_id": res, "used": 999999},
		{"reservation_id": res, "used": 20, "release": true},
	} {
		if _, err := b.Logical().WriteWithContext(ctxT(t), "keybroker/budget/report", data); statusOf(err) != http.StatusForbidden {
			t.Fatalf("another identity's report %v: %v, want 403", data, err)
		}
	}
	if u, r, _ := spend(t, root, id); u != used || r != reserved {
		t.Fatalf("counters moved: used %d->%d reserved %d->%d", used, u, reserved, r)
	}
	own := write(t, b, "keybroker/budget/reserve", map[string]interface{}{"id": id, "units": 5, "min_units": 5, "reservation_id": res}).Data["reservation_id"].(string)
	if own == res {
		t.Fatal("another identity topped up the reservation")
	}
	if d := write(t, b, "keybroker/budget/report", map[string]interface{}{"reservation_id": own, "used": 999999, "release": true}).Data; d["capped"] != true {
		t.Fatalf("an over-large report: %v", d)
	}
	if u, _, _ := spend(t, root, id); u != used+5+10 {
		t.Fatalf("a verifier's own reservation of 5 recorded %d units; the cap is 15", u-used)
	}
	tenant := read(t, root, "keybroker/tenants/acme", nil).Data
	if fmt.Sprint(tenant["used"]) != fmt.Sprint(used+15) {
		t.Fatalf("tenant used %v, want %d", tenant["used"], used+15)
	}
	// The owner still reports and releases.
	write(t, a, "keybroker/budget/report", map[string]interface{}{"reservation_id": res, "used": 30, "release": true})
	if u, r, _ := spend(t, root, id); u != used+15+10 || r != 0 {
		t.Fatalf("after the owner's release: used %d reserved %d", u, r)
	}
}

// A metered key renewed mid-period keeps spending through a sidecar past its
// first expiry, from the same budget: no 503, no reset.
func TestBudgetSurvivesRenewal(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/llm", map[string]interface{}{"scopes": "read", "budget": 1000, "ttl": "3s", "max_ttl": "1h"})
	minted := write(t, root, "keybroker/keys/llm", map[string]interface{}{"name": "renewed"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	e := startSidecar(t, v, nil)
	for i := 0; i < 3; i++ {
		if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
			t.Fatalf("before renewal: %d %s", r.status, r.body)
		}
	}
	if _, err := root.Sys().RenewWithContext(ctxT(t), minted.LeaseID, 600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3500 * time.Millisecond) // past the first expiry
	// More than the sidecar's first chunk (10 units): it must reserve again.
	for i := 0; i < 15; i++ {
		if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
			t.Fatalf("after renewal, past the first expiry: %d %s (%s)", r.status, r.header.Get("X-Keybroker-Reason"), r.body)
		}
	}
	e.stop()
	if used, _, _ := spend(t, root, keyID); used != 18 {
		t.Fatalf("used %d, want 18: the budget was reset or lost use", used)
	}
}

// A refresh family left idle past its newest token's expiry, and tidied,
// keeps its spend when it is refreshed within the period.
func TestBudgetSurvivesIdleRefreshAndTidy(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/agent", map[string]interface{}{"audiences": "api", "refresh_ttl": "1h", "token_ttl": "2s", "budget": 1000})
	agent, err := v.LoginAs(ctxT(t), "agent", agentPolicy)
	if err != nil {
		t.Fatal(err)
	}
	first := write(t, agent, "keybroker/token/agent", nil)
	jti := first.Data["jti"].(string)
	res := write(t, root, "keybroker/budget/reserve", map[string]interface{}{"id": jti, "units": 100, "min_units": 100}).Data["reservation_id"].(string)
	write(t, root, "keybroker/budget/report", map[string]interface{}{"reservation_id": res, "used": 40, "release": true})
	time.Sleep(2500 * time.Millisecond) // the family's newest token has expired
	write(t, root, "keybroker/tidy", nil)
	second := write(t, agent, "keybroker/token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]})
	if used, _, remaining := spend(t, root, second.Data["jti"].(string)); used != 40 || remaining != 960 {
		t.Fatalf("after an idle refresh and tidy: used %d remaining %d, want 40 and 960", used, remaining)
	}
}

// An operator lowers a busy key's budget after mint: the sidecar stops
// spending within about a second, at most one request past the new budget
// (this sidecar's max_cost_per_request); raising it lets the key spend again.
func TestBudgetChangedByOperator(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/llm", map[string]interface{}{"scopes": "read", "budget": 100000})
	minted := write(t, root, "keybroker/keys/llm", map[string]interface{}{"name": "busy"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	e := startSidecar(t, v, func(c *sidecar.Config) { c.BudgetReserveRequests = 1000 }) // big chunks
	for i := 0; i < 20; i++ {
		if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
			t.Fatalf("before: %d", r.status)
		}
	}
	time.Sleep(1500 * time.Millisecond) // a report: Vault knows the 20
	used, _, _ := spend(t, root, keyID)
	newBudget := used + 5
	write(t, root, "keybroker/budget/llm/"+keyID, map[string]interface{}{"budget": newBudget})
	changed := time.Now()
	eventually(t, 5*time.Second, "the sidecar kept spending past the lowered budget", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(key), "").status == http.StatusTooManyRequests
	})
	t.Logf("denied %s after the budget was lowered", time.Since(changed).Round(time.Millisecond))
	e.stop()
	if final, _, _ := spend(t, root, keyID); final > newBudget+1 {
		t.Fatalf("spent %d against a lowered budget of %d (bound: + one request)", final, newBudget)
	}
	write(t, root, "keybroker/budget/llm/"+keyID, map[string]interface{}{"budget": 100000})
	e2 := startSidecar(t, v, nil)
	if r := call(t, e2.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
		t.Fatalf("after raising the budget: %d %s", r.status, r.body)
	}
}

// meteredKey writes role llm with a daily budget and a per-request cost cap,
// and mints one of its keys.
func meteredKey(t *testing.T, root *api.Client, budget, maxCost int) (key, keyID string) {
	t.Helper()
	write(t, root, "keybroker/roles/llm", map[string]interface{}{
		"scopes": "read", "budget": budget, "max_cost_per_request": maxCost, "budget_period": "24h",
	})
	minted := write(t, root, "keybroker/keys/llm", map[string]interface{}{"name": "agent"})
	return minted.Data["key"].(string), minted.Data["key_id"].(string)
}
