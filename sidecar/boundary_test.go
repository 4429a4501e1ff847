package sidecar

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// send runs one request through h with the raw target as the client sent
// it, from peer, and returns the recorder.
func send(h http.Handler, method, target, peer string, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/", nil)
	r.Method, r.RequestURI, r.RemoteAddr = method, target, peer
	for k, vs := range header {
		r.Header[k] = vs
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// Every way of reaching a stricter route through a weaker one, in proxy
// mode and through the embedded Middleware (one decision, two ways in),
// with no credential and with a credential lacking admin.
func TestProxyBoundary(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	f := newFixture(t, func(c *Config) { c.Upstream = up.URL })
	for mode, h := range map[string]http.Handler{
		"proxy":      f.sc.proxyHandler(),
		"middleware": f.sc.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})),
	} {
		t.Run(mode, func(t *testing.T) { testBoundary(t, f, h) })
	}
}

func testBoundary(t *testing.T, f *fixture, h http.Handler) {
	reader := f.jwt(t, "any read", time.Hour)
	admin := f.jwt(t, "any read admin", time.Hour)
	key, _, _ := apikey.Generate(nil, "kb")
	refresh, _, _ := apikey.Generate(nil, "kbrt")
	badKey := key[:len(key)-1] + map[bool]string{true: "B", false: "A"}[key[len(key)-1] == 'A']
	for _, tc := range []struct {
		method, target string
		cred           string
		status         int
		reason         string
	}{
		{"GET", "/public/../v1/admin/x", "", 400, contract.ReasonNonCanonicalPath},
		{"GET", "/public/%2e%2e/v1/admin/x", "", 400, contract.ReasonNonCanonicalPath},
		{"GET", "/public/%2E%2e/v1/admin/x", reader, 400, contract.ReasonNonCanonicalPath},
		{"GET", "/v1//admin/x", reader, 400, contract.ReasonNonCanonicalPath},
		{"GET", "/v1/./admin/x", reader, 400, contract.ReasonNonCanonicalPath},
		{"GET", "/v1/%61dmin/x", reader, 403, contract.ReasonInsufficientScope},
		{"GET", "/v1/%61dmin/x", admin, 200, ""},
		{"GET", "/v1/admin%2fx", admin, 400, contract.ReasonNonCanonicalPath},
		{"GET", "/v1;x/admin/x", reader, 400, contract.ReasonNonCanonicalPath},
		{"GET", "/v1/admin;x/y", reader, 400, contract.ReasonNonCanonicalPath},
		{"GET", "http://evil.example/v1/admin/x", reader, 403, contract.ReasonInsufficientScope}, // absolute-form
		{"GET", "http://evil.example/public/../v1/admin", "", 400, contract.ReasonNonCanonicalPath},
		{"OPTIONS", "*", reader, 400, contract.ReasonNonCanonicalPath},
		{"GET", "/publicity", "", 401, contract.ReasonNoCredential}, // not under /public
		{"GET", "/public", "", 200, ""},
		{"HEAD", "/v1/items/1", reader, 200, ""},
		{"DELETE", "/v1/items/1", admin, 405, contract.ReasonMethodNotAllowed}, // never the parent route
		{"GET", "/v1/items/1?access_token=x", reader, 400, contract.ReasonCredentialInQuery},
		{"GET", "/v1/items/1?x=%zz&access_token=x", reader, 400, contract.ReasonCredentialInQuery},
		{"GET", "/v1/items/1?x=1;token=y", reader, 400, contract.ReasonCredentialInQuery},
		// A credential in the path, as in the query: refused, never
		// forwarded, whatever surrounds it.
		{"GET", "/v1/items/" + key, reader, 400, contract.ReasonCredentialInPath},
		{"GET", "/v1/items/" + refresh, reader, 400, contract.ReasonCredentialInPath},
		{"GET", "/v1/items/" + reader, reader, 400, contract.ReasonCredentialInPath},
		{"GET", "/v1/items/" + key + ".json", reader, 400, contract.ReasonCredentialInPath},
		{"GET", "/v1/items/token=" + reader + "/x", reader, 400, contract.ReasonCredentialInPath},
		{"GET", "/v1/items/by-key-" + key + "-old", reader, 400, contract.ReasonCredentialInPath},
		{"GET", "/v1/items/" + strings.Replace(key, "_", "%5F", -1), reader, 400, contract.ReasonCredentialInPath}, // decoded once, then seen
		{"GET", "/v1/items/" + key, "", 400, contract.ReasonCredentialInPath},                                      // before the credential is asked for
		// Ordinary paths pass.
		{"GET", "/v1/items/report.2024.final.pdf", reader, 200, ""},
		{"GET", "/v1/items/eyJohn.smith", reader, 200, ""},
		{"GET", "/v1/items/550e8400-e29b-41d4-a716-446655440000", reader, 200, ""},
		{"GET", "/v1/items/" + strings.Repeat("ab_", 40), reader, 200, ""},
		{"GET", "/v1/items/" + badKey, reader, 200, ""}, // a key's shape, not its checksum
		{"GET", "/v1/items/sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", reader, 200, ""},
		{"GET", "/v1/static/surveyJSLibraryBundle.min.js", reader, 200, ""}, // "eyJ" inside a word
		{"GET", "/v1/api/keyJsonSchemaDefinition.v2.json", reader, 200, ""},
		{"GET", "/v1/users/John_Smith_profile_picture", reader, 200, ""},
		{"GET", "/v1/items/" + strings.Repeat("_", 8<<10), reader, 200, ""},
		// A credential within a query value, as the upstream decodes it.
		{"GET", "/v1/items/1?q=Bearer+" + reader, reader, 400, contract.ReasonCredentialInQuery},
		{"GET", "/v1/items/1?cb=https%3A%2F%2Fx%2Fy%3Faccess_token%3D" + reader, reader, 400, contract.ReasonCredentialInQuery},
		// A method override in the query: the framework would serve
		// another method than the one checked.
		{"GET", "/v1/items/1?_method=DELETE", reader, 400, contract.ReasonMethodOverride},
		{"GET", "/v1/items/1?x=1&_METHOD=DELETE", reader, 400, contract.ReasonMethodOverride},
		{"GET", "/v1/items/1?%5Fmethod=DELETE", "", 400, contract.ReasonMethodOverride}, // before the credential is asked for
		{"GET", "/public/x?_method=DELETE", "", 200, ""},                                // public routes check no query
	} {
		header := http.Header{}
		if tc.cred != "" {
			header.Set("Authorization", "Bearer "+tc.cred)
		}
		w := send(h, tc.method, tc.target, "127.0.0.1:5555", header)
		if w.Code != tc.status || w.Header().Get(contract.HeaderReason) != tc.reason {
			t.Errorf("%s %s: %d %q, want %d %q (%s)", tc.method, tc.target, w.Code, w.Header().Get(contract.HeaderReason), tc.status, tc.reason, w.Body)
		}
		if tc.status == 405 && w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: Allow %q", tc.method, tc.target, w.Header().Get("Allow"))
		}
	}
}

// The auth endpoint reads the original request only from the configured
// gateway's headers, only from a trusted peer, and canonicalises it as the
// proxy does.
func TestVerifyGatewayHeaders(t *testing.T) {
	reader := ""
	for _, gw := range []string{"nginx", "traefik", "caddy"} {
		t.Run(gw, func(t *testing.T) {
			f := newFixture(t, func(c *Config) { c.Gateway = gw; c.TrustedProxies = []string{"127.0.0.2"} })
			h := f.sc.authHandler()
			reader = f.jwt(t, "any read", time.Hour)
			g := gateways[gw]
			orig := func(method, uri string, kv ...string) http.Header {
				h := hdr(kv...)
				h.Add(g.methodHeader, method)
				h.Add(g.uriHeader, uri)
				return h
			}
			denied := 403 // nginx passes on only 401 and 403
			if !g.only2xx401403 {
				denied = 400
			}
			// The other gateways' headers, as a client would add them.
			other := "X-Original-URI"
			if gw == "nginx" {
				other = "X-Forwarded-Uri"
			}
			for _, tc := range []struct {
				name   string
				peer   string
				header http.Header
				status int
				reason string
			}{
				{"allowed", "127.0.0.2:1", orig("GET", "/v1/items/1", "Authorization", "Bearer "+reader), 200, ""},
				{"client names a public route in another gateway's header", "127.0.0.2:1", orig("GET", "/v1/admin/x", other, "/public"), 401, contract.ReasonNoCredential},
				{"read-only credential on admin via another gateway's header", "127.0.0.2:1", orig("GET", "/v1/admin/x", other, "/v1/items", "Authorization", "Bearer "+reader), 403, contract.ReasonInsufficientScope},
				{"untrusted peer", "127.0.0.1:1", orig("GET", "/public"), 403, contract.ReasonUntrustedGateway},
				{"no original URI", "127.0.0.2:1", hdr(g.methodHeader, "GET", other, "/public"), denied, contract.ReasonBadRequest},
				{"repeated original URI", "127.0.0.2:1", orig("GET", "/public", g.uriHeader, "/v1/admin"), denied, contract.ReasonBadRequest},
				{"dot segments", "127.0.0.2:1", orig("GET", "/public/../v1/admin/x"), denied, contract.ReasonNonCanonicalPath},
				{"encoded dot segments", "127.0.0.2:1", orig("GET", "/public/%2e%2e/v1/admin/x"), denied, contract.ReasonNonCanonicalPath},
				{"still-encoded path is decoded", "127.0.0.2:1", orig("GET", "/v1/%61dmin/users", "Authorization", "Bearer "+reader), 403, contract.ReasonInsufficientScope},
				{"HEAD on a GET route", "127.0.0.2:1", orig("HEAD", "/v1/items/1", "Authorization", "Bearer "+reader), 200, ""},
				{"405 not parent", "127.0.0.2:1", orig("DELETE", "/v1/items/1", "Authorization", "Bearer "+reader), map[bool]int{true: 403, false: 405}[g.only2xx401403], contract.ReasonMethodNotAllowed},
				{"public", "127.0.0.2:1", orig("GET", "/public/x"), 200, ""},
				{"method override in the query", "127.0.0.2:1", orig("GET", "/v1/items/1?_Method=DELETE", "Authorization", "Bearer "+reader), denied, contract.ReasonMethodOverride},
				{"credential in a path segment", "127.0.0.2:1", orig("GET", "/v1/items/x-"+reader+"/y", "Authorization", "Bearer "+reader), denied, contract.ReasonCredentialInPath},
				{"eyJ inside a word", "127.0.0.2:1", orig("GET", "/v1/static/surveyJSLibraryBundle.min.js", "Authorization", "Bearer "+reader), 200, ""},
			} {
				w := send(h, "GET", "/verify", tc.peer, tc.header)
				if w.Code != tc.status || w.Header().Get(contract.HeaderReason) != tc.reason {
					t.Errorf("%s: %d %q, want %d %q (%s)", tc.name, w.Code, w.Header().Get(contract.HeaderReason), tc.status, tc.reason, w.Body)
				}
				if tc.status == 200 {
					// Every identity header, so a gateway that copies them
					// always overwrites the client's.
					for _, name := range contract.IdentityHeaders() {
						if _, ok := w.Header()[name]; !ok {
							t.Errorf("%s: allowed without %s", tc.name, name)
						}
					}
				}
			}
		})
	}
	t.Run("envoy", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.Gateway = "envoy"; c.TrustedProxies = []string{"127.0.0.2"} })
		h := f.sc.authHandler()
		reader := f.jwt(t, "any read", time.Hour)
		auth := hdr("Authorization", "Bearer "+reader)
		for _, tc := range []struct {
			method, target string
			header         http.Header
			status         int
			reason         string
		}{
			{"GET", "/verify/v1/items/1", auth, 200, ""},
			{"GET", "/verify", hdr("X-Original-URI", "/public"), 401, contract.ReasonNoCredential}, // "/" needs "any"
			{"GET", "/verify/v1/admin/x", hdr("X-Original-URI", "/public", "X-Forwarded-Uri", "/public"), 401, contract.ReasonNoCredential},
			{"GET", "/verify/public/../v1/admin", nil, 400, contract.ReasonNonCanonicalPath},
			{"GET", "/verify/public/%2e%2e/v1/admin", nil, 400, contract.ReasonNonCanonicalPath},
			{"GET", "/verify/v1/%61dmin", auth, 403, contract.ReasonInsufficientScope},
			{"GET", "/verify//v1/admin", auth, 400, contract.ReasonNonCanonicalPath},
			{"GET", "/verify/public?x=1", nil, 200, ""},
			{"DELETE", "/verify/v1/items/1", auth, 405, contract.ReasonMethodNotAllowed},
		} {
			w := send(h, tc.method, tc.target, "127.0.0.2:1", tc.header)
			if w.Code != tc.status || w.Header().Get(contract.HeaderReason) != tc.reason {
				t.Errorf("%s %s: %d %q, want %d %q (%s)", tc.method, tc.target, w.Code, w.Header().Get(contract.HeaderReason), tc.status, tc.reason, w.Body)
			}
		}
		// /verifyx is not /verify.
		if w := send(h, "GET", "/verifyx/public", "127.0.0.2:1", nil); w.Code != 404 {
			t.Errorf("/verifyx: %d", w.Code)
		}
	})
	t.Run("no gateway", func(t *testing.T) {
		f := newFixture(t, nil)
		w := send(f.sc.authHandler(), "GET", "/verify", "127.0.0.1:1", hdr("X-Original-URI", "/public", "X-Original-Method", "GET"))
		if w.Code != 404 || !strings.Contains(w.Body.String(), "gateway") {
			t.Errorf("/verify without a gateway: %d %s", w.Code, w.Body)
		}
	})
}

func TestGatewayConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		gateway string
		trusted []string
		want    string
	}{
		"unknown":    {"haproxy", []string{"127.0.0.1"}, "must be nginx, traefik, caddy or envoy"},
		"no trusted": {"nginx", nil, "trusted_proxies"},
	} {
		c := &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{RoleID: "r", SecretIDFile: "/s"}, Gateway: tc.gateway, TrustedProxies: tc.trusted}
		if _, err := c.settings(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, tc.want)
		}
	}
}

// One clock rule: a token the verifier accepts within the leeway is not
// refused by the decision for being past exp.
func TestLeewayAppliesToExp(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Leeway = "30s" })
	h := f.sc.proxyHandler()
	late := f.jwt(t, "any read", -7*time.Second)
	for i := 0; i < 2; i++ { // the second one comes from the cache
		if w := send(h, "GET", "/v1/items/1", "127.0.0.1:1", hdr("Authorization", "Bearer "+late)); w.Code == 401 {
			t.Fatalf("7s past exp with 30s leeway (try %d): %d %s", i, w.Code, w.Header().Get(contract.HeaderReason))
		}
	}
	f = newFixture(t, func(c *Config) { c.Leeway = "5s" })
	if w := send(f.sc.proxyHandler(), "GET", "/v1/items/1", "127.0.0.1:1", hdr("Authorization", "Bearer "+f.jwt(t, "any read", -7*time.Second))); w.Code != 401 || w.Header().Get(contract.HeaderReason) != contract.ReasonExpired {
		t.Fatalf("7s past exp with 5s leeway: %d %s", w.Code, w.Header().Get(contract.HeaderReason))
	}
}
