package e2e

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// Rotation with grace at a running sidecar: both keys pass, the old one's
// answers name its successor, then only the new one passes; spend goes on
// on one budget. Suspension and resumption reach the sidecar within a
// second; revocation by value too.
func TestKeyLifecycleAtASidecar(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/svc", map[string]interface{}{"scopes": "read", "budget": 1000, "max_cost_per_request": 10, "ttl": "1h"})
	up := newLLMUpstream(t, 10)
	e := meteredSidecar(t, v, up)
	pass := func(key string) result {
		return call(t, e.proxy, "GET", "/llm/chat", map[string]string{"X-API-Key": key}, "")
	}

	old := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "rotated"})
	oldKey, oldID := old.Data["key"].(string), old.Data["key_id"].(string)
	for i := 0; i < 5; i++ {
		if r := pass(oldKey); r.status != 200 {
			t.Fatalf("before rotation: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
		}
	}
	rot := write(t, root, "keybroker/keys/svc/id/"+oldID+"/rotate", map[string]interface{}{"grace": "4s"})
	newKey, newID := rot.Data["key"].(string), rot.Data["key_id"].(string)
	eventually(t, time.Second, "the old key's answers never named its successor", func() bool {
		return pass(oldKey).header.Get("X-Keybroker-Key-Replaced-By") == newID
	})
	if r := pass(oldKey); r.status != 200 || r.header.Get("X-Keybroker-Key-Expires") != rot.Data["grace_ends"] {
		t.Fatalf("old key during its grace: %d, expires %q want %v", r.status, r.header.Get("X-Keybroker-Key-Expires"), rot.Data["grace_ends"])
	}
	for i := 0; i < 5; i++ {
		if r := pass(newKey); r.status != 200 || r.header.Get("X-Keybroker-Key-Replaced-By") != "" {
			t.Fatalf("successor: %d %v", r.status, r.header)
		}
	}
	eventually(t, 6*time.Second, "the old key kept working after its grace", func() bool {
		r := pass(oldKey)
		return r.status == 401 && r.header.Get("X-Keybroker-Reason") == "expired"
	})
	if r := pass(newKey); r.status != 200 {
		t.Fatalf("successor after the grace: %d", r.status)
	}
	// One budget: what both keys spent, as the upstream counted it.
	e.stop()
	if used, _, _ := spend(t, root, newID); used != up.served.Load() {
		t.Fatalf("successor's budget used %d, the upstream served %d through both keys", used, up.served.Load())
	}

	// Suspension within a second, and back.
	e = startSidecar(t, v, nil)
	read := func(key string) result {
		return call(t, e.proxy, "GET", "/read", map[string]string{"X-API-Key": key}, "")
	}
	k := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "suspended"})
	key, id := k.Data["key"].(string), k.Data["key_id"].(string)
	eventually(t, 2*time.Second, "a new key never passed", func() bool { return read(key).status == 200 })
	write(t, root, "keybroker/keys/svc/id/"+id+"/suspend", nil)
	start := time.Now()
	eventually(t, time.Second, "a suspended key still passed after 1s", func() bool {
		return read(key).header.Get("X-Keybroker-Reason") == "suspended"
	})
	t.Logf("suspension reached the sidecar in %s", time.Since(start).Round(time.Millisecond))
	write(t, root, "keybroker/keys/svc/id/"+id+"/resume", nil)
	eventually(t, time.Second, "a resumed key still refused after 1s", func() bool { return read(key).status == 200 })
	// A role's suspension changes no key record: sidecars learn it from
	// the feed's suspended_roles, as fast.
	write(t, root, "keybroker/roles/svc/suspend", nil)
	start = time.Now()
	eventually(t, time.Second, "a key of a suspended role still passed after 1s", func() bool {
		return read(key).header.Get("X-Keybroker-Reason") == "suspended"
	})
	t.Logf("a role's suspension reached the sidecar in %s", time.Since(start).Round(time.Millisecond))
	write(t, root, "keybroker/roles/svc/resume", nil)
	eventually(t, time.Second, "a key of a resumed role still refused after 1s", func() bool { return read(key).status == 200 })

	// Revoke by value: found in a public repository, revoked without its id.
	res := write(t, root, "keybroker/revoke", map[string]interface{}{"key": key})
	if r := res.Data["results"].([]interface{})[0].(map[string]interface{}); r["id"] != id || r["result"] != "revoked" {
		t.Fatalf("revoke by value: %#v", r)
	}
	eventually(t, 2*time.Second, "a key revoked by value still passed after 2s", func() bool {
		return read(key).header.Get("X-Keybroker-Reason") == "revoked"
	})
	if r := read(key); r.status != http.StatusUnauthorized {
		t.Fatalf("revoked key: %d", r.status)
	}
}

// Last used: two sidecars report the keys they let through, once per
// interval; the plugin adds them up. Unused keys can be listed.
func TestLastUsedAcrossSidecars(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	fast := func(c *sidecar.Config) { c.UsageReportInterval = "1s" }
	a, b := startSidecar(t, v, fast), startSidecar(t, v, fast)
	used := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "used"})
	idle := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "idle"})
	key, id := used.Data["key"].(string), used.Data["key_id"].(string)
	start := time.Now()
	for i, tc := range []struct {
		e     *sidecarEnv
		from  string
		calls int
	}{{a, "127.0.0.1", 3}, {b, "127.0.0.3", 4}} {
		for j := 0; j < tc.calls; j++ {
			if r := call(t, tc.e.proxy, "GET", "/read", map[string]string{"X-API-Key": key}, tc.from); r.status != 200 {
				t.Fatalf("sidecar %d call %d: %d", i, j, r.status)
			}
		}
	}
	var d map[string]interface{}
	eventually(t, 5*time.Second, "last use never reached Vault", func() bool {
		d = read(t, v.Client, "keybroker/keys/id/"+id, nil).Data
		uses, _ := d["uses"].([]interface{})
		if len(uses) != 1 {
			return false
		}
		n, _ := uses[0].(map[string]interface{})["count"].(json.Number).Int64()
		return n == 7
	})
	if from := d["last_used_from"]; from != "127.0.0.3" && from != "127.0.0.1" || d["last_used_at"] == nil {
		t.Fatalf("key read after traffic: %#v", d)
	}
	// One report per interval per sidecar, however busy.
	for _, e := range []*sidecarEnv{a, b} {
		if n := metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="key_usage",result="ok"`); n < 1 || n > time.Since(start).Seconds()+1 {
			t.Fatalf("key_usage reports %v in %s", n, time.Since(start).Round(time.Second))
		}
	}
	time.Sleep(1100 * time.Millisecond)
	// A LIST with a parameter, as curl sends it (the vault CLI's list takes none).
	r := v.Client.NewRequest("LIST", "/v1/keybroker/keys/id")
	r.Params.Set("unused_for", "1s")
	resp, err := v.Client.RawRequestWithContext(ctxT(t), r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	list, err := api.ParseSecret(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	keys := toStrings(list.Data["keys"])
	if !slices.Contains(keys, idle.Data["key_id"].(string)) {
		t.Fatalf("unused for 1s: %v lacks the idle key", keys)
	}
}
