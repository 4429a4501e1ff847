package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar/internal/reqtarget"
)

// servedPath is what a lenient, path-normalising upstream (nginx, servlet
// containers, http.FileServer, most frameworks) serves for a raw path: every
// escape decoded, '\' taken for '/', ';' parameters dropped, slashes merged,
// dot segments resolved. It is written independently of reqtarget.CanonicalPath.
func servedPath(raw string) string {
	var b []byte
	for i := 0; i < len(raw); i++ {
		if raw[i] == '%' && i+2 < len(raw) {
			if c, err := strconv.ParseUint(raw[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(c))
				i += 2
				continue
			}
		}
		b = append(b, raw[i])
	}
	p := strings.ReplaceAll(string(b), "\\", "/")
	var out []string
	for _, seg := range strings.Split(p, "/") {
		seg, _, _ = strings.Cut(seg, ";")
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	return "/" + strings.Join(out, "/")
}

// routeFor is the route a path falls under in fixtureRoutes, by the plain
// definition: the longest prefix covering it at a segment boundary.
func routeFor(path string) RouteConfig {
	best := RouteConfig{}
	for _, r := range fixtureRoutes {
		p := strings.TrimSuffix(r.PathPrefix, "/")
		if (path == p || strings.HasPrefix(path, p+"/") || p == "") && len(p) >= len(strings.TrimSuffix(best.PathPrefix, "/")) {
			best = r
		}
	}
	return best
}

// FuzzDecide: whatever the method, target and headers, in proxy mode and
// through the nginx gateway, an allowed request's credential carries the
// scopes of the route that a normalising upstream would serve it from, a
// request without a credential is allowed only there where that route is
// public, and the proxy forwards the very path that upstream serves.
func FuzzDecide(f *testing.F) {
	for _, seed := range []string{
		"/public/../v1/admin/x", "/public/%2e%2e/v1/admin/x", "/public/%2E%2E/v1/admin", "/v1//admin", "/v1/./admin",
		"/v1/%61dmin/users", "/public%2f..%2fv1/admin", "/public\\..\\v1\\admin", "/public;/../v1/admin", "/v1/items/1",
		"/publicity", "/public/%252e%252e/v1/admin", "http://x/public/../v1/admin", "/public/%c0%ae%c0%ae/v1/admin",
	} {
		for cred := byte(0); cred < 4; cred++ {
			f.Add("GET", seed, "X-Forwarded-Uri", "/public", cred)
		}
	}
	f.Add("HEAD", "/v1/items", "X-Original-URI", "/public", byte(1))
	f.Add("DELETE", "/v1/items/1", "Authorization", "Bearer x", byte(2))

	fx := newFixture(f, func(c *Config) { c.Gateway = "nginx"; c.TrustedProxies = []string{"127.0.0.2"} })
	creds := []struct {
		token  string
		scopes []string
	}{
		{"", nil},
		{fx.jwt(f, "any read", time.Hour), []string{"any", "read"}},
		{fx.jwt(f, "any read admin", time.Hour), []string{"any", "read", "admin"}},
	}
	// An API key verified from the replica.
	key, rec := testKey(f, time.Now().Add(-48*time.Hour), "web", "", "any", "read")
	synced(fx.sc, rec)
	creds = append(creds, struct {
		token  string
		scopes []string
	}{key, []string{"any", "read"}})
	auth := fx.sc.authHandler()
	peer := netip.MustParseAddr("127.0.0.1")

	f.Fuzz(func(t *testing.T, method, target, hname, hvalue string, which byte) {
		cred := creds[int(which)%len(creds)]
		h := http.Header{}
		if hname != "" && !strings.EqualFold(hname, "Authorization") && !strings.EqualFold(hname, "X-Api-Key") {
			h[http.CanonicalHeaderKey(hname)] = []string{hvalue}
		}
		if cred.token != "" {
			h.Set("Authorization", "Bearer "+cred.token)
		}
		check := func(mode string, allowed bool) {
			if !allowed {
				return
			}
			rawPath, _, ok := reqtarget.Split(target)
			if !ok {
				t.Fatalf("%s: %s %q allowed without a path", mode, method, target)
			}
			rt := routeFor(servedPath(rawPath))
			if rt.Public {
				return
			}
			for _, need := range rt.Scopes {
				if !slices.Contains(cred.scopes, need) {
					t.Fatalf("%s: %s %q (served as %s, route %s) allowed with scopes %v", mode, method, target, servedPath(rawPath), rt.PathPrefix, cred.scopes)
				}
			}
		}

		d := fx.sc.core.decide(context.Background(), request{method: method, target: target, header: h, clientIP: peer})
		check("proxy", d.allowed())
		if d.allowed() {
			rawPath, _, _ := reqtarget.Split(target)
			if d.path != servedPath(rawPath) && !(strings.HasSuffix(d.path, "/") && d.path[:len(d.path)-1] == servedPath(rawPath)) {
				t.Fatalf("proxy: %q forwarded as %q, a normalising upstream serves %q", target, d.path, servedPath(rawPath))
			}
		}

		gh := h.Clone()
		gh.Set("X-Original-Method", method)
		gh.Set("X-Original-URI", target)
		if !validHeaderValue(method) || !validHeaderValue(target) {
			return // nginx sends only what it parsed from a request line
		}
		w := send(auth, "GET", "/verify", "127.0.0.2:1", gh)
		check("nginx", w.Code == http.StatusOK)
		if w.Code == http.StatusOK && cred.token == "" && w.Header().Get(contract.HeaderSubject) != "" {
			t.Fatalf("nginx: anonymous request got subject %q", w.Header().Get(contract.HeaderSubject))
		}
	})
}

func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
