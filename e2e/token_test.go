package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/jwtverify"
)

const agentPolicy = `
path "keybroker/token/agent" {
  capabilities = ["update"]
}
path "keybroker/token/refresh" {
  capabilities = ["update"]
}
`

// fetchJWKS reads the JWKS over plain HTTP, with no Vault token, as a
// verifier outside Vault would.
func fetchJWKS(t *testing.T, v *vaultserver.Server) *jwtverify.KeySet {
	t.Helper()
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	getJSON(t, v.Addr+"/v1/keybroker/.well-known/openid-configuration", &disc)
	if disc.Issuer != v.Addr+"/v1/keybroker" || disc.JWKSURI != disc.Issuer+"/jwks" {
		t.Fatalf("discovery = %+v", disc)
	}
	// RFC 8414 metadata, also without a token, names the same issuer.
	var as struct {
		Issuer   string   `json:"issuer"`
		JWKSURI  string   `json:"jwks_uri"`
		DPoPAlgs []string `json:"dpop_signing_alg_values_supported"`
	}
	getJSON(t, v.Addr+"/v1/keybroker/.well-known/oauth-authorization-server", &as)
	if as.Issuer != disc.Issuer || as.JWKSURI != disc.JWKSURI || len(as.DPoPAlgs) == 0 {
		t.Fatalf("RFC 8414 metadata = %+v, openid-configuration %+v", as, disc)
	}
	resp, err := http.Get(disc.JWKSURI)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Cache-Control"), "max-age") {
		t.Fatalf("GET jwks: %d %v", resp.StatusCode, resp.Header)
	}
	ks, err := jwtverify.ParseJWKS(body)
	if err != nil {
		t.Fatalf("parsing JWKS %s: %v", body, err)
	}
	return ks
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func offlineVerify(t *testing.T, v *vaultserver.Server, token, aud string) (*jwtverify.Claims, error) {
	t.Helper()
	ver, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: v.Addr + "/v1/keybroker", Audiences: []string{aud}, Leeway: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ver.Verify(token, fetchJWKS(t, v))
}

// An agent logs in with AppRole, gets a JWT, and a service verifies it
// offline against the JWKS; sub is the agent's Vault entity and nothing the
// agent sends can change it.
func TestAgentJWT(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/agent", map[string]interface{}{
		"scopes": "llm:chat,llm:embed", "default_scopes": "llm:chat", "audiences": "llm-gateway,search",
		"tenant": "acme", "token_ttl": "5m", "refresh_ttl": "1h",
	})
	agent, err := v.LoginAs(ctxT(t), "agent", agentPolicy)
	if err != nil {
		t.Fatal(err)
	}
	self, err := agent.Auth().Token().LookupSelfWithContext(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	entityID := self.Data["entity_id"].(string)

	minted := write(t, agent, "keybroker/token/agent", map[string]interface{}{"audience": "llm-gateway"})
	token := minted.Data["token"].(string)
	c, err := offlineVerify(t, v, token, "llm-gateway")
	if err != nil {
		t.Fatalf("offline verify: %v", err)
	}
	if c.Subject != entityID || c.Scope != "llm:chat" || c.Tenant != "acme" || c.Role != "agent" || c.ID != minted.Data["jti"] {
		t.Fatalf("claims = %+v (entity %s)", c, entityID)
	}
	if !strings.HasPrefix(minted.LeaseID, "keybroker/token/agent/") || minted.LeaseDuration != 300 {
		t.Fatalf("lease = %q %d", minted.LeaseID, minted.LeaseDuration)
	}

	// The caller cannot choose sub, scopes or audiences outside the role.
	for _, tc := range []struct {
		data map[string]interface{}
		want string
	}{
		{map[string]interface{}{"sub": "someone-else"}, "unknown field(s): sub"},
		{map[string]interface{}{"scopes": "admin"}, "scopes admin are not allowed"},
		{map[string]interface{}{"audience": "billing"}, `audience "billing" is not allowed`},
		// One token, one resource: a role with several audiences makes
		// the caller name one.
		{nil, `role "agent" allows several audiences (llm-gateway, search): name the one`},
	} {
		_, err := agent.Logical().WriteWithContext(ctxT(t), "keybroker/token/agent", tc.data)
		if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("mint with %v: %v, want 400 %q", tc.data, err, tc.want)
		}
	}

	// Rotation: the old token keeps verifying (verification_ttl), new
	// tokens carry the new kid (immediate: rotation_test.go has the lead).
	write(t, root, "keybroker/rotate", map[string]interface{}{"immediate": true})
	if fetchJWKS(t, v).Len() != 2 {
		t.Fatal("JWKS after rotation does not hold both keys")
	}
	if _, err := offlineVerify(t, v, token, "llm-gateway"); err != nil {
		t.Fatalf("old token after rotation: %v", err)
	}
	// A read with the audience in its query, as Vault Agent's template
	// "keybroker/token/agent?audience=search" sends it.
	read, err := root.Logical().ReadWithDataWithContext(ctxT(t), "keybroker/token/agent", map[string][]string{"audience": {"search"}})
	if err != nil || read == nil {
		t.Fatalf("read with ?audience=search: %v", err)
	}
	fresh := read.Data["token"].(string)
	if _, err := offlineVerify(t, v, fresh, "search"); err != nil {
		t.Fatalf("token signed by the new key: %v", err)
	}
	if _, err := offlineVerify(t, v, fresh, "llm-gateway"); err == nil {
		t.Fatal("a token minted for search is accepted at llm-gateway")
	}

	// Revoking the lease puts the jti in the feed; verify says revoked.
	if err := root.Sys().RevokeWithContext(ctxT(t), minted.LeaseID); err != nil {
		t.Fatal(err)
	}
	if ids := feedIDs(t, root); !containsString(ids, c.ID) {
		t.Fatalf("feed %v lacks jti %s", ids, c.ID)
	}
	if _, reason, _ := verify(t, root, token, ""); reason != "revoked" {
		t.Fatalf("verify after lease revoke: %s", reason)
	}

	audit, err := os.ReadFile(v.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(audit), token) || strings.Contains(string(audit), strings.Split(token, ".")[2]) {
		t.Fatal("the JWT is in the audit log")
	}
	if !strings.Contains(string(audit), `"jti":"`+c.ID+`"`) {
		t.Fatal("jti is not in the audit log in clear")
	}
}

// Refresh tokens rotate on use; presenting a spent one revokes the family.
func TestRefreshReuse(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/agent", map[string]interface{}{"audiences": "api", "refresh_ttl": "1h"})
	agent, err := v.LoginAs(ctxT(t), "agent", agentPolicy)
	if err != nil {
		t.Fatal(err)
	}
	first := write(t, agent, "keybroker/token/agent", nil)
	second := write(t, agent, "keybroker/token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]})
	if second.Data["refresh_token"] == first.Data["refresh_token"] {
		t.Fatal("refresh did not rotate the refresh token")
	}
	if _, err := offlineVerify(t, v, second.Data["token"].(string), "api"); err != nil {
		t.Fatalf("refreshed token: %v", err)
	}

	_, err = agent.Logical().WriteWithContext(ctxT(t), "keybroker/token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reusing a spent refresh token: %v", err)
	}
	ids := feedIDs(t, root)
	for _, s := range []*api.Secret{first, second} {
		if !containsString(ids, s.Data["jti"].(string)) {
			t.Fatalf("feed %v lacks %v after reuse", ids, s.Data["jti"])
		}
	}
	_, err = agent.Logical().WriteWithContext(ctxT(t), "keybroker/token/refresh", map[string]interface{}{"refresh_token": second.Data["refresh_token"]})
	if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "family was revoked") {
		t.Fatalf("refresh after the family was revoked: %v", err)
	}
}
