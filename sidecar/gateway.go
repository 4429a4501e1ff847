package sidecar

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar/internal/clientip"
)

// gateway says where the auth endpoint finds the request a gateway asks
// about. It is configured, never sniffed: a header the configured gateway
// does not set is ignored, because a gateway passes the client's own headers
// on to the auth request, and a client could otherwise name any route.
type gateway struct {
	name string
	// methodHeader and uriHeader carry the original method and the raw
	// request-target; empty for Envoy, which appends the original path to
	// /verify and keeps the method.
	methodHeader, uriHeader string
	// only2xx401403: the gateway passes on only these statuses (nginx
	// auth_request answers 500 to anything else), so other denials are
	// mapped to 403 with the reason in X-Keybroker-Reason.
	only2xx401403 bool
}

var gateways = map[string]gateway{
	// nginx auth_request, with proxy_set_header X-Original-URI $request_uri
	// and X-Original-Method $request_method (examples/nginx.conf).
	"nginx": {name: "nginx", methodHeader: "X-Original-Method", uriHeader: "X-Original-URI", only2xx401403: true},
	// Traefik ForwardAuth and Caddy forward_auth set these themselves,
	// replacing any copy the client sent.
	"traefik": {name: "traefik", methodHeader: "X-Forwarded-Method", uriHeader: "X-Forwarded-Uri"},
	"caddy":   {name: "caddy", methodHeader: "X-Forwarded-Method", uriHeader: "X-Forwarded-Uri"},
	// Envoy ext_authz over HTTP: path_prefix "/verify" + the original path.
	"envoy": {name: "envoy"},
}

func gatewayNames() string {
	return "nginx, traefik, caddy or envoy"
}

// original returns the method and raw request-target a gateway asks about,
// or ok=false when the gateway's headers are missing or repeated.
func (g *gateway) original(r *http.Request) (method, target string, ok bool) {
	if g.uriHeader == "" {
		rest, found := strings.CutPrefix(r.RequestURI, "/verify")
		if !found || (rest != "" && rest[0] != '/' && rest[0] != '?') {
			return "", "", false
		}
		if rest == "" || rest[0] == '?' {
			rest = "/" + rest
		}
		return r.Method, rest, true
	}
	m, mok := single(r.Header, g.methodHeader)
	u, uok := single(r.Header, g.uriHeader)
	return m, u, mok && uok && m != "" && u != ""
}

// gatewayRequest reads the request a gateway asks about on /verify: only
// a peer in trusted_proxies is answered, with a body within the limit, and
// the gateway's headers naming the request once each. d.status != 0: refused
// before any decision; counted says whether the refusal counts as a
// decision (an untrusted peer, a request that cannot be read).
func (sc *Sidecar) gatewayRequest(r *http.Request, g *gateway) (req request, d decision, counted bool) {
	// What the gateway says is read first, and believed only once its
	// peer is known to be trusted: reading it decides nothing.
	method, target, ok := g.original(r)
	peer := clientip.Peer(r)
	if !clientip.Trusted(sc.s.trusted, peer) {
		return request{clientIP: peer}, deny(http.StatusForbidden, contract.ReasonUntrustedGateway), true
	}
	if r.ContentLength > sc.s.maxBody {
		return request{}, deny(http.StatusRequestEntityTooLarge, contract.ReasonBodyTooLarge), false
	}
	req = request{method: method, target: target, header: r.Header, clientIP: clientip.Of(r, sc.s.trusted)}
	if !ok {
		return request{header: r.Header, clientIP: req.clientIP}, deny(http.StatusBadRequest, contract.ReasonBadRequest), true
	}
	return req, decision{}, false
}

// single returns a header's only value; ok is false when it is repeated.
func single(h http.Header, name string) (string, bool) {
	vs := h.Values(name)
	switch len(vs) {
	case 0:
		return "", true
	case 1:
		return vs[0], true
	}
	return "", false
}

func parseGateway(name string, trusted int) (*gateway, error) {
	if name == "" {
		return nil, nil
	}
	g, ok := gateways[name]
	if !ok {
		return nil, fmt.Errorf("gateway %q: must be %s", name, gatewayNames())
	}
	if trusted == 0 {
		return nil, fmt.Errorf("gateway %q: list the gateway's address in trusted_proxies; /verify answers only trusted peers", name)
	}
	return &g, nil
}

// clientIP is the client a request comes from, seen through the trusted
// proxies (clientip.Of).
func (sc *Sidecar) clientIP(r *http.Request) netip.Addr { return clientip.Of(r, sc.s.trusted) }

// trusted says whether a is in trusted_proxies.
func (sc *Sidecar) trusted(a netip.Addr) bool { return clientip.Trusted(sc.s.trusted, a) }
