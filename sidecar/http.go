package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Identity headers passed upstream (proxy) or to the gateway (/verify).
const (
	headerPrefix  = "X-Keybroker-"
	headerSubject = "X-Keybroker-Subject"
	headerKeyID   = "X-Keybroker-Key-Id"
	headerJTI     = "X-Keybroker-Jti"
	headerRole    = "X-Keybroker-Role"
	headerTenant  = "X-Keybroker-Tenant"
	headerScopes  = "X-Keybroker-Scopes"
	headerReason  = "X-Keybroker-Reason"
	// headerRemaining goes with every allowed request of a metered credential.
	headerRemaining = "X-Budget-Remaining"
)

// proxyHandler checks each request and forwards allowed ones upstream, with
// the credential removed and the caller's identity added.
func (sc *Sidecar) proxyHandler() http.Handler {
	type ctxKey struct{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(sc.s.upstream)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
			stripCredentialAndIdentity(pr.Out.Header)
			if d, _ := pr.In.Context().Value(ctxKey{}).(*decision); d != nil && d.id != nil {
				setIdentity(pr.Out.Header, d.id)
			}
		},
		// The upstream's answer says what a metered request cost.
		ModifyResponse: func(resp *http.Response) error {
			if d, _ := resp.Request.Context().Value(ctxKey{}).(*decision); d != nil && d.hold != nil {
				setRemaining(resp.Header, d.hold)
				sc.settleResponse(resp, d.hold, d.rt)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			sc.log.Warn("upstream request failed", "error", err)
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := sc.timedDecide("proxy", r, request{
			method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, header: r.Header,
			clientIP: sc.clientIP(r),
		})
		if !d.allowed() {
			writeDenial(w, d, false)
			return
		}
		if d.id != nil {
			r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, &d))
		}
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
	verify := http.HandlerFunc(sc.serveVerify)
	mux.Handle("/verify", verify)
	mux.Handle("/verify/", verify) // Envoy ext_authz: path_prefix + the original path
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		status, code := "ok", http.StatusOK
		if !sc.Ready() {
			status, code = "starting", http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]interface{}{
			"status":                   status,
			"jwks_age_seconds":         sinceNanos(sc.jwksOK.Load()),
			"revocation_feed_lag_secs": sinceNanos(sc.feedOK.Load()),
		})
	})
	mux.Handle("/metrics", promhttp.HandlerFor(sc.m.reg, promhttp.HandlerOpts{}))
	return mux
}

// serveVerify answers a gateway's subrequest. nginx auth_request sends
// X-Original-Method and X-Original-URI and passes on only 2xx, 401 and 403;
// Traefik ForwardAuth sends X-Forwarded-Method and X-Forwarded-Uri; Envoy
// ext_authz sends the original method and the original path after /verify.
func (sc *Sidecar) serveVerify(w http.ResponseWriter, r *http.Request) {
	req := request{method: r.Method, header: r.Header, clientIP: sc.clientIP(r)}
	uri := ""
	nginx := false
	switch {
	case r.Header.Get("X-Original-URI") != "":
		nginx = true
		uri = r.Header.Get("X-Original-URI")
		req.method = or(r.Header.Get("X-Original-Method"), r.Method)
	case r.Header.Get("X-Forwarded-Uri") != "":
		uri = r.Header.Get("X-Forwarded-Uri")
		req.method = or(r.Header.Get("X-Forwarded-Method"), r.Method)
	default:
		uri = strings.TrimPrefix(r.URL.Path, "/verify")
		if uri == "" {
			uri = "/"
		}
		if r.URL.RawQuery != "" {
			uri += "?" + r.URL.RawQuery
		}
	}
	req.path, req.query, _ = strings.Cut(uri, "?")
	d := sc.timedDecide("auth", r, req)
	if !d.allowed() {
		writeDenial(w, d, nginx)
		return
	}
	if d.id != nil {
		setIdentity(w.Header(), d.id)
	}
	if d.hold != nil {
		// A gateway never shows the sidecar the response: the route's
		// cost is all that can be charged.
		setRemaining(w.Header(), d.hold)
		d.hold.settle(d.rt.cost)
	}
	w.WriteHeader(http.StatusOK)
}

func (sc *Sidecar) timedDecide(mode string, r *http.Request, req request) decision {
	start := time.Now()
	d := sc.decide(r.Context(), req)
	sc.m.latency.WithLabelValues(mode).Observe(time.Since(start).Seconds())
	outcome := "allow"
	if !d.allowed() {
		outcome = "deny"
	}
	sc.m.decisions.WithLabelValues(mode, outcome, d.reason).Inc()
	if d.degraded {
		sc.m.degraded.Inc()
	}
	return d
}

// writeDenial answers per RFC 6750: 401 invalid_token, 403
// insufficient_scope with the needed scope, 400 invalid_request. Under nginx
// auth_request every other status becomes 403; the reason header says why.
func writeDenial(w http.ResponseWriter, d decision, nginx bool) {
	h := w.Header()
	h.Set(headerReason, d.reason)
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	body := map[string]string{"reason": d.reason}
	switch d.status {
	case http.StatusUnauthorized:
		if d.reason == reasonNoCredential {
			h.Set("WWW-Authenticate", `Bearer realm="keybroker"`)
			body["error"] = "invalid_request"
		} else {
			h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="keybroker", error="invalid_token", error_description=%q`, d.reason))
			body["error"] = "invalid_token"
		}
	case http.StatusForbidden:
		if d.reason == reasonInsufficientScope {
			h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="keybroker", error="insufficient_scope", scope=%q`, d.scope))
			body["error"] = "insufficient_scope"
			body["scope"] = d.scope
		} else {
			body["error"] = "access_denied"
		}
	case http.StatusTooManyRequests:
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(d.retryAfter), 10))
		body["error"] = d.reason
	case http.StatusBadRequest:
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="keybroker", error="invalid_request", error_description=%q`, d.reason))
		body["error"] = "invalid_request"
	default:
		body["error"] = "temporarily_unavailable"
	}
	status := d.status
	if nginx && status != http.StatusUnauthorized && status != http.StatusForbidden {
		status = http.StatusForbidden
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func setIdentity(h http.Header, id *identity) {
	h.Set(headerSubject, id.subject)
	if id.jwt {
		h.Set(headerJTI, id.id)
	} else {
		h.Set(headerKeyID, id.id)
	}
	h.Set(headerRole, id.role)
	h.Set(headerTenant, id.tenant)
	h.Set(headerScopes, strings.Join(id.scopes, " "))
}

// stripCredentialAndIdentity removes the credential, so the service never
// sees it, and any X-Keybroker-* header the client sent, so identity headers
// can only come from the sidecar.
func stripCredentialAndIdentity(h http.Header) {
	h.Del("Authorization")
	h.Del("X-API-Key")
	for k := range h {
		if strings.HasPrefix(http.CanonicalHeaderKey(k), headerPrefix) {
			delete(h, k)
		}
	}
}

// clientIP is the socket peer, or, when the peer is a trusted proxy, the
// right-most address in X-Forwarded-For that is not itself trusted.
func (sc *Sidecar) clientIP(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	peer = peer.Unmap()
	if !sc.trusted(peer) {
		return peer
	}
	xff := r.Header.Values("X-Forwarded-For")
	hops := strings.Split(strings.Join(xff, ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return peer // a garbled chain: trust only what we saw
		}
		a = a.Unmap()
		if !sc.trusted(a) {
			return a
		}
		peer = a
	}
	return peer
}

func (sc *Sidecar) trusted(a netip.Addr) bool {
	for _, p := range sc.s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
