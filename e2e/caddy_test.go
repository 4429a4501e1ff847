package e2e

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// A real Caddy with forward_auth to the sidecar, configured from the shipped
// examples/Caddyfile with only its ports changed.
func TestCaddyForwardAuth(t *testing.T) {
	caddy := findBinary("caddy", "/usr/bin/caddy")
	if caddy == "" {
		t.Skip("caddy is not installed (apt-get install caddy); skipping the Caddy forward_auth test")
	}
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, gatewayConfig("caddy"))

	example := readExample(t, "Caddyfile")
	upstream, _ := url.Parse(e.upstream.URL)
	auth, _ := url.Parse(e.auth)
	port := freePort(t)
	conf := strings.NewReplacer(
		":8088 {", ":"+port+" {",
		"reverse_proxy 127.0.0.1:9000", "reverse_proxy "+upstream.Host,
		"forward_auth 127.0.0.1:8081", "forward_auth "+auth.Host,
	).Replace(example)
	if !strings.Contains(conf, ":"+port+" {") || !strings.Contains(conf, "reverse_proxy "+upstream.Host) || !strings.Contains(conf, "forward_auth "+auth.Host) {
		t.Fatal("examples/Caddyfile no longer has the ports this test rewrites")
	}
	dir := t.TempDir()
	confPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	base := "http://127.0.0.1:" + port
	// Caddy keeps its data and config under HOME / XDG dirs: a temp dir.
	startProcess(t, "caddy", dir, []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir}, base, "/public", nil,
		caddy, "run", "--config", confPath, "--adapter", "caddyfile")

	minted := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "through caddy"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	forged := withForgedRoute(forgedIdentity(key))
	forged["X-Keybroker-Other"] = "forged" // Caddy deletes every X-Keybroker-*
	r := rawGet(t, base, "GET", "/read/items", forged)
	if r.status != http.StatusOK || r.body != "upstream ok" {
		t.Fatalf("allowed request through caddy: %d %s", r.status, r.body)
	}
	seen := e.seen()
	if seen.Get("X-Keybroker-Role") != "svc" || seen.Get("X-Keybroker-Subject") != "key:"+keyID || seen.Get("X-Keybroker-Key-Id") != keyID ||
		seen.Get("X-Keybroker-Tenant") != "acme" || seen.Get("X-Keybroker-Scopes") != "read" || seen.Get("X-Keybroker-Jti") != "" || seen.Get("X-Keybroker-Other") != "" {
		t.Fatalf("upstream behind caddy saw %v", seen)
	}
	if seen.Get("X-Api-Key") != "" || seen.Get("Authorization") != "" {
		t.Fatalf("the credential reached the service behind caddy: %v", seen)
	}
	noForgedIdentity(t, "behind caddy", seen, key)
	noRoutingOverrides(t, "behind caddy", seen)
	// A public route: no forged identity or routing override, and no
	// unreplaced placeholders.
	if r := rawGet(t, base, "GET", "/public", forged); r.status != 200 {
		t.Fatalf("public route through caddy: %d", r.status)
	}
	noForgedIdentity(t, "public route behind caddy", e.seen(), key)
	noRoutingOverrides(t, "public route behind caddy", e.seen())
	for k, vs := range e.seen() {
		for _, v := range vs {
			if strings.HasPrefix(k, "X-Keybroker-") && v != "" || strings.Contains(v, "{http.") {
				t.Fatalf("public route: the service got %s: %q", k, v)
			}
		}
	}
	// The client cannot choose the route: Caddy replaces X-Forwarded-Uri,
	// and nginx's header is ignored.
	for _, spoof := range []map[string]string{
		{"X-Forwarded-Uri": "/public", "X-Forwarded-Method": "GET"},
		{"X-Original-URI": "/public", "X-Original-Method": "GET"},
	} {
		if r := call(t, base, "GET", "/read", spoof, ""); r.status != 401 {
			t.Fatalf("client header %v chose the route: %d", spoof, r.status)
		}
		spoof["X-API-Key"] = key
		if r := call(t, base, "POST", "/write", spoof, ""); r.status != 403 {
			t.Fatalf("client header %v let a read key write: %d", spoof, r.status)
		}
	}
	// Denials come back as the sidecar wrote them, paths as servers read them.
	for _, tc := range []struct {
		method, target string
		key            bool
		status         int
		reason, www    string
	}{
		{"GET", "/read", false, 401, "no_credential", `Bearer realm="keybroker"`},
		{"POST", "/write", true, 403, "insufficient_scope", `error="insufficient_scope"`},
		{"GET", "/write", true, 405, "method_not_allowed", ""},
		{"GET", "/public/../read/x", false, 400, "non_canonical_path", `error="invalid_request"`},
		{"GET", "/public/%2e%2e/read/x", false, 400, "non_canonical_path", ""},
		{"GET", "/read//admin/x", true, 400, "non_canonical_path", ""},
		{"GET", "/read/%61dmin/x", true, 403, "insufficient_scope", ""},
		{"GET", "/read?access_token=x", false, 400, "credential_in_query", ""},
	} {
		h := map[string]string{}
		if tc.key {
			h["X-API-Key"] = key
		}
		r := rawGet(t, base, tc.method, tc.target, h)
		if r.status != tc.status || r.header.Get("X-Keybroker-Reason") != tc.reason || !strings.Contains(r.header.Get("WWW-Authenticate"), tc.www) {
			t.Errorf("%s %s through caddy: %d %q %q, want %d %q", tc.method, tc.target, r.status, r.header.Get("X-Keybroker-Reason"), r.header.Get("WWW-Authenticate"), tc.status, tc.reason)
		}
		if strings.Contains(r.body, key) {
			t.Fatal("the credential is echoed back")
		}
	}
	// A budget of 1: the second request gets 429 with Retry-After.
	write(t, v.Client, "keybroker/roles/metered", map[string]interface{}{"scopes": "read", "budget": 1})
	metered := write(t, v.Client, "keybroker/keys/metered", map[string]interface{}{"name": "metered"}).Data["key"].(string)
	if r := call(t, base, "GET", "/read", map[string]string{"X-API-Key": metered}, ""); r.status != 200 {
		t.Fatalf("metered request: %d", r.status)
	}
	r = call(t, base, "GET", "/read", map[string]string{"X-API-Key": metered}, "")
	if r.status != 429 || r.header.Get("X-Keybroker-Reason") != "budget_exhausted" || r.header.Get("Retry-After") == "" {
		t.Fatalf("exhausted through caddy: %d %q %q", r.status, r.header.Get("X-Keybroker-Reason"), r.header.Get("Retry-After"))
	}

	// A rotated key: its client learns of the successor, the service of
	// nothing.
	rotationThroughGateway(t, v, e, base, "behind caddy", key, keyID)
}
