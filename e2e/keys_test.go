package e2e

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

const webPolicy = `
path "keybroker/keys/web" {
  capabilities = ["update"]
}
`

// The whole life of a key through a real Vault: an app logs in with AppRole,
// mints from the one role its policy allows, the key verifies, "vault lease
// revoke" kills it, the feed shows it, and the audit log never holds it.
func TestAPIKeyLifecycle(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/web", map[string]interface{}{
		"scopes": "read,write", "ttl": "1h", "max_ttl": "2h", "tenant": "acme",
	})
	write(t, root, "keybroker/roles/admin", map[string]interface{}{"scopes": "admin"})

	app, err := v.LoginAs(ctxT(t), "app", webPolicy)
	if err != nil {
		t.Fatal(err)
	}

	minted := write(t, app, "keybroker/keys/web", map[string]interface{}{"name": "ci", "scopes": "read"})
	key := minted.Data["key"].(string)
	keyID := minted.Data["key_id"].(string)
	if minted.LeaseID == "" || !strings.HasPrefix(minted.LeaseID, "keybroker/keys/web/") || minted.LeaseDuration != 3600 || !minted.Renewable {
		t.Fatalf("mint lease = %q %ds renewable=%v", minted.LeaseID, minted.LeaseDuration, minted.Renewable)
	}

	// The policy allows role web only.
	_, err = app.Logical().WriteWithContext(ctxT(t), "keybroker/keys/admin", map[string]interface{}{"name": "x"})
	if statusOf(err) != http.StatusForbidden {
		t.Fatalf("mint from a role outside the policy: %v, want 403", err)
	}
	// A scope outside the role is a 400 that says which.
	_, err = app.Logical().WriteWithContext(ctxT(t), "keybroker/keys/web", map[string]interface{}{"name": "x", "scopes": "admin"})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "scopes admin are not allowed") {
		t.Fatalf("mint with a scope outside the role: %v, want 400", err)
	}

	valid, reason, data := verify(t, root, key, "127.0.0.1", "read")
	if !valid || data["key_id"] != keyID || data["tenant"] != "acme" || data["role"] != "web" {
		t.Fatalf("verify fresh key: %s %#v", reason, data)
	}
	if _, reason, _ := verify(t, root, key, "127.0.0.1", "write"); reason != "insufficient_scope" {
		t.Fatalf("verify for a scope the key lacks: %s", reason)
	}

	// Renewal extends the lease within max_ttl.
	renewed, err := root.Sys().RenewWithContext(ctxT(t), minted.LeaseID, 7200)
	if err != nil || renewed.LeaseDuration > 7200 || renewed.LeaseDuration < 7000 {
		t.Fatalf("renew: %v %#v", err, renewed)
	}

	if err := root.Sys().RevokeWithContext(ctxT(t), minted.LeaseID); err != nil {
		t.Fatalf("vault lease revoke: %v", err)
	}
	if _, reason, _ := verify(t, root, key, "127.0.0.1"); reason != "revoked" {
		t.Fatalf("verify after lease revoke: %s, want revoked", reason)
	}
	if ids := feedIDs(t, root); !containsString(ids, keyID) {
		t.Fatalf("revocation feed %v lacks %s", ids, keyID)
	}
	meta := read(t, root, "keybroker/keys/id/"+keyID, nil)
	if meta.Data["revoked"] != true {
		t.Fatalf("keys/id read after revoke: %#v", meta.Data)
	}

	audit, err := os.ReadFile(v.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(audit), key) {
		t.Fatal("the plaintext key is in the audit log")
	}
	secretPart := key[strings.LastIndexByte(key, '_')+1:]
	if strings.Contains(string(audit), secretPart) {
		t.Fatal("the secret part of the key is in the audit log")
	}
	if !strings.Contains(string(audit), `"key_id":"`+keyID+`"`) {
		t.Fatalf("key_id %s is not in the audit log in clear", keyID)
	}
}

// Revoking the token that minted keys revokes the keys; a key from an orphan
// role outlives it.
func TestTokenRevocationCascades(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/web", map[string]interface{}{"scopes": "read"})
	write(t, root, "keybroker/roles/batch", map[string]interface{}{"scopes": "read", "orphan": true, "ttl": "1h"})
	app, err := v.LoginAs(ctxT(t), "app", `path "keybroker/keys/*" { capabilities = ["update"] }`)
	if err != nil {
		t.Fatal(err)
	}
	k1 := write(t, app, "keybroker/keys/web", map[string]interface{}{"name": "one"})
	k2 := write(t, app, "keybroker/keys/web", map[string]interface{}{"name": "two"})
	orphan := write(t, app, "keybroker/keys/batch", map[string]interface{}{"name": "batch"})
	if orphan.LeaseID != "" {
		t.Fatalf("orphan key has a lease %q", orphan.LeaseID)
	}

	if _, err := root.Logical().WriteWithContext(ctxT(t), "auth/token/revoke", map[string]interface{}{"token": app.Token()}); err != nil {
		t.Fatalf("revoking the app token: %v", err)
	}
	for _, k := range []string{k1.Data["key"].(string), k2.Data["key"].(string)} {
		eventually(t, 10*time.Second, "key minted by a revoked token still verifies", func() bool {
			_, reason, _ := verify(t, root, k, "")
			return reason == "revoked"
		})
	}
	ids := feedIDs(t, root)
	for _, id := range []string{k1.Data["key_id"].(string), k2.Data["key_id"].(string)} {
		if !containsString(ids, id) {
			t.Fatalf("feed %v lacks %s", ids, id)
		}
	}
	if valid, reason, _ := verify(t, root, orphan.Data["key"].(string), ""); !valid {
		t.Fatalf("orphan key after its minter's revocation: %s, want valid", reason)
	}

	// An orphan key is revoked through keys/<role>/id/<key_id>.
	orphanID := orphan.Data["key_id"].(string)
	if _, err := root.Logical().DeleteWithContext(ctxT(t), "keybroker/keys/batch/id/"+orphanID); err != nil {
		t.Fatal(err)
	}
	if _, reason, _ := verify(t, root, orphan.Data["key"].(string), ""); reason != "revoked" {
		t.Fatalf("orphan key after delete: %s, want revoked", reason)
	}
	if !containsString(feedIDs(t, root), orphanID) {
		t.Fatal("orphan revocation is not in the feed")
	}
}

// Keys die at their TTL: leased ones when Vault expires the lease, orphan
// ones at expires_at. Expiry is not a revocation and stays out of the feed.
func TestExpiry(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/short", map[string]interface{}{"ttl": "3s"})
	write(t, root, "keybroker/roles/orphan", map[string]interface{}{"ttl": "3s", "orphan": true})
	leased := write(t, root, "keybroker/keys/short", map[string]interface{}{"name": "leased"})
	orphan := write(t, root, "keybroker/keys/orphan", map[string]interface{}{"name": "orphan"})
	keys := []string{leased.Data["key"].(string), orphan.Data["key"].(string)}
	for _, k := range keys {
		if valid, reason, _ := verify(t, root, k, ""); !valid {
			t.Fatalf("fresh key: %s", reason)
		}
	}
	for _, k := range keys {
		eventually(t, 10*time.Second, "key did not expire", func() bool {
			_, reason, _ := verify(t, root, k, "")
			return reason == "expired"
		})
	}
	// Give Vault time to expire the lease and call the plugin's revoke.
	eventually(t, 10*time.Second, "lease still listed", func() bool {
		s, err := root.Logical().ListWithContext(ctxT(t), "sys/leases/lookup/keybroker/keys/short")
		return err == nil && s == nil
	})
	if ids := feedIDs(t, root); len(ids) != 0 {
		t.Fatalf("expired keys are in the revocation feed: %v", ids)
	}
}

func TestCIDRs(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/net", map[string]interface{}{"bound_cidrs": "127.0.0.0/8,2001:db8::/32"})
	key := write(t, root, "keybroker/keys/net", map[string]interface{}{"name": "k"}).Data["key"].(string)
	narrow := write(t, root, "keybroker/keys/net", map[string]interface{}{"name": "k", "bound_cidrs": "2001:db8:1::/48"}).Data["key"].(string)

	for _, tc := range []struct {
		key, addr, want string
	}{
		{key, "127.0.0.1", "ok"},
		{key, "127.9.9.9:5555", "ok"},
		{key, "2001:db8::1", "ok"},
		{key, "[2001:db8::1]:443", "ok"},
		{key, "10.0.0.1", "cidr_denied"},
		{key, "2001:db9::1", "cidr_denied"},
		{key, "", "cidr_denied"},
		{narrow, "2001:db8:1::5", "ok"},
		{narrow, "2001:db8:2::5", "cidr_denied"},
		{narrow, "127.0.0.1", "cidr_denied"},
	} {
		if _, reason, _ := verify(t, root, tc.key, tc.addr); reason != tc.want {
			t.Errorf("verify from %q: %s, want %s", tc.addr, reason, tc.want)
		}
	}

	_, err := root.Logical().WriteWithContext(ctxT(t), "keybroker/keys/net", map[string]interface{}{"name": "k", "bound_cidrs": "0.0.0.0/0"})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "not within role") {
		t.Fatalf("widening CIDR: %v, want 400", err)
	}
	_, err = root.Logical().WriteWithContext(ctxT(t), "keybroker/verify", map[string]interface{}{"key": key, "remote_addr": "nowhere"})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "remote_addr") {
		t.Fatalf("unparsable remote_addr: %v, want 400", err)
	}
}

// "vault lease revoke -prefix keybroker/keys/<role>" revokes every key of the
// role, and each lands in the feed.
func TestRevokePrefix(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/web", nil)
	write(t, root, "keybroker/roles/other", nil)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, write(t, root, "keybroker/keys/web", map[string]interface{}{"name": "k"}).Data["key_id"].(string))
	}
	keep := write(t, root, "keybroker/keys/other", map[string]interface{}{"name": "k"})
	if err := root.Sys().RevokePrefixWithContext(ctxT(t), "keybroker/keys/web"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "not every key of the role is in the feed", func() bool {
		got := feedIDs(t, root)
		for _, id := range ids {
			if !containsString(got, id) {
				return false
			}
		}
		return len(got) == len(ids)
	})
	if valid, _, _ := verify(t, root, keep.Data["key"].(string), ""); !valid {
		t.Fatal("a key of another role was revoked")
	}
}
