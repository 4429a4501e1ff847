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
// SDK's own discovery, to the metadata document, which names no
// authorization server (keybroker's issuer has no OAuth endpoints for the
// SDK to log in at: TestMCPStaticToken); an agent with a DPoP-bound token for the resource (RFC 8707 aud)
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
	if unauth.Metadata.Resource != resource || unauth.Metadata.AuthorizationServers != nil || !unauth.Metadata.DPoPBoundAccessTokensRequired ||
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

// The way that works today with a keybroker token, and what the MCP SDK
// makes of a token that lacks the route's scope: with the token in
// requestInit headers (no OAuth), the tool is called; a token without the
// scope ends in the SDK's own error carrying the 403's body
// (insufficient_scope, the scope needed); an OAuthClientProvider holding
// the same token ends in a plain error, not a ZodError from reading an
// authorization server keybroker does not run.
func TestMCPStaticToken(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	var server struct{ Port int }
	nodeStart(t, &server, "mcp.mjs", "server")
	var resource string
	startSidecarAt(t, v, func(c *sidecar.Config, proxyURL string) {
		resource = proxyURL + "/mcp"
		c.Upstream, c.Resource = fmt.Sprintf("http://127.0.0.1:%d", server.Port), resource
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/mcp", Scopes: []string{"read"}})
	})
	write(t, v.Client, "keybroker/roles/svc", map[string]interface{}{"audiences": "svc,other," + resource})
	reader := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": resource, "scopes": "read"}).Data["token"].(string)
	writer := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": resource, "scopes": "write"}).Data["token"].(string)

	type outcome struct {
		Result *struct{ Subject, Scopes *string }
		Error  *struct {
			Name, Message string
			Code          any // the HTTP status, on the SDK's StreamableHTTPError
		}
	}
	var ok outcome
	nodeRun(t, &ok, "mcp.mjs", "headers", resource, reader)
	if ok.Result == nil || ok.Result.Scopes == nil || *ok.Result.Scopes != "read" {
		t.Fatalf("a token with the scope, in requestInit headers: %+v %+v", ok.Result, ok.Error)
	}
	for _, mode := range []string{"headers", "provider"} {
		var o outcome
		nodeRun(t, &o, "mcp.mjs", mode, resource, writer)
		if o.Error == nil {
			t.Fatalf("%s: a token without the scope called the tool: %+v", mode, o.Result)
		}
		if strings.Contains(o.Error.Name+o.Error.Message, "ZodError") || strings.Contains(o.Error.Message, "invalid_type") {
			t.Fatalf("%s: a token without the scope ends in a ZodError: %+v", mode, o.Error)
		}
		if mode == "headers" && (o.Error.Code != 403.0 || !strings.Contains(o.Error.Message, `"error":"insufficient_scope"`) ||
			!strings.Contains(o.Error.Message, `"scope":"read"`)) {
			t.Fatalf("%s: the SDK's error does not say insufficient scope: %+v", mode, o.Error)
		}
	}
	// A token for another audience: the SDK shows why (the audiences this
	// resource accepts are the operator's log's, not the answer's).
	var aud outcome
	other := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "other"}).Data["token"].(string)
	nodeRun(t, &aud, "mcp.mjs", "headers", resource, other)
	if aud.Error == nil || aud.Error.Code != 401.0 || !strings.Contains(aud.Error.Message, `"reason":"audience_mismatch"`) ||
		!strings.Contains(aud.Error.Message, "mint it for this service") {
		t.Fatalf("a token for another audience: %+v", aud.Error)
	}
}
