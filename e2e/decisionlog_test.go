package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// The decision log of a sidecar on a real Vault: an API key verified from
// the replica and a JWT, through the proxy and /verify, each line naming
// the caller as the plugin minted it; a scope denial and a revocation by
// the feed name the caller too; the log holds no credential and no query,
// and a clean stop leaves every line written.
func TestSidecarDecisionLog(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	path := filepath.Join(t.TempDir(), "decisions.log")
	e := startSidecar(t, v, func(c *sidecar.Config) {
		gatewayConfig("traefik")(c)
		c.DecisionLogPath, c.Name = path, "dl-sidecar"
	})
	root := v.Client
	minted := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "logged"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	tok := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"})
	jwt, jti, sub := tok.Data["token"].(string), tok.Data["jti"].(string), tok.Data["sub"].(string)

	eventually(t, 5*time.Second, "the key's record never reached the sidecar", func() bool {
		return call(t, e.proxy, "GET", "/read/items?page=1", map[string]string{"X-API-Key": key}, "").status == 200
	})
	if r := call(t, e.auth, "GET", "/verify", map[string]string{"Authorization": "Bearer " + jwt, "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/read/x?q=secretish"}, ""); r.status != 200 {
		t.Fatalf("/verify: %d %s", r.status, r.body)
	}
	if r := call(t, e.proxy, "POST", "/write/x", bearer(jwt), ""); r.status != 403 {
		t.Fatalf("scope denial: %d", r.status)
	}
	if r := call(t, e.proxy, "GET", "/read?access_token="+jwt, nil, ""); r.status != 400 {
		t.Fatalf("credential in query: %d", r.status)
	}
	if err := root.Sys().RevokeWithContext(ctxT(t), tok.LeaseID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "revoked JWT still allowed", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(jwt), "").header.Get("X-Keybroker-Reason") == "revoked"
	})
	e.stop()

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{key, jwt, "secretish", "access_token", "page=1"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("the decision log holds %.30q", secret)
		}
	}
	var lines []map[string]interface{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]interface{}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not a JSON line: %q", sc.Text())
		}
		lines = append(lines, m)
	}
	find := func(what string, want map[string]interface{}) {
		t.Helper()
	next:
		for _, l := range lines {
			for k, v := range want {
				if l[k] != v {
					continue next
				}
			}
			if l["type"] != "decision" || l["sidecar"] != "dl-sidecar" || l["client_ip"] != "127.0.0.1" {
				t.Errorf("%s: %v", what, l)
			}
			return
		}
		t.Errorf("%s: no line with %v in\n%s", what, want, raw)
	}
	find("API key allowed", map[string]interface{}{"mode": "proxy", "outcome": "allow", "status": 200.0, "reason": "ok", "kind": "api_key",
		"key_id": keyID, "subject": "key:" + keyID, "role": "svc", "tenant": "acme", "route": "/read", "path": "/read/items", "method": "GET"})
	find("JWT through /verify", map[string]interface{}{"mode": "auth", "outcome": "allow", "kind": "jwt", "jti": jti, "subject": sub,
		"role": "svc", "tenant": "acme", "path": "/read/x"})
	find("scope denial", map[string]interface{}{"outcome": "deny", "status": 403.0, "reason": "insufficient_scope", "jti": jti, "route": "/write", "method": "POST"})
	find("credential in the query", map[string]interface{}{"outcome": "deny", "reason": "credential_in_query", "path": "/read"})
	find("revoked by the feed", map[string]interface{}{"outcome": "deny", "status": 401.0, "reason": "revoked", "jti": jti})
}
