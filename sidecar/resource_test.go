package sidecar

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

// With resource set the sidecar is an OAuth protected resource (RFC 9728):
// its metadata is served at the path RFC 9728 §3.1 derives from the
// resource, on both listeners and before any credential check; every 401
// points at it; and JWTs for the resource (aud, RFC 8707) are accepted.
func TestProtectedResourceMetadata(t *testing.T) {
	const resource = "https://mcp.example.com/mcp"
	f := newFixture(t, func(c *Config) {
		c.Resource, c.PublicOrigin, c.RequireDPoP = resource, "https://mcp.example.com", true
	})
	const path = "/.well-known/oauth-protected-resource/mcp"
	for name, h := range map[string]http.Handler{"proxy": f.sc.proxyHandler(), "auth": f.sc.authHandler()} {
		w := send(h, "GET", path, "127.0.0.1:1", nil)
		var doc struct {
			Resource             string   `json:"resource"`
			AuthorizationServers []string `json:"authorization_servers"`
			ScopesSupported      []string `json:"scopes_supported"`
			BearerMethods        []string `json:"bearer_methods_supported"`
			DPoPAlgs             []string `json:"dpop_signing_alg_values_supported"`
			DPoPBoundRequired    bool     `json:"dpop_bound_access_tokens_required"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || w.Code != 200 {
			t.Fatalf("%s: %d %s", name, w.Code, w.Body)
		}
		// No authorization server: keybroker's issuer has no OAuth
		// endpoints, and the issuer need not be known to answer.
		if doc.Resource != resource || doc.AuthorizationServers != nil || strings.Contains(w.Body.String(), "authorization_servers") ||
			strings.Join(doc.ScopesSupported, " ") != "admin any read" || doc.BearerMethods[0] != "header" ||
			!doc.DPoPBoundRequired || len(doc.DPoPAlgs) == 0 {
			t.Fatalf("%s: metadata %+v", name, doc)
		}
	}
	if w := send(f.sc.proxyHandler(), "POST", path, "127.0.0.1:1", nil); w.Code == 200 {
		t.Fatal("metadata answered a POST")
	}

	w := send(f.sc.proxyHandler(), "GET", "/v1/items", "127.0.0.1:1", nil)
	c := w.Header().Get("WWW-Authenticate")
	// Bearer first, even under require_dpop: the MCP SDK reads
	// resource_metadata from a Bearer challenge only.
	if w.Code != 401 || !strings.HasPrefix(c, `Bearer realm="keybroker", scope="read", resource_metadata="https://mcp.example.com`+path+`"`) ||
		!strings.Contains(c, `DPoP algs="`) {
		t.Fatalf("a request without a token: %d %q", w.Code, c)
	}

	// require_dpop: a bearer token is refused, even one for the resource.
	claims := f.claims("read", time.Hour)
	claims.Audience = []string{resource}
	tok := f.sign(t, claims)
	w = send(f.sc.proxyHandler(), "GET", "/v1/items", "127.0.0.1:1", hdr("Authorization", "Bearer "+tok))
	if w.Code != 401 || w.Header().Get("X-Keybroker-Reason") != contract.ReasonDPoPRequired || !strings.Contains(w.Header().Get("WWW-Authenticate"), "resource_metadata=") {
		t.Fatalf("a bearer token under require_dpop: %d %s %q", w.Code, w.Header().Get("X-Keybroker-Reason"), w.Header().Get("WWW-Authenticate"))
	}
	k := dpoptest.NewKey(t, "ES256")
	bc := f.claims("read", time.Hour)
	bc.Audience, bc.ID, bc.Cnf = []string{resource}, "jti-for-resource", &jwtverify.Confirmation{JKT: k.JKT}
	forResource := f.sign(t, bc)
	d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(forResource, k.Proof(t, "GET", "https://mcp.example.com/v1/items", forResource, time.Now(), nil)))
	if !d.allowed() {
		t.Fatalf("a bound token for the resource: %s", d.reason)
	}
}

func TestResourceConfig(t *testing.T) {
	for in, want := range map[string]string{
		"https://mcp.example.com/mcp": "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
		"https://mcp.example.com":     "https://mcp.example.com/.well-known/oauth-protected-resource",
		"https://mcp.example.com/":    "https://mcp.example.com/.well-known/oauth-protected-resource",
		"http://127.0.0.1:9/mcp":      "http://127.0.0.1:9/.well-known/oauth-protected-resource/mcp",
	} {
		if _, _, u, err := parseResource(in); err != nil || u != want {
			t.Errorf("resource %q: metadata at %q %v, want %q", in, u, err, want)
		}
	}
	for _, bad := range []string{"mcp.example.com", "http://mcp.example.com/mcp", "https://mcp.example.com/mcp?x=1", "https://mcp.example.com/mcp#f", "https://u@mcp.example.com", "https://mcp.example.com/mcp/"} {
		if _, _, _, err := parseResource(bad); err == nil {
			t.Errorf("resource %q: accepted", bad)
		}
	}
	c := &Config{Resource: "https://mcp.example.com/mcp", Vault: &VaultConfig{Address: "http://127.0.0.1:1", RoleID: "r", SecretIDFile: "/x"}}
	s, err := c.settings()
	if err != nil || len(s.audiences) != 1 || s.audiences[0] != c.Resource {
		t.Fatalf("resource without audiences: %v %v", s, err)
	}
	c.RequireDPoP = true
	if _, err := c.settings(); err == nil {
		t.Fatal("require_dpop without public_origin: accepted")
	}
	off := false
	c.PublicOrigin, c.KeyReplica = "https://mcp.example.com", &off
	if _, err := c.settings(); err == nil || !strings.Contains(err.Error(), "key_replica") {
		t.Fatalf("require_dpop without the key replica: %v", err)
	}
}

// authorization_servers, when an OAuth server does issue tokens this
// sidecar accepts, are what the metadata names, as configured; they need
// resource and must be issuer URLs.
func TestAuthorizationServersSetting(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Resource, c.AuthorizationServers = "https://mcp.example.com/mcp", []string{"https://as.example.com", "https://as2.example.com/tenant"}
	})
	w := send(f.sc.proxyHandler(), "GET", "/.well-known/oauth-protected-resource/mcp", "127.0.0.1:1", nil)
	var doc struct {
		AuthorizationServers []string `json:"authorization_servers"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || strings.Join(doc.AuthorizationServers, " ") != "https://as.example.com https://as2.example.com/tenant" {
		t.Fatalf("metadata %d %s", w.Code, w.Body)
	}
	for name, tc := range map[string]struct {
		resource string
		servers  []string
		want     string
	}{
		"without resource":   {"", []string{"https://as.example.com"}, "authorization_servers needs resource"},
		"not a URL":          {"https://mcp.example.com/mcp", []string{"as.example.com"}, "is not an issuer URL"},
		"a query":            {"https://mcp.example.com/mcp", []string{"https://as.example.com/?x=1"}, "is not an issuer URL"},
		"http, not loopback": {"https://mcp.example.com/mcp", []string{"http://as.example.com"}, "is not an issuer URL"},
		"http on loopback":   {"https://mcp.example.com/mcp", []string{"http://127.0.0.1:9000"}, ""},
	} {
		c := validConfig()
		c.Resource, c.AuthorizationServers = tc.resource, tc.servers
		var s settings
		got := ""
		for _, e := range validateTokens(c, &s) {
			got += e.Error()
		}
		if !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("%s: problems %q, want %q", name, got, tc.want)
		}
	}
}
