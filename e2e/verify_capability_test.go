package e2e

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// keybroker/verify refused for the sidecar's policy is said once, at
// error level, with the path and capability, and counted as forbidden,
// not as Vault being unreachable (it was logged "Vault unreachable"); the
// keys it could not verify are refused meanwhile (503), not let through.
func TestSidecarWithoutVerifyCapability(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	full := readExample(t, "policies/sidecar.hcl")
	noVerify := regexp.MustCompile(`path\s+"keybroker/verify"\s*\{[^}]*\}`).ReplaceAllString(full, "")
	if noVerify == full {
		t.Fatal("examples/policies/sidecar.hcl no longer has the block this test removes")
	}
	off := false // no key records: every key is verified by keybroker/verify
	e, logs := startSidecarWithPolicy(t, v, "sidecar-noverify", noVerify, func(c *sidecar.Config) { c.KeyReplica = &off })
	eventually(t, 15*time.Second, "sidecar never became ready", func() bool {
		code, _ := healthz(t, e.auth)
		return code == http.StatusOK
	})
	for range 3 {
		key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "unverifiable"}).Data["key"].(string)
		if r := call(t, e.proxy, "GET", "/read", map[string]string{"X-API-Key": key}, ""); r.status != http.StatusServiceUnavailable || r.body == "upstream ok" {
			t.Fatalf("a key Vault would not verify: %d %s %q", r.status, r.header.Get("X-Keybroker-Reason"), r.body)
		}
	}
	var named []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "keybroker/verify") {
			named = append(named, l)
		}
		if strings.Contains(strings.ToLower(l), "unreachable") {
			t.Errorf("a 403 logged as unreachable: %s", l)
		}
	}
	if len(named) != 1 || !strings.Contains(named[0], `"@level":"error"`) || !strings.Contains(named[0], `"path":"keybroker/verify"`) || !strings.Contains(named[0], `"capability":"update"`) {
		t.Fatalf("want one error line naming keybroker/verify and update; logged:\n%s", logs)
	}
	if n := metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="forbidden"`); n != 3 {
		t.Errorf("vault_requests_total{verify,forbidden} = %v", n)
	}
}
