package sidecar

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// Exchanged tokens (RFC 8693 act): the chain goes upstream in
// X-Keybroker-Actor, current actor first, and routes can require or forbid
// delegation. A client's own X-Keybroker-Actor never survives.
func TestDelegatedTokens(t *testing.T) {
	var seen http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = r.Header.Clone() }))
	defer up.Close()
	f := newFixture(t, func(c *Config) {
		c.Upstream = up.URL
		c.Routes = append(c.Routes,
			RouteConfig{PathPrefix: "/delegated", Scopes: []string{"any"}, Delegation: "require"},
			RouteConfig{PathPrefix: "/direct", Scopes: []string{"any"}, Delegation: "forbid"})
	})
	h := f.sc.proxyHandler()
	direct := f.jwt(t, "any", time.Hour)
	c := f.claims("any", time.Hour)
	c.ID = "jti-delegated"
	c.Act = &jwtverify.Actor{Subject: "tool,agent", Act: &jwtverify.Actor{Subject: "assistant"}}
	delegated := f.sign(t, c)

	for _, tc := range []struct {
		path, token string
		status      int
		reason      string
		actor       string
	}{
		{"/delegated/x", delegated, 200, "", "tool%2Cagent, assistant"},
		{"/delegated/x", direct, 403, contract.ReasonDelegationRequired, ""},
		{"/direct/x", direct, 200, "", ""},
		{"/direct/x", delegated, 403, contract.ReasonDelegationForbidden, ""},
		{"/other", delegated, 200, "", "tool%2Cagent, assistant"},
		{"/other", direct, 200, "", ""},
	} {
		seen = nil
		w := send(h, "GET", tc.path, "127.0.0.1:1", hdr("Authorization", "Bearer "+tc.token, "X-Keybroker-Actor", "forged"))
		if w.Code != tc.status || w.Header().Get(contract.HeaderReason) != tc.reason {
			t.Errorf("%s: %d %q, want %d %q", tc.path, w.Code, w.Header().Get(contract.HeaderReason), tc.status, tc.reason)
			continue
		}
		if tc.status == 200 && seen.Get(contract.HeaderActor) != tc.actor {
			t.Errorf("%s: upstream X-Keybroker-Actor %q, want %q", tc.path, seen.Get(contract.HeaderActor), tc.actor)
		}
	}

	// Through the embedded middleware, IdentityFrom carries the chain.
	var got Identity
	mw := f.sc.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got, _ = IdentityFrom(r.Context()) }))
	if w := send(mw, "GET", "/delegated/x", "127.0.0.1:1", hdr("Authorization", "Bearer "+delegated)); w.Code != 200 || strings.Join(got.Actors, ",") != "tool,agent,assistant" {
		t.Errorf("middleware: %d, Actors %q", w.Code, got.Actors)
	}

	// On a gateway's answer the header is always set, empty for a direct
	// caller, so a gateway that copies it replaces the client's.
	g := newFixture(t, func(c *Config) { c.Gateway = "traefik"; c.TrustedProxies = []string{"127.0.0.2"} })
	w := send(g.sc.authHandler(), "GET", "/verify", "127.0.0.2:1", hdr("X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/v1/x", "Authorization", "Bearer "+g.jwt(t, "any read", time.Hour)))
	if v, ok := w.Header()[contract.HeaderActor]; w.Code != 200 || !ok || len(v) != 1 || v[0] != "" {
		t.Errorf("/verify for a direct caller: %d, X-Keybroker-Actor %q present %v", w.Code, v, ok)
	}
}

func TestDelegationConfig(t *testing.T) {
	for name, r := range map[string]RouteConfig{
		"unknown value": {PathPrefix: "/x", Delegation: "maybe"},
		"public":        {PathPrefix: "/x", Public: true, Delegation: "forbid"},
	} {
		c := &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{RoleID: "r", SecretIDFile: "/s"}, Routes: []RouteConfig{r}}
		if _, err := c.settings(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
