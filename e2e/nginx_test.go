package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// A real nginx with auth_request to the sidecar, configured from the shipped
// examples/nginx.conf with only its ports changed.
func TestNginxAuthRequest(t *testing.T) {
	if findBinary("nginx", "/usr/sbin/nginx") == "" {
		t.Skip("nginx is not installed (apt-get install nginx-light); skipping the nginx auth_request test")
	}
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, gatewayConfig("nginx"))

	example := readExample(t, "nginx.conf")
	upstream, _ := url.Parse(e.upstream.URL)
	auth, _ := url.Parse(e.auth)
	port := freePort(t)
	conf := strings.NewReplacer(
		"listen 8088;", "listen 127.0.0.1:"+port+";",
		"server 127.0.0.1:9000;", "server "+upstream.Host+";",
		"http://127.0.0.1:8081/verify", "http://"+auth.Host+"/verify",
	).Replace(example)
	if conf == example {
		t.Fatal("examples/nginx.conf no longer has the ports this test rewrites")
	}
	base := "http://127.0.0.1:" + port
	startNginx(t, conf, base, "/public")

	minted := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "through nginx"})
	key := minted.Data["key"].(string)
	forged := withForgedRoute(forgedIdentity(key))
	r := rawGet(t, base, "GET", "/read/items", forged)
	if r.status != http.StatusOK || r.body != "upstream ok" {
		t.Fatalf("allowed request through nginx: %d %s", r.status, r.body)
	}
	seen := e.seen()
	if seen.Get("X-Keybroker-Role") != "svc" || seen.Get("X-Keybroker-Subject") != "key:"+minted.Data["key_id"].(string) ||
		seen.Get("X-Keybroker-Key-Id") != minted.Data["key_id"] || seen.Get("X-Keybroker-Tenant") != "acme" || seen.Get("X-Keybroker-Scopes") != "read" {
		t.Fatalf("upstream behind nginx saw %v", seen)
	}
	for _, h := range []string{"X-Api-Key", "Authorization", "X-Keybroker-Jti", "X-Keybroker-Reason"} {
		if _, ok := seen[h]; ok {
			t.Fatalf("%s reached the service behind nginx: %v", h, seen)
		}
	}
	noForgedIdentity(t, "behind nginx", seen, key)
	noRoutingOverrides(t, "behind nginx", seen)
	// A public route: the client's identity headers and routing overrides
	// still do not pass.
	if r := rawGet(t, base, "GET", "/public", forged); r.status != 200 {
		t.Fatalf("public route through nginx: %d", r.status)
	}
	noRoutingOverrides(t, "public route behind nginx", e.seen())
	for _, h := range []string{"X-Keybroker-Role", "X-Keybroker-Key-Id", "X-Keybroker-Jti", "X-Keybroker-Tenant", "X-Api-Key"} {
		if _, ok := e.seen()[h]; ok {
			t.Fatalf("%s reached the service on a public route: %v", h, e.seen())
		}
	}
	// The client cannot choose the route: nginx's own X-Original-URI
	// replaces the client's, and a Traefik-style header is ignored.
	for _, spoof := range []map[string]string{{"X-Original-URI": "/public"}, {"X-Forwarded-Uri": "/public", "X-Forwarded-Method": "GET"}} {
		if r := call(t, base, "GET", "/read", spoof, ""); r.status != 401 {
			t.Fatalf("client header %v chose the route: %d", spoof, r.status)
		}
		spoof["X-API-Key"] = key
		if r := call(t, base, "POST", "/write", spoof, ""); r.status != 403 {
			t.Fatalf("client header %v let a read key write: %d", spoof, r.status)
		}
	}
	// Paths as nginx and the service would read them, not as sent.
	for _, tc := range []struct {
		target string
		status int
		reason string
	}{
		{"/public/../read/x", 403, "non_canonical_path"},
		{"/public/%2e%2e/read/x", 403, "non_canonical_path"},
		{"/read//admin/x", 403, "non_canonical_path"},
		{"/read/%61dmin/x", 403, "insufficient_scope"}, // decoded: /read/admin needs admin
		{"/publicity", 403, "no_route"},                // not under /public
	} {
		r := rawGet(t, base, "GET", tc.target, map[string]string{"X-API-Key": key})
		if r.status != tc.status || r.header.Get("X-Keybroker-Reason") != tc.reason {
			t.Errorf("%s through nginx: %d %q, want %d %q", tc.target, r.status, r.header.Get("X-Keybroker-Reason"), tc.status, tc.reason)
		}
	}
	for _, tc := range []struct {
		name, method, path string
		headers            map[string]string
		status             int
	}{
		{"no credential", "GET", "/read", nil, 401},
		{"insufficient scope", "POST", "/write", map[string]string{"X-API-Key": key}, 403},
		{"credential in query (400 mapped to 403)", "GET", "/read?access_token=x", nil, 403},
		{"no route", "GET", "/elsewhere", map[string]string{"X-API-Key": key}, 403},
		{"405 (mapped to 403)", "GET", "/write", map[string]string{"X-API-Key": key}, 403},
	} {
		if r := call(t, base, tc.method, tc.path, tc.headers, ""); r.status != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, r.status, tc.status)
		}
	}

	// A budget of 2 at the route's cost of 1: the third request is denied
	// with 403 (nginx passes no 429), the reason and Retry-After.
	write(t, v.Client, "keybroker/roles/metered", map[string]interface{}{"scopes": "read", "budget": 2})
	metered := write(t, v.Client, "keybroker/keys/metered", map[string]interface{}{"name": "metered"}).Data["key"].(string)
	for i, want := range []string{"1", "0"} {
		r := call(t, base, "GET", "/read", map[string]string{"X-API-Key": metered}, "")
		if r.status != 200 || r.header.Get("X-Budget-Remaining") != want {
			t.Fatalf("metered request %d: %d, X-Budget-Remaining %q, want 200 and %s", i, r.status, r.header.Get("X-Budget-Remaining"), want)
		}
	}
	r = call(t, base, "GET", "/read", map[string]string{"X-API-Key": metered}, "")
	if r.status != 403 || r.header.Get("X-Keybroker-Reason") != "budget_exhausted" || r.header.Get("Retry-After") == "" {
		t.Fatalf("exhausted through nginx: %d, reason %q, Retry-After %q", r.status, r.header.Get("X-Keybroker-Reason"), r.header.Get("Retry-After"))
	}

	// A rotated key: its client learns of the successor, the service of
	// nothing.
	rotationThroughGateway(t, v, e, base, "behind nginx", key, minted.Data["key_id"].(string))
}
