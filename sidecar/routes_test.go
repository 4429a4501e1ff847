package sidecar

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/jwtverify"
)

func TestRouteMatch(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes,
			RouteConfig{PathPrefix: "/ci", CaseInsensitive: true, Scopes: []string{"ci"}},
			RouteConfig{PathPrefix: "/v2/things", Methods: []string{"POST"}, Scopes: []string{"write"}},
			RouteConfig{PathPrefix: "/v2/things", Methods: []string{"GET"}, Scopes: []string{"read"}},
			RouteConfig{PathPrefix: "/v2/head", Methods: []string{"HEAD"}, Scopes: []string{"peek"}},
		)
	})
	for _, tc := range []struct {
		method, path string
		want         string // the route's scopes; "public"; "405 <Allow>"
	}{
		{"GET", "/v1/items", "read"},
		{"GET", "/v1/items/42", "read"},
		{"HEAD", "/v1/items/42", "read"}, // HEAD follows GET
		{"POST", "/v1/items", "405 GET, HEAD"},
		{"DELETE", "/v1/items/42", "405 GET, HEAD"}, // never the parent /v1 route
		{"GET", "/v1/itemsx", "read"},               // /v1, not /v1/items: segment boundary
		{"GET", "/v1/admin/users", "admin"},
		{"GET", "/v1/administrator", "read"},
		{"GET", "/v1", "read"}, // "/v1/" means /v1 and below
		{"GET", "/V1/admin", "any"},
		{"GET", "/public", "public"},
		{"GET", "/public/x", "public"},
		{"GET", "/publicity", "any"},
		{"GET", "/CI/x", "ci"},
		{"GET", "/cI", "ci"},
		{"GET", "/cix", "any"},
		{"POST", "/v2/things/1", "write"},
		{"GET", "/v2/things/1", "read"},
		{"HEAD", "/v2/things/1", "read"},
		{"PUT", "/v2/things/1", "405 GET, HEAD, POST"},
		{"HEAD", "/v2/head", "peek"},
		{"GET", "/v2/head", "405 HEAD"}, // GET does not follow HEAD
		{"get", "/v1/items", "405 GET, HEAD"},
		{"GET", "/elsewhere", "any"},
	} {
		rt, g := f.sc.s.match(tc.method, tc.path)
		got := "none"
		switch {
		case rt != nil && rt.public:
			got = "public"
		case rt != nil:
			got = strings.Join(rt.scopes, ",")
		case g != nil:
			got = "405 " + g.allow
		}
		if got != tc.want {
			t.Errorf("%s %s: %s, want %s", tc.method, tc.path, got, tc.want)
		}
	}
	// Without a catch-all, an uncovered path matches nothing.
	f = newFixture(t, func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/api", Scopes: []string{"a"}}} })
	if rt, g := f.sc.s.match("GET", "/apix"); rt != nil || g != nil {
		t.Errorf("/apix matched /api")
	}
}

func TestRouteConfigErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		routes []RouteConfig
		want   string
	}{
		"relative":         {[]RouteConfig{{PathPrefix: "v1"}}, "must start with /"},
		"dot segment":      {[]RouteConfig{{PathPrefix: "/v1/../admin"}}, "segments"},
		"double slash":     {[]RouteConfig{{PathPrefix: "/v1//admin"}}, "segments"},
		"escaped":          {[]RouteConfig{{PathPrefix: "/v1/%61dmin"}}, "without %-escapes"},
		"semicolon":        {[]RouteConfig{{PathPrefix: "/v1;x"}}, "';'"},
		"two catch-alls":   {[]RouteConfig{{PathPrefix: "/a"}, {PathPrefix: "/a/"}}, "take any method"},
		"method twice":     {[]RouteConfig{{PathPrefix: "/a", Methods: []string{"GET"}}, {PathPrefix: "/a", Methods: []string{"POST", "GET"}}}, "GET is claimed"},
		"case disagrees":   {[]RouteConfig{{PathPrefix: "/a", Methods: []string{"GET"}}, {PathPrefix: "/A", CaseInsensitive: true, Methods: []string{"POST"}}}, "case_insensitive"},
		"lowercase method": {[]RouteConfig{{PathPrefix: "/", Methods: []string{"get"}}}, "uppercase"},
	} {
		c := &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{RoleID: "r", SecretIDFile: "/s"}, Routes: tc.routes}
		if _, err := c.settings(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, tc.want)
		}
	}
}

// The proxy sends the upstream exactly the canonical path it decided on.
func TestProxyForwardsCanonicalPath(t *testing.T) {
	var got []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.RequestURI)
	}))
	defer up.Close()
	f := newFixture(t, func(c *Config) { c.Upstream = up.URL })
	h := f.sc.proxyHandler()
	tok := f.jwt(t, "any read admin", 0x7fffffff)
	for target, want := range map[string]string{
		"/v1/%61dmin/x?q=%2F": "/v1/admin/x?q=%2F",
		"/a%20b":              "/a%20b",
		"/100%25":             "/100%25",
		"/q%3Fx":              "/q%3Fx",
		"/public/x":           "/public/x",
	} {
		got = nil
		r := httptest.NewRequest("GET", "/", nil)
		r.RequestURI = target
		r.Header.Set("Authorization", "Bearer "+tok)
		r.RemoteAddr = "127.0.0.1:1234"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 || len(got) != 1 || got[0] != want {
			t.Errorf("%s: %d, upstream got %q, want %q", target, w.Code, got, want)
		}
	}
}

// Upstream of the proxy, a public route's request carries no identity
// header at all, and an API key's request carries no empty Jti.
func TestProxyIdentityHeaders(t *testing.T) {
	var seen http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = r.Header.Clone() }))
	defer up.Close()
	f := newFixture(t, func(c *Config) { c.Upstream = up.URL })
	h := f.sc.proxyHandler()
	forged := hdr("X-Keybroker-Subject", "admin", "X-Keybroker-Role", "root", "x-keybroker-tenant", "evil")
	if w := send(h, "GET", "/public/x", "127.0.0.1:1", forged); w.Code != 200 {
		t.Fatalf("public: %d", w.Code)
	}
	for k := range seen {
		if strings.HasPrefix(strings.ToLower(k), "x-keybroker-") {
			t.Errorf("public route: upstream got %s: %q", k, seen[k])
		}
	}
	forged.Set("Authorization", "Bearer "+f.jwt(t, "any read", time.Hour))
	if w := send(h, "GET", "/v1/items/1", "127.0.0.1:1", forged); w.Code != 200 {
		t.Fatalf("JWT: %d", w.Code)
	}
	if seen.Get("X-Keybroker-Subject") != "agent" || seen.Get("X-Keybroker-Role") != "" || seen.Get("X-Keybroker-Tenant") != "" || seen.Get("Authorization") != "" {
		t.Errorf("JWT: upstream got %v", seen)
	}
	if _, ok := seen["X-Keybroker-Key-Id"]; ok {
		t.Errorf("JWT: upstream got an empty Key-Id")
	}
}

// Rate limits follow the lineage: a second token of the same subject and
// role (a refresh, a new mint) shares the first's bucket, and a looser one
// does not loosen it.
func TestRateLimitFollowsLineage(t *testing.T) {
	f := newFixture(t, nil)
	a := &identity{jwt: true, id: "jti-1", role: "agent", subject: "entity-1", rate: &jwtverify.RateLimit{PerSecond: 0.001, Burst: 2}}
	b := &identity{jwt: true, id: "jti-2", role: "agent", subject: "entity-1", rate: &jwtverify.RateLimit{PerSecond: 100, Burst: 100}}
	other := &identity{jwt: true, id: "jti-3", role: "agent", subject: "entity-2", rate: &jwtverify.RateLimit{PerSecond: 0.001, Burst: 2}}
	for i, id := range []*identity{a, a} {
		if _, ok := f.sc.core.rate.allow(context.Background(), id); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	if _, ok := f.sc.core.rate.allow(context.Background(), b); ok {
		t.Fatal("a refreshed token of the same lineage got a fresh (or looser) bucket")
	}
	if _, ok := f.sc.core.rate.allow(context.Background(), other); !ok {
		t.Fatal("another subject shares the bucket")
	}
	k := &identity{id: "KEYID", subject: "key:KEYID", rate: &jwtverify.RateLimit{PerSecond: 0.001, Burst: 1}}
	f.sc.core.rate.allow(context.Background(), k)
	if wait, ok := f.sc.core.rate.allow(context.Background(), k); ok || wait <= 0 {
		t.Fatalf("API key over its burst: %v %v", wait, ok)
	}
}
