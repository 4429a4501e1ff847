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
// learns where to get a token (authorization_servers: the keybroker
// issuer) and for which scopes.

// isMetadataRequest says whether r asks for the resource's metadata.
func (sc *Sidecar) isMetadataRequest(r *http.Request) bool {
	if sc.s.metadataPath == "" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return false
	}
	path, _, _ := strings.Cut(r.RequestURI, "?")
	return path == sc.s.metadataPath
}

func (sc *Sidecar) serveResourceMetadata(w http.ResponseWriter) {
	iss := sc.jwksFeed.issuer.Load()
	if iss == nil {
		// The issuer comes from Vault's discovery document: not read yet.
		http.Error(w, "keybroker-sidecar: the issuer is not known yet", http.StatusServiceUnavailable)
		return
	}
	doc := map[string]interface{}{
		"resource":                 sc.s.resource,
		"authorization_servers":    []string{*iss},
		"scopes_supported":         sc.s.scopesSupported(),
		"bearer_methods_supported": []string{"header"},
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
