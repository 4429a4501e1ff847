package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// A real MCP server and client from the official TypeScript SDK, the server
// behind the sidecar as an OAuth protected resource (RFC 9728). A client
// without a token gets a 401 whose resource_metadata leads, through the
// SDK's own discovery, to the metadata document naming the keybroker
// issuer; an agent with a DPoP-bound token for the resource (RFC 8707 aud)
// calls a tool, each request with a fresh proof by the dpop package; the
// server sees the agent's identity, never its token or proof.
func TestMCPThroughSidecar(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	var server struct{ Port int }
	nodeStart(t, &server, "mcp.mjs", "server")
	upstream := fmt.Sprintf("http://127.0.0.1:%d", server.Port)

	var resource string
	e := startSidecarAt(t, v, func(c *sidecar.Config, proxyURL string) {
		resource = proxyURL + "/mcp"
		c.Upstream, c.PublicOrigin, c.Resource, c.RequireDPoP = upstream, proxyURL, resource, true
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/mcp", Scopes: []string{"read"}})
	})

	var unauth struct {
		Status int
		Params struct {
			ResourceMetadataURL string `json:"resourceMetadataUrl"`
			Scope               string
		}
		Metadata struct {
			Resource                      string   `json:"resource"`
			AuthorizationServers          []string `json:"authorization_servers"`
			ScopesSupported               []string `json:"scopes_supported"`
			DPoPBoundAccessTokensRequired bool     `json:"dpop_bound_access_tokens_required"`
		}
	}
	nodeRun(t, &unauth, "mcp.mjs", "unauthorized", resource)
	wantMD := e.proxy + "/.well-known/oauth-protected-resource/mcp"
	if unauth.Status != http.StatusUnauthorized || unauth.Params.ResourceMetadataURL != wantMD || unauth.Params.Scope != "read" {
		t.Fatalf("without a token: %+v (want 401 pointing at %s, scope read)", unauth, wantMD)
	}
	if unauth.Metadata.Resource != resource || len(unauth.Metadata.AuthorizationServers) != 1 ||
		unauth.Metadata.AuthorizationServers[0] != v.Addr+"/v1/keybroker" || !unauth.Metadata.DPoPBoundAccessTokensRequired ||
		!strings.Contains(strings.Join(unauth.Metadata.ScopesSupported, " "), "read") {
		t.Fatalf("the metadata the SDK found: %+v", unauth.Metadata)
	}

	// The agent: a token for the resource, bound to its key.
	write(t, v.Client, "keybroker/roles/svc", map[string]interface{}{"audiences": "svc,other," + resource})
	k := newNPMKey(t, "ES256")
	token := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": resource, "dpop_jkt": k.JKT}).Data["token"].(string)
	var called struct {
		Result struct {
			Subject, Scopes, Authorization, DPoP *string
		}
		Statuses []string
	}
	nodeRun(t, &called, "mcp.mjs", "call", resource, token, string(k.PrivateJWK), string(k.PublicJWK), k.alg, e.proxy)
	r := called.Result
	if r.Subject == nil || !strings.HasPrefix(*r.Subject, "no-entity:") || r.Scopes == nil || *r.Scopes != "read" {
		t.Fatalf("the tool saw identity %+v (requests: %v)", r, called.Statuses)
	}
	if r.Authorization != nil || r.DPoP != nil {
		t.Fatalf("the MCP server got the token or the proof: %+v", r)
	}
	// A token for another audience is not one for this resource.
	other := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "other", "dpop_jkt": k.JKT}).Data["token"].(string)
	proof := k.proof(t, "POST", resource, other)
	if r := call(t, e.proxy, "POST", "/mcp", map[string]string{"Authorization": "DPoP " + other, "DPoP": proof}, ""); r.status != http.StatusUnauthorized {
		t.Fatalf("a token for another audience: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
}
