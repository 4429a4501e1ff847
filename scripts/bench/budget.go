package main

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"
)

// The budget section: budget/reserve and budget/report on one credential
// (every request of a credential queues on its meter), first with no
// other reservation in its tenant, then with 10,000 live ones; and
// keybroker/verify on the same key, a path of one storage read, as the
// reference within the run (the targets are absolute, as issue 26 states
// them).
func init() {
	sections = append(sections, section{name: "budget", run: func(b *bench, ctx context.Context) error {
		if err := b.budgetRows(ctx); err != nil {
			return err
		}
		r := b.rows
		ratio := func(a, c float64) float64 {
			if c == 0 {
				return 0
			}
			return a / c
		}
		b.target(target{"budget/reserve on one credential", r["reserve-0"].rps, 1000, false, " req/s"})
		b.target(target{"budget/report on one credential", r["report-0"].rps, 1000, false, " req/s"})
		b.target(target{"budget/reserve, 10k live reservations in the tenant / none", ratio(r["reserve-10k"].rps, r["reserve-0"].rps), 0.8, false, "x"})
		b.target(target{"budget/report, 10k live reservations in the tenant / none", ratio(r["report-10k"].rps, r["report-0"].rps), 0.8, false, "x"})
		return nil
	}})
}

// budgetRows measures budget/reserve (topping up one reservation) and
// budget/report on a key of a tenant with a ceiling, first with no other
// reservation in the tenant, then with 10,000 live ones.
func (b *bench) budgetRows(ctx context.Context) error {
	c := b.v.Client
	for path, data := range map[string]map[string]interface{}{
		"keybroker/tenants/bench": {"budget": int64(1e15)},
		"keybroker/roles/tenant":  {"scopes": "read", "tenant": "bench", "ttl": "24h", "max_cost_per_request": 1},
	} {
		if _, err := c.Logical().WriteWithContext(ctx, path, data); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	reserve := func(id, resID string) (string, error) {
		s, err := c.Logical().WriteWithContext(ctx, "keybroker/budget/reserve", map[string]interface{}{"id": id, "units": 1, "ttl": "10m", "reservation_id": resID})
		if err != nil {
			return "", err
		}
		return s.Data["reservation_id"].(string), nil
	}
	mint := func() (string, error) {
		s, err := c.Logical().WriteWithContext(ctx, "keybroker/keys/tenant", map[string]interface{}{"name": "budget"})
		if err != nil {
			return "", err
		}
		return s.Data["key_id"].(string), nil
	}
	first, err := c.Logical().WriteWithContext(ctx, "keybroker/keys/tenant", map[string]interface{}{"name": "budget"})
	if err != nil {
		return err
	}
	id, key := first.Data["key_id"].(string), first.Data["key"].(string)
	res, err := reserve(id, "")
	if err != nil {
		return err
	}
	vaultURL, tokenHdr := b.v.Addr, "X-Vault-Token: "+b.v.RootToken
	rows := func(suffix, what string) {
		b.wrk("reserve-"+suffix, "Vault keybroker/budget/reserve (top-up), "+what, vaultURL+"/v1/keybroker/budget/reserve", []string{tokenHdr},
			b.postScript(fmt.Sprintf(`{"id":%q,"units":1,"ttl":"10m","reservation_id":%q}`, id, res)))
		b.wrk("report-"+suffix, "Vault keybroker/budget/report, "+what, vaultURL+"/v1/keybroker/budget/report", []string{tokenHdr},
			b.postScript(fmt.Sprintf(`{"reservation_id":%q,"used":0}`, res)))
	}
	rows("0", "no other reservation in the tenant")
	// The same Vault and plugin serving a path of one storage read, on the
	// same key: what reserve-0 would be if the meter cost nothing.
	b.wrk("budget-verify", "Vault keybroker/verify on the same key (one storage read: reference)", vaultURL+"/v1/keybroker/verify", []string{tokenHdr},
		b.postScript(fmt.Sprintf(`{"credential":%q}`, key)))
	b.notes = append(b.notes, fmt.Sprintf("budget/reserve and budget/report on one credential ran at %.2fx and %.2fx of keybroker/verify on it (row budget-verify) in this run",
		b.rows["reserve-0"].rps/max(1, b.rows["budget-verify"].rps), b.rows["report-0"].rps/max(1, b.rows["budget-verify"].rps)))

	const keys, perKey = 1250, 8 // 8: one identity's cap per credential
	log("making %d live reservations in one tenant", keys*perKey)
	start := time.Now()
	var g errgroup.Group
	g.SetLimit(8)
	for i := 0; i < keys; i++ {
		g.Go(func() error {
			k, err := mint()
			for j := 0; j < perKey && err == nil; j++ {
				_, err = reserve(k, "")
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("making reservations: %w", err)
	}
	b.notes = append(b.notes, fmt.Sprintf("%d live reservations made in one tenant in %s", keys*perKey, time.Since(start).Round(time.Second)))
	rows("10k", "10,000 live reservations in the tenant")
	return nil
}
