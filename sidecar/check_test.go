package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/contract"
)

// A metered allow tells the client what is left (as the proxy's response
// does), never the service; an identity value is handed to the adapter as
// it is, for it to refuse what its protocol cannot carry
// (extauthz.TestGRPCAllowAnswer).
func TestCheckAllowAnswer(t *testing.T) {
	sc := testBudgets(t)
	now := time.Now()
	m := &meter{id: "k", central: 100}
	m.cur = &chunk{granted: 10, periodEnd: now.Add(time.Hour), expiresAt: now.Add(time.Minute)}
	h, _, _ := m.tryLocked(now, 3, false)
	if h == nil {
		t.Fatal("no hold")
	}
	h.b = sc.budgets
	d := decision{status: http.StatusOK, reason: contract.ReasonOK, id: &identity{id: "kid", subject: "key:kid", role: "svc", scopes: []string{"read"}}, hold: h, rt: &route{cost: 1}}
	v := sc.allowed(d, http.Header{})
	if len(v.Response) != 1 || v.Response[0].Name != headerRemaining || v.Response[0].Value == "" {
		t.Fatalf("response headers %v, want %s", v.Response, headerRemaining)
	}
	if len(v.Set) != len(identityHeaders) {
		t.Fatalf("set %v, want the %d identity headers", v.Set, len(identityHeaders))
	}
	for i, f := range v.Set {
		if strings.EqualFold(f.Name, headerRemaining) {
			t.Fatalf("X-Budget-Remaining goes to the service: %v", f)
		}
		if f.Name != identityHeaders[i] {
			t.Errorf("set %d is %s, want %s", i, f.Name, identityHeaders[i])
		}
	}
	d.id.subject = "bad\nvalue"
	if v := sc.allowed(d, http.Header{}); v.Set[0].Value != "bad\nvalue" {
		t.Fatalf("subject %q", v.Set[0].Value)
	}
	v.Settle(true)
}

// grpcFixture is the fixture with grpc_listen on and trusted gateways,
// asked through Check as the gRPC adapter (package extauthz, tested there
// over gRPC) asks it.
func grpcFixture(t *testing.T, trusted []string, mutate func(c *Config)) (*fixture, func(gateway string) checkClient) {
	t.Helper()
	f := newFixture(t, func(c *Config) {
		c.TrustedProxies, c.GRPCListen = trusted, "127.0.0.1:0"
		if mutate != nil {
			mutate(c)
		}
	})
	return f, func(gateway string) checkClient { return gatewayAt(f.sc, gateway) }
}

// checkClient asks a sidecar from one gateway's address.
type checkClient struct {
	sc      *Sidecar
	gateway netip.Addr
}

func gatewayAt(sc *Sidecar, addr string) checkClient {
	return checkClient{sc: sc, gateway: netip.MustParseAddr(addr)}
}

// checkRequest is what Envoy reports of a request from source (its
// downstream peer; "" for none), with canonical header keys.
func checkRequest(method, path, source string, h http.Header) CheckRequest {
	req := CheckRequest{Method: method, Target: path, Header: http.Header{}}
	for k, vs := range h {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		req.Header[ck] = append(req.Header[ck], vs...)
	}
	if source != "" {
		req.ClientIP = netip.MustParseAddr(source)
	}
	return req
}

func check(t *testing.T, c checkClient, req CheckRequest) Verdict {
	t.Helper()
	req.Gateway = c.gateway
	return c.sc.Check(context.Background(), req)
}

// applied is the request's header as the upstream gets it once a gateway
// applies an allow as Envoy does: Set first (overwriting), then Remove.
func applied(h http.Header, v Verdict) http.Header {
	out := h.Clone()
	for _, f := range v.Set {
		out[http.CanonicalHeaderKey(f.Name)] = []string{f.Value}
	}
	for _, k := range v.Remove {
		out.Del(k)
	}
	return out
}

// An allowed request: every identity header set, the credential and any
// other X-Keybroker-* header the client sent removed, so that after the
// gateway applies the answer the upstream sees the identity only as the
// sidecar gave it. How extauthz renders this for Envoy is
// extauthz.TestGRPCAllow.
func TestCheckAllow(t *testing.T) {
	f, client := grpcFixture(t, []string{"127.0.0.1"}, nil)
	c := client("127.0.0.1")
	tok := f.jwt(t, "any read", time.Hour)
	sent := hdr("Authorization", "Bearer "+tok, "X-Keybroker-Subject", "forged", "X-Keybroker-Key-Id", "forged",
		"X-Keybroker-Reason", "forged", "X-Keybroker-Admin", "true", "X_Keybroker_Tenant", "evil", "Accept", "a, b", "Host", "api.example")
	v := check(t, c, checkRequest("GET", "/v1/items/1?x=1", "127.0.0.9", sent))
	if !v.Allowed || v.Status != http.StatusOK || v.Reason != contract.ReasonOK {
		t.Fatalf("allow: %+v", v)
	}
	if len(v.Set) != len(contract.IdentityHeaders()) {
		t.Fatalf("set %v, want the %d identity headers", v.Set, len(contract.IdentityHeaders()))
	}
	for i, s := range v.Set {
		if s.Name != contract.IdentityHeaders()[i] {
			t.Errorf("set %d: %v, want %s", i, s, contract.IdentityHeaders()[i])
		}
	}
	for _, name := range []string{"authorization", "x-api-key", "dpop", "x-keybroker-reason", "x-keybroker-admin", "x-keybroker-key-id", "x_keybroker_tenant"} {
		if !slices.Contains(v.Remove, name) {
			t.Errorf("%s not in Remove %v", name, v.Remove)
		}
	}
	for _, r := range v.Remove {
		if r == "x-keybroker-subject" || r == "x-keybroker-jti" || r == "host" || strings.HasPrefix(r, ":") {
			t.Errorf("%s removed: it would undo the identity or break the request (%v)", r, v.Remove)
		}
	}
	up := applied(sent, v)
	want := map[string]string{"X-Keybroker-Subject": "agent", "X-Keybroker-Jti": "jti-any-read1h0m0s", "X-Keybroker-Scopes": "any read", "Accept": "a, b", "Host": "api.example"}
	for k, w := range want {
		if up.Get(k) != w {
			t.Errorf("upstream %s = %q, want %q (%v)", k, up.Get(k), w, up)
		}
	}
	for _, k := range []string{"Authorization", "X-Keybroker-Reason", "X-Keybroker-Admin", "X-Keybroker-Key-Id", "X_Keybroker_Tenant"} {
		if up.Get(k) != "" {
			t.Errorf("upstream got %s", k)
		}
	}
	if len(v.Response) != 0 {
		t.Errorf("not metered, yet response headers %v", v.Response)
	}
	if n := testutil.ToFloat64(f.sc.m.decisions.WithLabelValues("grpc", "allow", contract.ReasonOK)); n != 1 {
		t.Errorf("grpc allow counted %v times", n)
	}

	// A public route: no caller, every identity header set empty; the
	// client's copies do not survive, and neither does a credential.
	sent = hdr("X-API-Key", "kb_whatever", "X-Keybroker-Role", "admin")
	v = check(t, c, checkRequest("GET", "/public/x", "", sent))
	if !v.Allowed {
		t.Fatalf("public: %+v", v)
	}
	up = applied(sent, v)
	for _, k := range append([]string{"X-Api-Key"}, contract.IdentityHeaders()...) {
		if up.Get(k) != "" {
			t.Errorf("public route: upstream got %s", k)
		}
	}
	for _, s := range v.Set {
		if s.Value != "" {
			t.Errorf("public route: %v, want empty", s)
		}
	}
}

// Every denial is the one the HTTP paths give, byte for byte: status,
// headers and body, here compared with the middleware's answer to the same
// request (the proxy's: the same writer). The request is as the gRPC
// adapter hands it over: a credential header Envoy joined is split again
// (extauthz.TestGRPCRequestReading); how extauthz renders a denial for
// Envoy is extauthz.TestGRPCDenials.
func TestCheckDenials(t *testing.T) {
	f, client := grpcFixture(t, []string{"127.0.0.1"}, func(c *Config) { c.MaxRequestBodyBytes = ptr(int64(100)) })
	c := client("127.0.0.1")
	proxy := f.sc.Middleware(http.NotFoundHandler())
	reader := f.jwt(t, "any read", time.Hour)
	expired := f.jwt(t, "any read", -time.Hour)
	bearer := func(tok string) http.Header { return hdr("Authorization", "Bearer "+tok) }
	for _, tc := range []struct {
		name           string
		method, target string
		source         string
		header         http.Header
		// sameAs is the request as the proxy would get it, when it is
		// not header (a client address the gateway reports).
		sameAs http.Header
		status int
		reason string
	}{
		{name: "no credential", method: "GET", target: "/v1/items/1", status: 401, reason: contract.ReasonNoCredential},
		{name: "insufficient scope", method: "GET", target: "/v1/admin/x", header: bearer(reader), status: 403, reason: contract.ReasonInsufficientScope},
		{name: "encoded letters are decoded", method: "GET", target: "/v1/%61dmin/x", header: bearer(reader), status: 403, reason: contract.ReasonInsufficientScope},
		{name: "dot segments", method: "GET", target: "/v1/../v1/admin", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath},
		{name: "encoded dot segments", method: "GET", target: "/public/%2e%2e/v1/admin/x", status: 400, reason: contract.ReasonNonCanonicalPath},
		{name: "mixed-case encoded dots", method: "GET", target: "/public/%2E%2e/v1/admin/x", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath},
		{name: "encoded slash", method: "GET", target: "/v1/admin%2fx", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath},
		{name: "empty segment", method: "GET", target: "/v1//admin/x", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath},
		{name: "credential in query", method: "GET", target: "/v1/items/1?access_token=x", header: bearer(reader), status: 400, reason: contract.ReasonCredentialInQuery},
		{name: "method override in query", method: "GET", target: "/v1/items/1?_method=DELETE", header: bearer(reader), status: 400, reason: contract.ReasonMethodOverride},
		{name: "405, never the parent route", method: "DELETE", target: "/v1/items/1", header: bearer(reader), status: 405, reason: contract.ReasonMethodNotAllowed},
		{name: "expired", method: "GET", target: "/v1/items/1", header: bearer(expired), status: 401, reason: contract.ReasonExpired},
		{name: "two different credentials", method: "GET", target: "/v1/items/1", header: hdr("Authorization", "Bearer "+reader, "X-API-Key", "kb_other"), status: 400, reason: contract.ReasonBadRequest},
		// Envoy joins a repeated header with ","; the adapter splits a
		// credential header again: the copies are not told apart, and
		// none is picked.
		{name: "repeated authorization", method: "GET", target: "/v1/items/1", header: hdr("Authorization", "Bearer "+reader, "Authorization", "Bearer "+expired), status: 400, reason: contract.ReasonBadRequest},
		{name: "the same authorization twice", method: "GET", target: "/v1/items/1", header: hdr("Authorization", "Bearer "+reader, "Authorization", "Bearer "+reader), status: 400, reason: contract.ReasonBadRequest},
		{name: "repeated x-api-key", method: "GET", target: "/v1/items/1", header: hdr("X-API-Key", "kb_a", "X-API-Key", "kb_b"), status: 400, reason: contract.ReasonBadRequest},
		// The gateway's client address decides CIDR bounds (the token's
		// is 127.0.0.0/8), not a header the client sent.
		{name: "source outside the token's CIDRs", method: "GET", target: "/v1/items/1", source: "10.1.2.3", header: hdr("Authorization", "Bearer "+reader, "X-Forwarded-For", "127.0.0.1"),
			sameAs: bearer(reader), status: 401, reason: contract.ReasonCIDRDenied},
		{name: "no source address", method: "GET", target: "/v1/items/1", source: "-", header: bearer(reader), status: 401, reason: contract.ReasonCIDRDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			source := tc.source
			switch source {
			case "":
				source = "127.0.0.9"
			case "-":
				source = ""
			}
			v := check(t, c, checkRequest(tc.method, tc.target, source, tc.header))
			if v.Allowed || v.Status != tc.status || v.Reason != tc.reason || v.Header.Get(contract.HeaderReason) != tc.reason {
				t.Fatalf("%d %s (header %q), want %d %s", v.Status, v.Reason, v.Header.Get(contract.HeaderReason), tc.status, tc.reason)
			}
			// The middleware's answer to the same request, from a peer
			// in the token's CIDRs unless the case is about the address.
			peer := "127.0.0.9:1"
			if tc.reason == contract.ReasonCIDRDenied {
				peer = "10.1.2.3:1"
			}
			sameAs := tc.header
			if tc.sameAs != nil {
				sameAs = tc.sameAs
			}
			w := send(proxy, tc.method, tc.target, peer, sameAs)
			if w.Code != tc.status || w.Body.String() != v.Body {
				t.Errorf("proxy answers %d %q; Check %d %q", w.Code, w.Body, v.Status, v.Body)
			}
			if len(v.Header) != len(w.Header()) {
				t.Errorf("headers %v; the proxy's %v", v.Header, w.Header())
			}
			for k, vs := range w.Header() {
				if strings.Join(v.Header[k], "\n") != strings.Join(vs, "\n") {
					t.Errorf("%s: %q; the proxy's %q", k, v.Header[k], vs)
				}
			}
			if tc.status == 401 && v.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

// Only gateways in trusted_proxies are answered, even about a valid
// credential (extauthz.TestGRPCRequestChecks asks over gRPC, with one it
// cannot verify).
func TestCheckUntrustedGateway(t *testing.T) {
	f, client := grpcFixture(t, []string{"127.0.0.2"}, nil)
	v := check(t, client("127.0.0.3"), checkRequest("GET", "/v1/items/1", "127.0.0.9", hdr("Authorization", "Bearer "+f.jwt(t, "any read", time.Hour))))
	if v.Allowed || v.Status != http.StatusForbidden || !strings.Contains(v.Body, `"reason":"`+contract.ReasonUntrustedGateway+`"`) {
		t.Fatalf("%d %s %q, want 403 %s", v.Status, v.Reason, v.Body, contract.ReasonUntrustedGateway)
	}
	if n := testutil.ToFloat64(f.sc.m.decisions.WithLabelValues("grpc", "deny", contract.ReasonUntrustedGateway)); n != 1 {
		t.Errorf("untrusted gateway counted %v times", n)
	}
}

// An adapter may hand Check addresses as its transport gives them: an
// IPv4-mapped gateway or client is the IPv4 one (the token's CIDRs and
// trusted_proxies are IPv4, and each is its own client to the flood guard,
// not one ::/64 for all), and a zoned client is no address.
func TestCheckReadsAddressesAsTheHTTPFrontEndsDo(t *testing.T) {
	f, _ := grpcFixture(t, []string{"127.0.0.1"}, nil)
	tok := f.jwt(t, "any read", time.Hour) // bound to 127.0.0.0/8
	for _, tc := range []struct {
		name, gateway, client string
		want                  int
		reason                string
	}{
		{"mapped gateway and client", "::ffff:127.0.0.1", "::ffff:127.0.0.9", http.StatusOK, contract.ReasonOK},
		{"mapped client outside the CIDRs", "127.0.0.1", "::ffff:10.0.0.1", http.StatusUnauthorized, contract.ReasonCIDRDenied},
		{"zoned client", "127.0.0.1", "fe80::1%eth0", http.StatusUnauthorized, contract.ReasonCIDRDenied},
		{"mapped untrusted gateway", "::ffff:127.0.0.2", "127.0.0.9", http.StatusForbidden, contract.ReasonUntrustedGateway},
	} {
		v := check(t, gatewayAt(f.sc, tc.gateway), checkRequest("GET", "/v1/items/1", tc.client, hdr("Authorization", "Bearer "+tok)))
		if v.Status != tc.want || v.Reason != tc.reason {
			t.Errorf("%s: %d %s, want %d %s", tc.name, v.Status, v.Reason, tc.want, tc.reason)
		}
	}
}
