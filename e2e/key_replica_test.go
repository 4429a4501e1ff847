package e2e

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// verifyCalls is how many keybroker/verify calls a sidecar made.
func verifyCalls(t *testing.T, e *sidecarEnv) float64 {
	t.Helper()
	return metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="ok"`) +
		metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="error"`)
}

// hasRecord waits until the sidecar holds n key records.
func hasRecords(t *testing.T, e *sidecarEnv, n float64) {
	t.Helper()
	eventually(t, 10*time.Second, "the sidecar never held the key records", func() bool {
		return metric(t, e.auth, "keybroker_sidecar_key_records", "") >= n
	})
}

// API keys are verified from the sidecar's replica of the key records:
// no Vault call for a key, none for a forged one, and every change to a
// key (revocation, renewal, a tenant ceiling) reaches the sidecar.
func TestSidecarKeyReplica(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/short", map[string]interface{}{"scopes": "read", "ttl": "4s", "max_ttl": "1h", "tenant": "billed"})
	old := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "before the sidecar"})
	e := startSidecar(t, v, func(c *sidecar.Config) { c.KeyCacheTTL, c.MaxStale = "1s", "30s" })
	hasRecords(t, e, 1)

	fresh := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "after"})
	short := write(t, root, "keybroker/keys/short", map[string]interface{}{"name": "short"})
	hasRecords(t, e, 3)
	before := verifyCalls(t, e)
	for i := 0; i < 20; i++ {
		for _, s := range []string{old.Data["key"].(string), fresh.Data["key"].(string), short.Data["key"].(string)} {
			if r := call(t, e.proxy, "GET", "/read", bearer(s), ""); r.status != 200 {
				t.Fatalf("a held key: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
			}
		}
		time.Sleep(60 * time.Millisecond) // past key_cache_ttl more than once
	}
	// Identity from the record, as keybroker/verify would give it.
	call(t, e.proxy, "GET", "/read", bearer(fresh.Data["key"].(string)), "")
	if h := e.seen(); h.Get("X-Keybroker-Key-Id") != fresh.Data["key_id"] || h.Get("X-Keybroker-Tenant") != "acme" || h.Get("X-Keybroker-Role") != "svc" {
		t.Fatalf("upstream saw %v", h)
	}
	if n := verifyCalls(t, e) - before; n != 0 {
		t.Fatalf("held keys cost %v keybroker/verify calls", n)
	}

	// Forged keys (valid checksum, stamped like keys minted long ago, as
	// any attacker's random key_id is): refused offline.
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			forged, _, err := apikey.GenerateAt(nil, "kb", time.Now().Add(-time.Duration(i+1)*time.Hour))
			if err != nil {
				t.Error(err)
				return
			}
			r := call(t, e.proxy, "GET", "/read", bearer(forged), "")
			mu.Lock()
			statuses[r.status]++
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	if n := verifyCalls(t, e) - before; n != 0 || statuses[http.StatusUnauthorized] != 200 {
		t.Fatalf("200 forged keys: %v keybroker/verify calls, statuses %v; want 0 calls and 200 401s", n, statuses)
	}

	// The renewal reaches the sidecar: past its first 4s, the renewed key
	// still passes, from the record.
	if _, err := root.Sys().RenewWithContext(ctxT(t), short.LeaseID, 3600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	if r := call(t, e.proxy, "GET", "/read", bearer(short.Data["key"].(string)), ""); r.status != 200 {
		t.Fatalf("a renewed key after its first ttl: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	// A tenant ceiling makes its keys metered at once: the sidecar
	// reserves budget for them.
	write(t, root, "keybroker/tenants/billed", map[string]interface{}{"budget": 1000})
	eventually(t, 5*time.Second, "a tenant ceiling never made its key metered", func() bool {
		call(t, e.proxy, "GET", "/read", bearer(short.Data["key"].(string)), "")
		return metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="reserve",result="ok"`) > 0
	})
	// Revocation: denied, saying so.
	if err := root.Sys().RevokeWithContext(ctxT(t), old.LeaseID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "a revoked key still passes", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(old.Data["key"].(string)), "").header.Get("X-Keybroker-Reason") == "revoked"
	})
	if n := verifyCalls(t, e) - before; n != 0 {
		t.Fatalf("%v keybroker/verify calls in all", n)
	}

	// The plugin restarts (a reload): a new epoch, the sidecar reads the
	// snapshot again, and keys keep passing throughout.
	write(t, root, "sys/plugins/reload/backend", map[string]interface{}{"mounts": []string{"keybroker/"}})
	eventually(t, 15*time.Second, "the sidecar never read the snapshot again after a plugin reload", func() bool {
		return metric(t, e.auth, "keybroker_sidecar_key_records_resyncs_total", "") >= 1
	})
	if r := call(t, e.proxy, "GET", "/read", bearer(fresh.Data["key"].(string)), ""); r.status != 200 {
		t.Fatalf("after the reload: %d", r.status)
	}
}

// A key minted moments ago, before its record arrives, is verified with one
// keybroker/verify call; a sidecar that follows no feed (key_replica =
// false) verifies every key through Vault, as before.
func TestSidecarKeyReplicaFallback(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	off := false
	e := startSidecar(t, v, func(c *sidecar.Config) { c.KeyReplica = &off })
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "k"}).Data["key"].(string)
	before := verifyCalls(t, e)
	if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
		t.Fatalf("key_replica = false: %d", r.status)
	}
	if n := verifyCalls(t, e) - before; n != 1 {
		t.Fatalf("key_replica = false: %v verify calls, want 1", n)
	}
	if metric(t, e.auth, "keybroker_sidecar_key_records", "") != 0 {
		t.Fatal("key_replica = false holds records")
	}
}

// A sidecar subscribed to some roles holds only their keys and refuses
// every other key, including one minted moments ago that Vault would call
// valid.
func TestSidecarKeyReplicaScoped(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/elsewhere", map[string]interface{}{"scopes": "read"})
	mine := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "mine"}).Data["key"].(string)
	theirs := write(t, root, "keybroker/keys/elsewhere", map[string]interface{}{"name": "theirs"}).Data["key"].(string)
	e := startSidecar(t, v, func(c *sidecar.Config) { c.KeyReplicaRoles = []string{"svc"} })
	hasRecords(t, e, 1)
	if n := metric(t, e.auth, "keybroker_sidecar_key_records", ""); n != 1 {
		t.Fatalf("a sidecar scoped to role svc holds %v records", n)
	}
	if r := call(t, e.proxy, "GET", "/read", bearer(mine), ""); r.status != 200 {
		t.Fatalf("a key of the role served: %d", r.status)
	}
	for i := 0; i < 3; i++ {
		if r := call(t, e.proxy, "GET", "/read", bearer(theirs), ""); r.status != 401 || r.header.Get("X-Keybroker-Reason") != "invalid" {
			t.Fatalf("a key of another role: %d %q", r.status, r.header.Get("X-Keybroker-Reason"))
		}
	}
}

// With the replica, API keys keep verifying after Vault goes away, as long
// as Vault confirmed the replica within max_stale, then fail closed. Quiet
// long polls are held max_stale/3 at most (2s here), so the last
// confirmation is at most that old when Vault stops.
func TestSidecarVaultDownReplica(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, func(c *sidecar.Config) { c.MaxStale, c.KeyCacheTTL = "6s", "1s" })
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "k"}).Data["key"].(string)
	hasRecords(t, e, 1)
	time.Sleep(3 * time.Second) // a quiet while: long polls come and go
	before := verifyCalls(t, e)
	// Vault's shutdown takes its time (in-flight long polls, and more on a
	// loaded machine: 10s once): the last confirmation can precede the
	// stop's end by that much, so every allowance is counted from the
	// stop's start, and the stop runs beside the checks rather than
	// before them.
	stopping := time.Now()
	stopped := make(chan struct{})
	go func() { v.Stop(); close(stopped) }()
	t.Cleanup(func() { <-stopped })

	time.Sleep(time.Until(stopping.Add(2500 * time.Millisecond)))
	if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
		t.Fatalf("API key 2.5s after Vault began to stop, max_stale 6s: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	<-stopped
	eventually(t, 8*time.Second, "API key still allowed long after max_stale", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(key), "").status == http.StatusServiceUnavailable
	})
	// Counted once the replica's feed has noticed Vault gone, which a slow
	// shutdown can delay past the first request above: the requests until
	// max_stale ran out are the ones served while it was unreachable.
	if metric(t, e.auth, "keybroker_sidecar_degraded_decisions_total", "") < 1 {
		t.Fatal("a decision while Vault is unreachable was not counted as degraded")
	}
	// The last confirmation came at most 2s (and a round trip) before the
	// stop began: failing closed earlier than 6s - 2s after that is a bug.
	if after := time.Since(stopping); after < 3500*time.Millisecond {
		t.Fatalf("failed closed %s after Vault began to stop, before max_stale minus the long poll's wait", after)
	}
	if n := metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="ok"`) - before; n > 0 {
		t.Fatalf("%v successful verify calls with Vault stopped", n)
	}
}

// blackhole forwards TCP to a target until cut, then holds every
// connection, old and new, open and silent: a network that drops packets,
// not a Vault that is down.
type blackhole struct {
	l   net.Listener
	cut atomic.Bool
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{l: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go b.serve(c, target)
		}
	}()
	return b
}

func (b *blackhole) serve(c net.Conn, target string) {
	defer c.Close()
	if b.cut.Load() {
		_, _ = io.Copy(io.Discard, c) // accepted, never answered
		return
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			if b.cut.Load() {
				continue // swallowed
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	go pipe(up, c)
	pipe(c, up)
}

// Vault cut off silently (a partition, not a crash): the sidecar cannot
// learn of a revocation, and it must stop relying on its replica within
// max_stale of Vault's last answer plus the held read's wait, then fail
// closed, never serving the revoked key on for good.
func TestSidecarKeyReplicaPartition(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	bh := newBlackhole(t, strings.TrimPrefix(v.Addr, "http://"))
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.MaxStale, c.KeyCacheTTL = "6s", "1s"
		c.Vault.Address = "http://" + bh.l.Addr().String()
	})
	minted := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "k"})
	key := minted.Data["key"].(string)
	hasRecords(t, e, 1)
	if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
		t.Fatalf("before the partition: %d", r.status)
	}
	bh.cut.Store(true)
	cut := time.Now()
	if err := v.Client.Sys().RevokeWithContext(ctxT(t), minted.LeaseID); err != nil {
		t.Fatal(err)
	}
	// Held reads last max_stale/3 = 2s: the last answer came at most that
	// long before the cut, and the poll out at the cut vouches 2s more;
	// then the key goes to Vault, which does not answer within 5s.
	eventually(t, 30*time.Second, "a revoked key is still served long after Vault was cut off", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(key), "").status != http.StatusOK
	})
	if took, bound := time.Since(cut), 6*time.Second+2*time.Second+2*time.Second+5*time.Second+3*time.Second; took > bound {
		t.Fatalf("the revoked key was served for %s after the cut, over %s", took, bound)
	}
	t.Logf("the replica stopped serving %s after the cut", time.Since(cut).Round(100*time.Millisecond))
	if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != http.StatusServiceUnavailable {
		t.Fatalf("with Vault cut off and the replica stale: %d %s, want 503", r.status, r.header.Get("X-Keybroker-Reason"))
	}
}
