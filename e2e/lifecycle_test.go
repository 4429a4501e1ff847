package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
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
	rot := write(t, root, "keybroker/keys/id/"+oldID+"/rotate", map[string]interface{}{"grace": "4s"})
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
	write(t, root, "keybroker/keys/id/"+id+"/suspend", nil)
	start := time.Now()
	eventually(t, time.Second, "a suspended key still passed after 1s", func() bool {
		return read(key).header.Get("X-Keybroker-Reason") == "suspended"
	})
	t.Logf("suspension reached the sidecar in %s", time.Since(start).Round(time.Millisecond))
	write(t, root, "keybroker/keys/id/"+id+"/resume", nil)
	eventually(t, time.Second, "a resumed key still refused after 1s", func() bool { return read(key).status == 200 })
	write(t, root, "keybroker/roles/svc/suspend", nil)
	eventually(t, time.Second, "a key of a suspended role still passed after 1s", func() bool { return read(key).status == 401 })
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
