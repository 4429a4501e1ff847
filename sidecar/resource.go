package sidecar

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/jwtverify"
)

// Protected Resource Metadata (RFC 9728), for OAuth clients such as MCP's:
// with resource set, both listeners serve it at metadataPath, and 401
// challenges point at it (resource_metadata), so a client that got a 401
// learns for which scopes and how to present a token.
//
// authorization_servers lists only what authorization_servers in the
// configuration names, none by default: keybroker's issuer mints tokens
// through Vault's API, not OAuth's, and has no authorization or token
// endpoint. An OAuth client told of it runs its login flow against it
// and fails on the missing endpoints (the MCP SDK with a ZodError, even
// for a token that only lacked a scope); told of none, it has only the
// 401 or 403 it got, which says what is wrong.

// isMetadataRequest says whether r asks for the resource's metadata.
func (sc *Sidecar) isMetadataRequest(r *http.Request) bool {
	if sc.s.metadataPath == "" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return false
	}
	path, _, _ := strings.Cut(r.RequestURI, "?")
	return path == sc.s.metadataPath
}

func (sc *Sidecar) serveResourceMetadata(w http.ResponseWriter) {
	doc := map[string]interface{}{
		"resource":                 sc.s.resource,
		"scopes_supported":         sc.s.scopesSupported(),
		"bearer_methods_supported": []string{"header"},
	}
	if len(sc.s.authServers) > 0 {
		doc["authorization_servers"] = sc.s.authServers
	}
	if sc.dpop != nil {
		doc["dpop_signing_alg_values_supported"] = jwtverify.ProofAlgorithms()
		doc["dpop_bound_access_tokens_required"] = sc.s.requireDPoP
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	_ = json.NewEncoder(w).Encode(doc)
}

// scopesSupported is every scope a route requires, sorted, once each.
func (s *settings) scopesSupported() []string {
	out := []string{}
	for _, rt := range s.routes {
		out = append(out, rt.scopes...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
