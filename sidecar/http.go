package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// headerRemaining goes with every allowed request of a metered credential.
const headerRemaining = "X-Budget-Remaining"

// A rotated API key's answers tell its client which key replaces it and
// when it stops working, so the client can switch during the grace.
const (
	headerReplacedBy = "X-Keybroker-Key-Replaced-By"
	headerKeyExpires = "X-Keybroker-Key-Expires"
)

// setReplaced tells a rotated key's client about its successor.
func setReplaced(h http.Header, id *identity) {
	if id != nil && id.replacedBy != "" {
		h.Set(headerReplacedBy, id.replacedBy)
		h.Set(headerKeyExpires, id.expiresAt.UTC().Format(time.RFC3339))
	}
}

// proxyHandler checks each request and forwards allowed ones upstream, to
// the canonical path decided on, with the credential removed and the
// caller's identity added.
func (sc *Sidecar) proxyHandler() http.Handler {
	type ctxKey struct{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			d, _ := pr.In.Context().Value(ctxKey{}).(*decision)
			if d == nil {
				panic(http.ErrAbortHandler) // unreachable: every request is decided first
			}
			// Exactly the path decided on, re-encoded minimally.
			pr.Out.URL.Path, pr.Out.URL.RawPath, pr.Out.URL.RawQuery = d.path, "", d.query
			pr.SetURL(sc.s.upstream)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
			stripCredentialAndIdentity(pr.Out.Header)
			sc.stripConfigured(pr.Out.Header)
			setIdentity(pr.Out.Header, d.id, false)
			if d.hold != nil && d.rt.openaiUsage {
				// The meter reads the body: ask for it uncompressed
				// (what still comes compressed is decoded).
				pr.Out.Header.Set("Accept-Encoding", "identity")
			}
		},
		// The upstream's answer says what a metered request cost.
		ModifyResponse: func(resp *http.Response) error {
			d, _ := resp.Request.Context().Value(ctxKey{}).(*decision)
			if d == nil {
				return nil
			}
			setReplaced(resp.Header, d.id)
			if d.hold != nil {
				setRemaining(resp.Header, d.hold)
				settleResponse(resp, d.hold, d.rt)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				sc.writeDenial(w, deny(http.StatusRequestEntityTooLarge, contract.ReasonBodyTooLarge), false)
				return
			}
			sc.log.Warn("upstream request failed", "error", err)
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sc.isMetadataRequest(r) {
			sc.serveResourceMetadata(w)
			return
		}
		if r.ContentLength > sc.s.maxBody {
			sc.writeDenial(w, deny(http.StatusRequestEntityTooLarge, contract.ReasonBodyTooLarge), false)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, sc.s.maxBody)
		d := sc.core.decideAs(r.Context(), "proxy", request{
			method: r.Method, target: r.RequestURI, header: r.Header, clientIP: sc.clientIP(r),
		})
		if !d.allowed() {
			sc.writeDenial(w, d, false)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, &d))
		rp.ServeHTTP(w, r)
		// No response reached ModifyResponse (the upstream failed): the
		// request may still have cost, so charge the route's cost.
		if d.hold != nil {
			d.hold.settle(d.rt.cost)
		}
	})
}

func setRemaining(h http.Header, hd *hold) {
	if hd.remaining >= 0 {
		h.Set(headerRemaining, strconv.FormatInt(hd.remaining, 10))
	}
}

// authHandler serves /verify for gateways, /healthz and /metrics.
func (sc *Sidecar) authHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", sc.serveHealthz)
	mux.Handle("/metrics", promhttp.HandlerFor(sc.m.reg, promhttp.HandlerOpts{}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// /verify is matched on the raw target, before ServeMux cleans
		// or redirects anything: the rest of it is Envoy's original path.
		if r.RequestURI == "/verify" || strings.HasPrefix(r.RequestURI, "/verify/") || strings.HasPrefix(r.RequestURI, "/verify?") {
			sc.serveVerify(w, r)
			return
		}
		if sc.isMetadataRequest(r) {
			sc.serveResourceMetadata(w)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// serveVerify answers a gateway's auth request about the request the
// configured gateway reports, and only to a peer in trusted_proxies.
func (sc *Sidecar) serveVerify(w http.ResponseWriter, r *http.Request) {
	g := sc.s.gateway
	if g == nil {
		http.Error(w, "keybroker-sidecar: /verify is off; set gateway (nginx, traefik, caddy or envoy) in the configuration", http.StatusNotFound)
		return
	}
	req, d, counted := sc.gatewayRequest(r, g)
	if d.status != 0 {
		if counted {
			sc.countEarlyDenial("auth", d, req)
		}
		sc.writeDenial(w, d, g.only2xx401403)
		return
	}
	d = sc.core.decideAs(r.Context(), "auth", req)
	if !d.allowed() {
		sc.writeDenial(w, d, g.only2xx401403)
		return
	}
	setIdentity(w.Header(), d.id, true)
	setReplaced(w.Header(), d.id)
	if d.hold != nil {
		// A gateway never shows the sidecar the response: the route's
		// cost is all that can be charged.
		setRemaining(w.Header(), d.hold)
		d.hold.settle(d.rt.cost)
	}
	w.WriteHeader(http.StatusOK)
}

// writeDenial answers per RFC 6750: 401 invalid_token, 403
// insufficient_scope with the needed scope, 400 invalid_request, each
// challenge with an error_description and resource_metadata (RFC 9728
// §5.1), and a JSON body an OAuth client reads ({"error",
// "error_description"}) with keybroker's reason beside them. Denials that
// are not about the token carry their reason as the error, so OAuth
// clients do not take them for an authorization server's answer. When
// only2xx401403 (nginx auth_request), every other status becomes 403; the
// reason header says why.
func (sc *Sidecar) writeDenial(w http.ResponseWriter, d decision, only2xx401403 bool) {
	h := w.Header()
	h.Set(contract.HeaderReason, d.reason)
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	desc := d.description()
	body := map[string]string{"reason": d.reason, "error": d.reason, "error_description": desc}
	// resource_metadata (RFC 9728 §5.1) tells an OAuth client where to
	// learn how to get a token for this resource.
	rm := ""
	if sc.s.metadataURL != "" {
		rm = fmt.Sprintf(`, resource_metadata=%q`, sc.s.metadataURL)
	}
	if d.status == http.StatusUnauthorized {
		challengeUnauthorized(h, body, d, desc, rm)
	} else {
		denialHeaders(h, body, d, desc, rm)
	}
	status := d.status
	if only2xx401403 && status != http.StatusUnauthorized && status != http.StatusForbidden {
		status = http.StatusForbidden
	}
	w.WriteHeader(status)
	if d.openai && d.status == http.StatusTooManyRequests {
		_ = json.NewEncoder(w).Encode(openAIError(d))
		return
	}
	_ = json.NewEncoder(w).Encode(body)
}

// challengeUnauthorized is a 401's challenge and error: in the scheme the
// credential came with, desc its error_description, rm its
// resource_metadata parameter.
func challengeUnauthorized(h http.Header, body map[string]string, d decision, desc, rm string) {
	switch {
	case d.reason == contract.ReasonNoCredential:
		scope := ""
		if d.scope != "" {
			scope = fmt.Sprintf(`, scope=%q`, d.scope)
		}
		// Bearer first even under require_dpop: OAuth clients (the MCP
		// SDK) read resource_metadata only from a Bearer challenge, and
		// the metadata then says DPoP is required. No error code: RFC
		// 6750 §3.1 says a request without credentials gets none.
		c := `Bearer realm="keybroker"` + scope + rm
		if d.dpop {
			c += ", " + dpopChallenge
		}
		h.Set("WWW-Authenticate", c)
		body["error"] = "invalid_request"
	case d.dpop:
		code := "invalid_token"
		if d.reason == contract.ReasonInvalidProof || d.reason == contract.ReasonProofReplayed {
			code = "invalid_dpop_proof"
		}
		h.Set("WWW-Authenticate", fmt.Sprintf(`%s, error=%q, error_description=%q%s`, dpopChallenge, code, desc, rm))
		body["error"] = code
	default:
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="keybroker", error="invalid_token", error_description=%q%s`, desc, rm))
		body["error"] = "invalid_token"
	}
}

// denialHeaders are what every other denial says besides its status: the
// scope a 403 lacks, when to retry a 429 or a 503, what a 405 allows.
func denialHeaders(h http.Header, body map[string]string, d decision, desc, rm string) {
	switch d.status {
	case http.StatusForbidden:
		if d.reason == contract.ReasonInsufficientScope {
			scheme := `Bearer realm="keybroker"`
			if d.dpop {
				scheme = dpopChallenge
			}
			// RFC 6750 §3.1, and the MCP SDK's step-up: it reads error
			// and scope from this challenge.
			h.Set("WWW-Authenticate", fmt.Sprintf(`%s, error="insufficient_scope", error_description=%q, scope=%q%s`, scheme, desc, d.scope, rm))
			body["error"] = "insufficient_scope"
			body["scope"] = d.scope
		}
	case http.StatusTooManyRequests:
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(d.retryAfter), 10))
		if d.reason == contract.ReasonBudgetExhausted {
			// Retrying cannot help before the period resets: say so to
			// clients that would otherwise wait out Retry-After, perhaps
			// for hours (the OpenAI SDKs honour this header).
			h.Set("X-Should-Retry", "false")
		}
	case http.StatusMethodNotAllowed:
		h.Set("Allow", d.allow)
	case http.StatusBadRequest:
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="keybroker", error="invalid_request", error_description=%q%s`, desc, rm))
		body["error"] = "invalid_request"
	case http.StatusServiceUnavailable:
		body["error"] = "temporarily_unavailable"
		if d.retryAfter > 0 {
			h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(d.retryAfter), 10))
		}
	}
}

// openAIError is a 429 in the shape OpenAI's API gives one, so an OpenAI
// SDK surfaces code and type, with keybroker's reason beside it.
func openAIError(d decision) map[string]interface{} {
	e := map[string]interface{}{"type": "requests", "code": "rate_limit_exceeded",
		"message": fmt.Sprintf("keybroker: rate limit reached for this credential; retry after %d s", retryAfterSeconds(d.retryAfter))}
	if d.reason == contract.ReasonBudgetExhausted {
		e = map[string]interface{}{"type": "insufficient_quota", "code": "insufficient_quota",
			"message": fmt.Sprintf("keybroker: this credential's budget is spent until its period resets, in %d s; retrying sooner cannot succeed", retryAfterSeconds(d.retryAfter))}
	}
	e["param"] = nil
	return map[string]interface{}{"error": e, "reason": d.reason}
}

// dpopChallenge is the DPoP scheme's challenge (RFC 9449 §7.1): the
// algorithms proofs may be signed with.
var dpopChallenge = `DPoP algs="` + strings.Join(jwtverify.ProofAlgorithms(), " ") + `"`

// identityHeaders are contract.IdentityHeaders, read once: setIdentity
// runs on every request.
var identityHeaders = contract.IdentityHeaders()

// setIdentity sets the caller's identity headers. On a gateway's answer
// (all) every one is set, empty where it does not apply (a public route has
// no caller), so a gateway that copies them always replaces the client's
// copy. Upstream, where the client's copies are already stripped, only those
// with a value are sent: an empty-but-present header could pass for a caller.
func setIdentity(h http.Header, id *identity, all bool) {
	var sub, keyID, jti, role, tenant, scopes, actors string
	if id != nil {
		sub, role, tenant, scopes, actors = id.subject, id.role, id.tenant, strings.Join(id.scopes, " "), contract.ActorHeader(id.actors)
		if id.jwt {
			jti = id.id
		} else {
			keyID = id.id
		}
	}
	for i, v := range [...]string{sub, keyID, jti, role, tenant, scopes, actors} {
		if v != "" || all {
			h.Set(identityHeaders[i], v)
		}
	}
}

// stripCredentialAndIdentity removes the credential (and a DPoP proof), so
// the service never sees it, and any X-Keybroker-* header the client sent,
// so identity headers can only come from the sidecar.
func stripCredentialAndIdentity(h http.Header) {
	for k := range h {
		if strippedHeader(k) {
			delete(h, k)
		}
	}
}

// stripConfigured removes the strip_headers (by default the routing
// overrides) in every spelling CGI-style servers read as the same name.
func (sc *Sidecar) stripConfigured(h http.Header) {
	for k := range h {
		if sc.s.stripped(k) {
			delete(h, k)
		}
	}
}

// stripped says whether k is one of strip_headers, as CGI reads names.
func (s *settings) stripped(k string) bool {
	for _, n := range s.stripHeaders {
		if cgiNameEqual(k, n) {
			return true
		}
	}
	return false
}

// strippedHeader: a client's header the service must never get: a
// credential header or an X-Keybroker-* one, in any case and with '_' for
// '-' (X_Keybroker_Role, X_API_Key), because CGI-style servers (PHP, WSGI,
// Rack) read both spellings as the same HTTP_X_KEYBROKER_ROLE.
func strippedHeader(k string) bool {
	if len(k) >= len(contract.HeaderPrefix) && cgiNameEqual(k[:len(contract.HeaderPrefix)], contract.HeaderPrefix) {
		return true
	}
	for _, c := range credentialHeaders {
		if cgiNameEqual(k, c) {
			return true
		}
	}
	return false
}

// cgiNameEqual compares header names as CGI does: case-insensitively, with
// '_' and '-' the same.
func cgiNameEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if cgiFold(a[i]) != cgiFold(b[i]) {
			return false
		}
	}
	return true
}

func cgiFold(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	case c == '_':
		return '-'
	}
	return c
}
