package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/jwtverify"
	"github.com/keybroker/keybroker/sidecar"
)

// On a 3-node Raft cluster: credentials minted through a standby
// (forwarded) before the leader is killed still verify after; the cluster
// mints again once a new leader is elected (the gap is logged); a
// revocation issued after failover reaches a sidecar that rode through it.
func TestClusterLeaderFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes ~30s")
	}
	c := vaultserver.StartClusterT(t)
	ctx := ctxT(t)
	leader, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var standby *vaultserver.Node
	for _, n := range c.Nodes {
		if n != leader {
			standby = n
			break
		}
	}
	v := c.Server(standby) // everything below goes through a standby
	setupRoles(t, v)
	root := v.Client

	type key struct{ key, id string }
	var keys []key
	var secrets []*api.Secret
	for i := 0; i < 5; i++ {
		s := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "before"})
		keys = append(keys, key{s.Data["key"].(string), s.Data["key_id"].(string)})
		secrets = append(secrets, s)
	}
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	// An agent with a refresh family, through the standby.
	write(t, root, "keybroker/roles/agent", map[string]interface{}{"audiences": "api", "refresh_ttl": "1h"})
	agent, err := v.LoginAs(ctx, "agent", agentPolicy)
	if err != nil {
		t.Fatal(err)
	}
	family := write(t, agent, "keybroker/token/agent", nil)
	e := startSidecar(t, v, nil)
	if r := call(t, e.proxy, "GET", "/read", bearer(keys[0].key), ""); r.status != 200 {
		t.Fatalf("before failover: %d %s", r.status, r.body)
	}
	// A sidecar that knows every node, the doomed leader first.
	var addrs []string
	for _, n := range append([]*vaultserver.Node{leader}, c.Nodes...) {
		if !containsString(addrs, n.Addr) {
			addrs = append(addrs, n.Addr)
		}
	}
	ha := startSidecar(t, v, func(c *sidecar.Config) { c.Vault.Address, c.Vault.Addresses = "", addrs })

	c.Kill(leader)
	gapStart := time.Now()
	var gap time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := root.Logical().WriteWithContext(ctx, "keybroker/keys/svc", map[string]interface{}{"name": "after"}); err == nil {
			gap = time.Since(gapStart)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no successful mint within 60s of killing the leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	newLeader, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s killed; %s active; first successful mint %s after the kill", leader.Name, newLeader.Name, gap.Round(time.Millisecond))

	for _, k := range keys {
		if ok, reason, _ := verify(t, root, k.key, "127.0.0.1"); !ok {
			t.Fatalf("key minted before failover: %s", reason)
		}
	}
	// Every running node serves the same keys, and they verify the JWT
	// minted before failover.
	var first string
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		var disc struct {
			Issuer string `json:"issuer"`
		}
		getJSON(t, n.Addr+"/v1/keybroker/.well-known/openid-configuration", &disc)
		resp, err := http.Get(n.Addr + "/v1/keybroker/jwks")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if first == "" {
			first = string(body)
		} else if string(body) != first {
			t.Fatalf("%s serves another JWKS than its peers", n.Name)
		}
		ks, err := jwtverify.ParseJWKS(body)
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		ver, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: disc.Issuer, Audiences: []string{"svc"}, Leeway: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ver.Verify(jwt, ks); err != nil {
			t.Fatalf("JWT minted before failover, checked with %s's JWKS: %v", n.Name, err)
		}
	}
	if r := call(t, e.proxy, "GET", "/read", bearer(jwt), ""); r.status != 200 {
		t.Fatalf("sidecar, JWT after failover: %d %s", r.status, r.body)
	}

	// The refresh family goes on, and reuse of a spent refresh token is
	// still caught on the new leader.
	refreshed := write(t, agent, "keybroker/token/refresh", map[string]interface{}{"refresh_token": family.Data["refresh_token"]})
	if refreshed.Data["token"] == nil {
		t.Fatal("refresh after failover returned no token")
	}
	_, err = agent.Logical().WriteWithContext(ctx, "keybroker/token/refresh", map[string]interface{}{"refresh_token": family.Data["refresh_token"]})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reusing a refresh token spent after failover: %v", err)
	}

	// A revocation after failover reaches the sidecar that rode through it.
	revoked := keys[1]
	if err := root.Sys().RevokeWithContext(context.Background(), secrets[1].LeaseID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the sidecar never saw a revocation issued after failover", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(revoked.key), "").status == 401
	})
	if r := call(t, e.proxy, "GET", "/read", bearer(keys[2].key), ""); r.status != 200 {
		t.Fatalf("an unrevoked key after failover: %d %s", r.status, r.body)
	}

	// The sidecar that was talking to the dead leader moves to the next
	// node: a key it never saw is looked up, a revocation reaches it.
	fresh := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "fresh"})
	if r := call(t, ha.proxy, "GET", "/read", bearer(fresh.Data["key"].(string)), ""); r.status != 200 {
		t.Fatalf("a sidecar configured with every node, a key minted after failover: %d %s", r.status, r.body)
	}
	if err := root.Sys().RevokeWithContext(context.Background(), fresh.LeaseID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a sidecar configured with every node never saw a revocation after failover", func() bool {
		return call(t, ha.proxy, "GET", "/read", bearer(fresh.Data["key"].(string)), "").status == 401
	})
}

// A snapshot restored to an earlier point takes the feed's sequence back:
// numbers a sidecar has passed are given again to new revocations. The
// sidecar sees the feed's new epoch and reads it again from the start, so
// no revocation is skipped.
func TestClusterSnapshotRestoreResyncsTheFeed(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes ~30s")
	}
	c := vaultserver.StartClusterT(t)
	ctx := ctxT(t)
	active, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := c.Server(active)
	setupRoles(t, v)
	root := v.Client
	var keys []string
	var leases []string
	for i := 0; i < 5; i++ {
		s := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "k"})
		keys, leases = append(keys, s.Data["key"].(string)), append(leases, s.LeaseID)
	}
	revoke := func(i int) {
		t.Helper()
		if err := root.Sys().RevokeWithContext(ctx, leases[i]); err != nil {
			t.Fatal(err)
		}
	}
	// A slow poll, so that the revocations after the restore land before
	// the sidecar looks again.
	e := startSidecar(t, v, func(c *sidecar.Config) { c.RevocationPollInterval = "5s" })
	denied := func(i int) bool { return call(t, e.proxy, "GET", "/read", bearer(keys[i]), "").status == 401 }

	revoke(0)
	var snap bytes.Buffer
	if err := root.Sys().RaftSnapshotWithContext(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	revoke(1)
	revoke(2)
	eventually(t, 15*time.Second, "the sidecar never read the first revocations from the feed", func() bool {
		return metric(t, e.auth, "keybroker_sidecar_revoked_credentials", "") >= 3
	})

	feed := func() *contract.FeedPage {
		t.Helper()
		var p contract.FeedPage
		if err := mapstructureJSON(read(t, root, "keybroker/revocations", map[string][]string{"after": {"0"}}).Data, &p); err != nil {
			t.Fatal(err)
		}
		return &p
	}
	before := feed()
	if before.Last != 3 || before.Epoch == "" {
		t.Fatalf("feed before the restore: last %d epoch %q", before.Last, before.Epoch)
	}
	if err := root.Sys().RaftSnapshotRestoreWithContext(ctx, &snap, false); err != nil {
		t.Fatal(err)
	}
	// The restored feed ends at 1; these two take numbers 2 and 3 again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := root.Sys().RevokeWithContext(ctx, leases[3]); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("revoking after the restore: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	revoke(4)
	// The same last number as before the restore, in a new epoch: a
	// reader at cursor 3 would skip both without it.
	if after := feed(); after.Last != 3 || !contract.FeedRestart(before.Epoch, before.Last, after) {
		t.Fatalf("feed after the restore and two revocations: last %d epoch %q (was %q): a reader at cursor 3 is not told to read again", after.Last, after.Epoch, before.Epoch)
	}
	eventually(t, 20*time.Second, "revocations made after the snapshot restore never reached the sidecar", func() bool { return denied(3) && denied(4) })
	for i := 0; i < 3; i++ {
		// The restore made keys 1 and 2 valid again in Vault; what the
		// sidecar learned from the feed stays revoked (it fails closed).
		if r := call(t, e.proxy, "GET", "/read", bearer(keys[i]), ""); r.status != 401 {
			t.Fatalf("key %d, revoked before the restore: %d %s %s", i, r.status, r.header.Get("X-Keybroker-Reason"), r.body)
		}
	}
	if n := metric(t, e.auth, "keybroker_sidecar_revocation_feed_restarts_total", ""); n < 1 {
		t.Fatal("the sidecar did not read the feed again")
	}
}

// mapstructureJSON decodes a Vault answer's data into a typed value.
func mapstructureJSON(in map[string]interface{}, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// A full cluster stop and start (every node down, then up and unsealed):
// revoked stays revoked, valid stays valid, the feed goes on where it was
// (in a new epoch), JWTs signed before verify after, and rotation works.
func TestClusterFullRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes ~30s")
	}
	c := vaultserver.StartClusterT(t)
	ctx := ctxT(t)
	active, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := c.Server(active)
	setupRoles(t, v)
	root := v.Client
	valid := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "valid"})
	gone := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "revoked"})
	if err := root.Sys().RevokeWithContext(ctx, gone.LeaseID); err != nil {
		t.Fatal(err)
	}
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	var before contract.FeedPage
	if err := mapstructureJSON(read(t, root, "keybroker/revocations", nil).Data, &before); err != nil {
		t.Fatal(err)
	}
	jwksBefore := fetchJWKSFrom(t, active.Addr)

	c.Stop()
	for _, n := range c.Nodes {
		if n.Running() {
			t.Fatalf("%s still runs after the stop", n.Name)
		}
	}
	for _, n := range c.Nodes {
		if err := c.Restart(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	active, err = c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v = c.Server(active)
	root = v.Client
	eventually(t, 30*time.Second, "the plugin did not answer after the restart", func() bool {
		_, err := root.Logical().Read("keybroker/config")
		return err == nil
	})

	if ok, reason, _ := verify(t, root, valid.Data["key"].(string), "127.0.0.1"); !ok {
		t.Fatalf("a valid key after the restart: %s", reason)
	}
	if ok, reason, _ := verify(t, root, gone.Data["key"].(string), "127.0.0.1"); ok || reason != "revoked" {
		t.Fatalf("a revoked key after the restart: valid=%v reason %q", ok, reason)
	}
	if fetchJWKSFrom(t, active.Addr) != jwksBefore {
		t.Fatal("the JWKS changed across a restart")
	}
	if ok, reason, _ := verify(t, root, jwt, "127.0.0.1"); !ok {
		t.Fatalf("a JWT signed before the restart: %s", reason)
	}
	// The feed goes on: the next revocation takes the next number.
	another := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "after"})
	if err := root.Sys().RevokeWithContext(ctx, another.LeaseID); err != nil {
		t.Fatal(err)
	}
	var after contract.FeedPage
	if err := mapstructureJSON(read(t, root, "keybroker/revocations", map[string][]string{"after": {fmt.Sprint(before.Next)}}).Data, &after); err != nil {
		t.Fatal(err)
	}
	if after.Last != before.Last+1 || after.Epoch == before.Epoch || len(after.Revocations) != 1 || after.Revocations[0].ID != another.Data["key_id"] {
		t.Fatalf("feed after the restart: %+v (before: last %d epoch %s)", after, before.Last, before.Epoch)
	}
	write(t, root, "keybroker/rotate", nil)
	if fetchJWKSFrom(t, active.Addr) == jwksBefore {
		t.Fatal("rotation after the restart changed nothing")
	}

	// Sealing the active node hands over to another; unsealed, it rejoins.
	if err := c.Seal(ctx, active); err != nil {
		t.Fatal(err)
	}
	var next *vaultserver.Node
	eventually(t, 30*time.Second, "no other node became active after the active one was sealed", func() bool {
		next = c.Active(ctx)
		return next != nil && next != active
	})
	if ok, reason, _ := verify(t, next.Client, valid.Data["key"].(string), "127.0.0.1"); !ok {
		t.Fatalf("a valid key after sealing the active node: %s", reason)
	}
	if err := c.Unseal(ctx, active); err != nil {
		t.Fatal(err)
	}
}

// fetchJWKSFrom reads a node's JWKS as it is served.
func fetchJWKSFrom(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get(addr + "/v1/keybroker/jwks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("jwks from %s: %d %s", addr, resp.StatusCode, b)
	}
	return string(b)
}

// Three sidecars spend one budget while the active node is killed: the
// recorded use stays within budget + 3 × max_cost_per_request, and every
// unit the upstream served reaches Vault (nothing reported is lost).
func TestClusterBudgetAcrossFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes ~30s")
	}
	const budget, maxCost = 20000, 10 // ~7s of spending at this pace
	c := vaultserver.StartClusterT(t)
	ctx := ctxT(t)
	leader, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var standby *vaultserver.Node
	for _, n := range c.Nodes {
		if n != leader {
			standby = n
			break
		}
	}
	v := c.Server(standby)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/llm", map[string]interface{}{"scopes": "read", "budget": budget, "max_cost_per_request": maxCost})
	minted := write(t, root, "keybroker/keys/llm", map[string]interface{}{"name": "agent"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	up := newLLMUpstream(t, maxCost)
	sidecars := []*sidecarEnv{meteredSidecar(t, v, up), meteredSidecar(t, v, up), meteredSidecar(t, v, up)}

	var wg sync.WaitGroup
	var allowed, exhausted, unavailable atomic.Int64
	var bad atomic.Value
	stop := time.Now().Add(45 * time.Second)
	for _, sc := range sidecars {
		for w := 0; w < 3; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for inARow := 0; inARow < 3 && time.Now().Before(stop); {
					r := call(t, sc.proxy, "GET", "/llm/complete", bearer(key), "")
					switch {
					case r.status == 200:
						allowed.Add(1)
						inARow = 0
					case r.status == 429 && r.header.Get("X-Keybroker-Reason") == "budget_exhausted":
						exhausted.Add(1)
						inARow++
					case r.status == 503: // Vault out of reach and the chunk spent
						unavailable.Add(1)
						inARow = 0
					default:
						bad.Store(fmt.Sprintf("%d %s", r.status, r.header.Get("X-Keybroker-Reason")))
						return
					}
					time.Sleep(5 * time.Millisecond) // spread the spend over the failover
				}
			}()
		}
	}
	time.Sleep(time.Second)
	spentAtKill := up.served.Load()
	c.Kill(leader)
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatalf("unexpected answer: %v", b)
	}
	served := up.served.Load()
	t.Logf("%d served when the leader was killed, %d in all; allowed %d, budget_exhausted %d, unavailable %d", spentAtKill, served, allowed.Load(), exhausted.Load(), unavailable.Load())
	if spentAtKill >= budget {
		t.Fatal("the budget was spent before the leader was killed: the test proves nothing")
	}
	// A refused report is use that never reached Vault, while the
	// reservation's units went back to be granted again.
	for i, sc := range sidecars {
		if n := metric(t, sc.auth, "keybroker_sidecar_vault_requests_total", `op="report",result="refused"`); n > 0 {
			t.Errorf("sidecar %d: %v budget reports refused across the failover: their use was lost", i, n)
		}
	}
	if served > budget+3*maxCost {
		t.Fatalf("spent %d across a failover: over budget + 3 x max_cost_per_request = %d", served, budget+3*maxCost)
	}
	if served < budget {
		t.Fatalf("spent %d of %d: the budget was not used up after the failover", served, budget)
	}
	for _, sc := range sidecars {
		sc.stop() // a clean stop reports and releases everything
	}
	eventually(t, 15*time.Second, "Vault's count never matched what the upstream served", func() bool {
		used, reserved, _ := spend(t, root, keyID)
		return used == up.served.Load() && reserved == 0
	})
}

// The plugin process of the active node is killed (SIGKILL) during a burst
// of mints: Vault starts it again and mints succeed; every mint that
// succeeded has its key and its lease, and revoking them all lands every one
// in the feed. A mint that failed may leave a key record that no lease
// holds and no caller ever received (the answer never left); it cannot be
// used, and tidy removes it once it expires.
func TestClusterPluginKilledDuringMints(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes ~30s")
	}
	c := vaultserver.StartClusterT(t)
	ctx := ctxT(t)
	active, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := c.Server(active)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "warm-up"}) // the plugin runs
	pids := active.PluginPIDs()
	if len(pids) == 0 {
		t.Fatal("no plugin process found on the active node")
	}

	type minted struct{ key, id, lease string }
	const workers = 4
	var mu sync.Mutex
	var ok []minted
	var failed atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(4 * time.Second)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				s, err := root.Logical().Write("keybroker/keys/svc", map[string]interface{}{"name": "burst"})
				if err != nil {
					failed.Add(1)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				mu.Lock()
				ok = append(ok, minted{s.Data["key"].(string), s.Data["key_id"].(string), s.LeaseID})
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	wg.Wait()
	t.Logf("plugin pids %v killed; %d mints succeeded, %d failed", pids, len(ok), failed.Load())
	eventually(t, 30*time.Second, "mints never succeeded again after the plugin was killed", func() bool {
		_, err := root.Logical().Write("keybroker/keys/svc", map[string]interface{}{"name": "after"})
		if err != nil {
			failed.Add(1) // it too may have stored a key before failing
		}
		return err == nil
	})
	if newPIDs := active.PluginPIDs(); len(newPIDs) == 0 || newPIDs[0] == pids[0] {
		t.Fatalf("plugin processes after the kill: %v (before %v)", newPIDs, pids)
	}

	// Keys stored beyond the successes (warm-up and after: 2) can only be
	// from mints whose answer never reached anyone: the failed ones, and
	// the ones in flight when the process died, which Vault runs once more
	// on the restarted plugin (builtin/plugin's lazyLoadBackend retries a
	// request that met a shut-down plugin), at most one per worker.
	list, err := root.Logical().ListWithContext(ctx, "keybroker/keys/id")
	if err != nil || list == nil {
		t.Fatalf("listing keys: %v", err)
	}
	orphans := len(list.Data["keys"].([]interface{})) - len(ok) - 2
	t.Logf("%d key records without a successful mint (at most the %d failed mints + %d in flight)", orphans, failed.Load(), workers)
	if orphans < 0 || int64(orphans) > failed.Load()+workers {
		t.Fatalf("%d stored keys for %d successful mints and %d failed ones", orphans+len(ok)+2, len(ok), failed.Load())
	}
	// Every success is a key that verifies and a lease that exists.
	for _, m := range ok {
		if valid, reason, _ := verify(t, root, m.key, "127.0.0.1"); !valid {
			t.Fatalf("key %s minted during the burst: %s", m.id, reason)
		}
		if _, err := root.Sys().LookupWithContext(ctx, m.lease); err != nil {
			t.Fatalf("key %s minted during the burst has no lease %s: %v", m.id, m.lease, err)
		}
	}
	// Revoking them all lands every one in the feed.
	for _, m := range ok {
		if err := root.Sys().RevokeWithContext(ctx, m.lease); err != nil {
			t.Fatal(err)
		}
	}
	ids := feedIDs(t, root)
	for _, m := range ok {
		if !containsString(ids, m.id) {
			t.Fatalf("key %s, revoked, is not in the feed", m.id)
		}
	}

	// make cluster's suggestion: `kill -9` the active node, the node alone
	// (not its process group). Its plugin processes outlive it; Stop, as
	// Ctrl-C on make cluster calls it, ends them too.
	plugins := active.PluginPIDs()
	if len(plugins) == 0 {
		t.Fatal("no plugin process on the active node before the kill")
	}
	if err := syscall.Kill(active.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the killed node still runs", func() bool { return !active.Running() })
	time.Sleep(500 * time.Millisecond)
	var orphaned []int
	for _, pid := range plugins {
		if pluginRuns(pid) {
			orphaned = append(orphaned, pid)
		}
	}
	t.Logf("node killed; %d of its plugin processes %v outlived it", len(orphaned), plugins)
	c.Stop()
	for _, pid := range orphaned {
		if pluginRuns(pid) {
			t.Errorf("plugin process %d of the killed node still runs after Stop", pid)
		}
	}
	if left := c.PluginProcesses(); len(left) > 0 {
		t.Errorf("plugin processes of the cluster after Stop: %v", left)
	}
}

// pluginRuns says whether pid is a running (not a zombie) keybroker plugin
// process.
func pluginRuns(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	_, after, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(after, "Z") && strings.Contains(string(cmdline), vaultserver.PluginName)
}

// Periodic work (signing-key rotation, tidy) runs on exactly one node, and
// goes on on the new active node after a failover: every rotation is logged
// once across the three nodes, rotations come from both leaders, and tidy
// (every 10 minutes) ran once in all, not again on the new leader.
func TestClusterPeriodicWorkRunsOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for Vault's once-a-minute periodic calls, ~3 minutes")
	}
	t.Parallel() // mostly waiting
	c := vaultserver.StartClusterT(t)
	ctx := context.Background()
	leader, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	write(t, leader.Client, "keybroker/config", map[string]interface{}{"rotation_period": "1m", "next_key_lead": "20s"})

	logs := func(what string) map[string][]string { // node -> matching lines
		out := map[string][]string{}
		for _, n := range c.Nodes {
			b, _ := os.ReadFile(n.LogFile)
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, what) {
					out[n.Name] = append(out[n.Name], line)
				}
			}
		}
		return out
	}
	count := func(m map[string][]string) (n int) {
		for _, l := range m {
			n += len(l)
		}
		return n
	}
	waitFor := func(what string, from func(string) bool) {
		t.Helper()
		deadline := time.Now().Add(200 * time.Second)
		for time.Now().Before(deadline) {
			for node := range logs(what) {
				if from(node) {
					return
				}
			}
			time.Sleep(time.Second)
		}
		t.Fatalf("no %q in 200s", what)
	}
	any := func(string) bool { return true }
	waitFor("periodic tidy running", any)
	waitFor("rotated signing key", any)

	c.Kill(leader)
	next, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor("rotated signing key", func(node string) bool { return node == next.Name })

	rotations := logs("rotated signing key")
	kids := map[string]int{}
	for _, lines := range rotations {
		for _, l := range lines {
			if i := strings.Index(l, "kid="); i >= 0 {
				kids[strings.Fields(l[i:])[0]]++
			}
		}
	}
	for kid, n := range kids {
		if n != 1 {
			t.Fatalf("rotation to %s logged %d times across the nodes", kid, n)
		}
	}
	if len(rotations) < 2 {
		t.Fatalf("rotations came from %v: want the old and the new leader", rotations)
	}
	if tidies := logs("periodic tidy running"); count(tidies) != 1 {
		t.Fatalf("periodic tidy ran %d times across the nodes within its 10-minute interval: %v", count(tidies), tidies)
	}
	t.Logf("rotations: %d (%d by the new leader %s); periodic tidy: once", len(kids), len(rotations[next.Name]), next.Name)
}
