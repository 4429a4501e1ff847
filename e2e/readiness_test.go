package e2e

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// A real Vault whose discovery document cannot be read (a proxy in front
// answers it 404, as a wrong mount or a gateway would): a sidecar that
// takes JWTs still follows the revocation and key-record feeds and checks
// API keys, and /healthz says it waits for the JWKS and why; one whose
// credential_kinds leave JWTs out is ready, reading no issuer at all.
func TestSidecarReadinessWithoutIssuer(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	target, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	filtered := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/.well-known/openid-configuration") {
			http.NotFound(w, r)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(filtered.Close)
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "readiness"}).Data["key"].(string)
	jwt := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)

	withJWTs := launchSidecar(t, v, func(c *sidecar.Config, _ string) { c.Vault.Address = filtered.URL }, nil)
	eventually(t, 15*time.Second, "the API key was never let through", func() bool {
		return call(t, withJWTs.proxy, "GET", "/read", bearer(key), "").status == http.StatusOK
	})
	code, body := healthz(t, withJWTs.auth)
	jwks, _ := body["feeds"].(map[string]any)["jwks"].(map[string]any)
	jwksErr, _ := jwks["error"].(string)
	if code != http.StatusServiceUnavailable || body["status"] != "starting" || !strings.Contains(strings.Join(anyStrings(body["waiting_for"]), ","), "jwks") ||
		jwks["state"] != "starting" || !strings.Contains(jwksErr, "404") || feedState(body, "revocations") != "ok" {
		t.Fatalf("healthz of a sidecar that takes JWTs, without an issuer: %d %v", code, body)
	}
	if r := call(t, withJWTs.proxy, "GET", "/read", bearer(jwt), ""); r.status != http.StatusServiceUnavailable {
		t.Fatalf("a JWT before the issuer is known: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}

	keysOnly := startSidecarAt(t, v, func(c *sidecar.Config, _ string) {
		c.Vault.Address, c.CredentialKinds, c.Audiences = filtered.URL, []string{"api_key"}, nil
	})
	code, body = healthz(t, keysOnly.auth)
	jwks, _ = body["feeds"].(map[string]any)["jwks"].(map[string]any)
	if code != http.StatusOK || body["status"] != "ok" || jwks["state"] != "not_used" || len(anyStrings(body["waiting_for"])) != 0 {
		t.Fatalf("healthz of an API-key-only sidecar: %d %v", code, body)
	}
	if r := call(t, keysOnly.proxy, "GET", "/read", bearer(key), ""); r.status != http.StatusOK {
		t.Fatalf("an API key: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	if r := call(t, keysOnly.proxy, "GET", "/read", bearer(jwt), ""); r.status != http.StatusUnauthorized || r.header.Get("X-Keybroker-Reason") != "credential_kind_not_accepted" {
		t.Fatalf("a JWT to an API-key-only sidecar: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
}

func anyStrings(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
