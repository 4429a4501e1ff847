package e2e

import (
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// Proxy mode in front of an upstream that normalises paths (a real nginx
// serving by its decoded, dot-resolved, slash-merged $uri): no request
// reaches a location stricter than the route the sidecar checked.
func TestProxyNormalisingUpstream(t *testing.T) {
	port := freePort(t)
	base := "http://127.0.0.1:" + port
	startNginx(t, `events {}
http {
  access_log off;
  server {
    listen 127.0.0.1:`+port+`;
    location /read/admin/ { return 200 "admin $uri\n"; }
    location /read/       { return 200 "read $uri\n"; }
    location /public/     { return 200 "public $uri\n"; }
    location /            { return 200 "root $uri\n"; }
  }
}
`, base, "/public/")
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, func(c *sidecar.Config) { c.Upstream = base })
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "reader"}).Data["key"].(string)
	withKey := map[string]string{"X-API-Key": key}

	// Positive controls: the sidecar forwards what it allows.
	if r := rawGet(t, e.proxy, "GET", "/read/x", withKey); r.status != 200 || r.body != "read /read/x\n" {
		t.Fatalf("read route: %d %q", r.status, r.body)
	}
	if r := rawGet(t, e.proxy, "GET", "/public/x", nil); r.status != 200 || r.body != "public /public/x\n" {
		t.Fatalf("public route: %d %q", r.status, r.body)
	}
	// The canonical path goes upstream: nginx serves exactly what was checked.
	if r := rawGet(t, e.proxy, "GET", "/read/%78", withKey); r.status != 200 || r.body != "read /read/x\n" {
		t.Fatalf("encoded unreserved character: %d %q", r.status, r.body)
	}

	for _, tc := range []struct {
		target string
		key    bool
		status int
	}{
		{"/public/../read/admin/x", false, 400},
		{"/public/%2e%2e/read/admin/x", false, 400},
		{"/public/%2E%2E/read/admin/x", false, 400},
		{"/public/.%2e/read/admin/x", false, 400},
		{"/public/..%2fread/admin/x", false, 400},
		{"/public%2f..%2fread/admin/x", false, 400},
		{"/read/../read/admin/x", true, 400},
		{"/read//admin/x", true, 400},
		{"/read/./admin/x", true, 400},
		{"/read/%2e/admin/x", true, 400},
		{"/read/admin%2fx", true, 400},
		{"/read/%61dmin/x", true, 403},
		{"/read/%2561dmin/x", true, 400},
		{"/read;x/admin/x", true, 400},
		{"/read\\admin\\x", true, 400},
		{"/read/admin", true, 403},
		{"HTTP://127.0.0.1/public/../read/admin/x", false, 400},
	} {
		var h map[string]string
		if tc.key {
			h = withKey
		}
		r := rawGet(t, e.proxy, "GET", tc.target, h)
		if strings.HasPrefix(r.body, "admin") || r.status != tc.status {
			t.Errorf("%s (key %v): %d %q, want %d and never the admin location", tc.target, tc.key, r.status, r.body, tc.status)
		}
	}
}
