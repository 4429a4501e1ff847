package sidecar

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// -check-config on the shipped example: valid, every default filled in,
// and no secret printed; a bad config fails with what is wrong.
func TestCheckConfig(t *testing.T) {
	c, err := ParseConfigFile(filepath.Join("..", "examples", "sidecar.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	c.Vault.RoleID, c.Vault.RoleIDFile = "a-role-id-that-must-not-print", ""
	out, err := CheckConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	var eff map[string]interface{}
	if err := json.Unmarshal(out, &eff); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]interface{}{"max_stale": "30s", "key_replica": true, "gateway": "nginx", "leeway": "30s", "rate_limit_scope": "sidecar"} {
		if eff[k] != want {
			t.Errorf("%s = %v, want %v", k, eff[k], want)
		}
	}
	if strings.Contains(string(out), "a-role-id-that-must-not-print") {
		t.Fatal("-check-config printed the role_id")
	}
	c.Gateway = "haproxy"
	if _, err := CheckConfig(c); err == nil || !strings.Contains(err.Error(), `gateway "haproxy"`) {
		t.Fatalf("a bad gateway: %v", err)
	}
}
