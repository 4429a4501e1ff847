package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// Revoked means revoked until the credential can pass nowhere, and revoking
// by value revokes everything the value stands for, against a real Vault:
// a JWT given by value takes its refresh family with it, a refresh token
// given by value its family; a JWT revoked and past its exp, still within a
// sidecar's leeway, is refused by Vault's verify after a tidy and by a
// sidecar that starts only then, while an unrevoked one as old passes.
func TestRevokedStaysRevoked(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/agent", map[string]interface{}{"audiences": "svc", "scopes": "read", "default_scopes": "read", "refresh_ttl": "1h"})
	agent, err := v.LoginAs(ctxT(t), "agent", agentPolicy)
	if err != nil {
		t.Fatal(err)
	}
	revoke := func(cred string) map[string]interface{} {
		t.Helper()
		return write(t, root, "keybroker/revoke", map[string]interface{}{"key": cred}).Data["results"].([]interface{})[0].(map[string]interface{})
	}
	refreshRefused := func(rt interface{}) {
		t.Helper()
		_, err := agent.Logical().WriteWithContext(ctxT(t), "keybroker/token/refresh", map[string]interface{}{"refresh_token": rt})
		if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "family was revoked") {
			t.Fatalf("refresh after a revocation by value: %v", err)
		}
	}

	// The JWT by value: its refresh token mints nothing more.
	first := write(t, agent, "keybroker/token/agent", nil)
	if r := revoke(first.Data["token"].(string)); r["kind"] != "jwt" || r["result"] != "revoked" || r["id"] != first.Data["jti"] {
		t.Fatalf("JWT by value: %#v", r)
	}
	refreshRefused(first.Data["refresh_token"])

	// The refresh token by value: its family's token is revoked.
	second := write(t, agent, "keybroker/token/agent", nil)
	if r := revoke(second.Data["refresh_token"].(string)); r["kind"] != "refresh_token" || r["result"] != "revoked" {
		t.Fatalf("refresh token by value: %#v", r)
	}
	if _, reason, _ := verify(t, root, second.Data["token"].(string), ""); reason != "revoked" {
		t.Fatalf("a token of a family revoked by its refresh token: %s", reason)
	}
	refreshRefused(second.Data["refresh_token"])

	// Past exp, within the leeway.
	var revoked, kept *api.Secret
	revoked = write(t, agent, "keybroker/token/agent", map[string]interface{}{"ttl": "1s"})
	kept = write(t, agent, "keybroker/token/agent", map[string]interface{}{"ttl": "1s"})
	if r := revoke(revoked.Data["token"].(string)); r["result"] != "revoked" {
		t.Fatalf("short JWT by value: %#v", r)
	}
	exp, err := time.Parse(time.RFC3339, revoked.Data["expires_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(exp) + 100*time.Millisecond)
	write(t, root, "keybroker/tidy", nil)
	if _, reason, _ := verify(t, root, revoked.Data["token"].(string), ""); reason != "revoked" {
		t.Fatalf("a revoked token past exp, within the leeway, after tidy: verify says %s", reason)
	}
	e := startSidecar(t, v, func(c *sidecar.Config) { c.Leeway = "30s" })
	if r := call(t, e.proxy, "GET", "/read", bearer(kept.Data["token"].(string)), ""); r.status != http.StatusOK {
		t.Fatalf("an unrevoked token within the leeway: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	if r := call(t, e.proxy, "GET", "/read", bearer(revoked.Data["token"].(string)), ""); r.status != http.StatusUnauthorized || r.header.Get("X-Keybroker-Reason") != "revoked" {
		t.Fatalf("a revoked token within the leeway, at a sidecar started after its exp: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	if late := time.Since(exp); late > 20*time.Second {
		t.Fatalf("the checks ended %s past exp: too close to the leeway to mean anything", late)
	}
}
