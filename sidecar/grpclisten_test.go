package sidecar

import (
	"encoding/json"
	"strings"
	"testing"
)

// grpc_listen needs trusted_proxies, as gateway does, and -check-config
// shows it.
func TestGRPCListenConfig(t *testing.T) {
	base := func() *Config {
		return &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{RoleID: "r", SecretIDFile: "/s"}, GRPCListen: "127.0.0.1:9001"}
	}
	for name, tc := range map[string]struct {
		mut  func(c *Config)
		want string
	}{
		"no trusted proxies": {func(c *Config) {}, "list Envoy's address in trusted_proxies"},
		"not host:port":      {func(c *Config) { c.TrustedProxies = []string{"127.0.0.1"}; c.GRPCListen = "9001" }, "must be host:port"},
	} {
		c := base()
		tc.mut(c)
		if _, err := c.settings(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, tc.want)
		}
	}
	c := base()
	c.TrustedProxies = []string{"127.0.0.1"}
	out, err := CheckConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	var eff map[string]interface{}
	if err := json.Unmarshal(out, &eff); err != nil {
		t.Fatal(err)
	}
	if eff["grpc_listen"] != "127.0.0.1:9001" {
		t.Fatalf("grpc_listen = %v", eff["grpc_listen"])
	}
	c.GRPCListen = ""
	if out, _ := CheckConfig(c); !strings.Contains(string(out), `"grpc_listen": ""`) {
		t.Fatalf("grpc_listen off: %s", out)
	}
}
