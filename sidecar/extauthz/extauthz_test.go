package extauthz

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar"
)

// checkRequest is what Envoy sends for a request from source (its
// downstream peer), with headers lower-cased and repeated ones joined as
// Envoy joins them.
func checkRequest(method, path, source string, h http.Header) *authv3.CheckRequest {
	joined := map[string]string{":method": method, ":path": path, ":authority": "api.example", ":scheme": "http"}
	for k, vs := range h {
		joined[strings.ToLower(k)] = strings.Join(vs, ",")
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "api.example", Scheme: "http", Protocol: "HTTP/1.1", Headers: joined,
		}},
	}}
	if source != "" {
		req.Attributes.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: source, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}},
		}}}
	}
	return req
}

func check(t *testing.T, c authv3.AuthorizationClient, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	// What Envoy would refuse to apply (a header name it cannot take, a
	// status of 0) fails here.
	if err := resp.ValidateAll(); err != nil {
		t.Fatalf("Check answered what Envoy would not accept: %v", err)
	}
	return resp
}

// envoyApply does to the request's headers what Envoy's ext_authz filter
// does with an OK answer: sets and appends first, then removes.
func envoyApply(h http.Header, ok *authv3.OkHttpResponse) http.Header {
	out := h.Clone()
	for _, o := range ok.GetHeaders() {
		k, v := http.CanonicalHeaderKey(o.GetHeader().GetKey()), o.GetHeader().GetValue()
		switch o.GetAppendAction() {
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			out[k] = []string{v}
		default:
			out[k] = append(out[k], v)
		}
	}
	for _, k := range ok.GetHeadersToRemove() {
		out.Del(k)
	}
	return out
}

// An allow as Envoy applies it: every identity header the Verdict sets,
// in its order, set with overwrite (empty ones kept), then every header it
// removes removed, so that the upstream sees the identity only as the
// sidecar gave it. Which headers an allow sets and removes is the
// sidecar's (sidecar.TestCheckAllow); here the stub decides.
func TestGRPCAllow(t *testing.T) {
	identity := map[string]string{"X-Keybroker-Subject": "agent", "X-Keybroker-Jti": "jti-any-read1h0m0s", "X-Keybroker-Scopes": "any read"}
	stub := &stubChecker{verdict: sidecar.Verdict{Allowed: true, Status: http.StatusOK, Reason: contract.ReasonOK,
		Remove: []string{"authorization", "x-api-key", "dpop", "x-keybroker-admin", "x-keybroker-key-id", "x-keybroker-reason", "x_keybroker_tenant"}}}
	for _, name := range contract.IdentityHeaders() {
		stub.verdict.Set = append(stub.verdict.Set, sidecar.Field{Name: name, Value: identity[name]})
	}
	c := serve(t, stub)("127.0.0.1")
	sent := hdr("Authorization", "Bearer tok", "X-Keybroker-Subject", "forged", "X-Keybroker-Key-Id", "forged",
		"X-Keybroker-Reason", "forged", "X-Keybroker-Admin", "true", "X_Keybroker_Tenant", "evil", "Accept", "a, b", "Host", "api.example")
	resp := check(t, c, checkRequest("GET", "/v1/items/1?x=1", "127.0.0.9", sent))
	if resp.GetStatus().GetCode() != int32(codes.OK) || resp.GetOkResponse() == nil {
		t.Fatalf("allow: %v", resp)
	}
	ok := resp.GetOkResponse()
	if len(ok.GetHeaders()) != len(contract.IdentityHeaders()) {
		t.Fatalf("headers %v, want the %d identity headers", ok.GetHeaders(), len(contract.IdentityHeaders()))
	}
	for i, o := range ok.GetHeaders() {
		if o.GetHeader().GetKey() != strings.ToLower(contract.IdentityHeaders()[i]) || o.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD || o.GetAppend() != nil {
			t.Errorf("header %d: %v, want %s with OVERWRITE_IF_EXISTS_OR_ADD", i, o, contract.IdentityHeaders()[i])
		}
		if !o.GetKeepEmptyValue() {
			t.Errorf("header %d: %v, an empty value would not be kept", i, o)
		}
	}
	if strings.Join(ok.GetHeadersToRemove(), " ") != strings.Join(stub.verdict.Remove, " ") {
		t.Errorf("headers_to_remove %v, want the Verdict's %v", ok.GetHeadersToRemove(), stub.verdict.Remove)
	}
	up := envoyApply(sent, ok)
	want := map[string]string{"X-Keybroker-Subject": "agent", "X-Keybroker-Jti": "jti-any-read1h0m0s", "X-Keybroker-Scopes": "any read", "Accept": "a, b", "Host": "api.example"}
	for k, v := range want {
		if up.Get(k) != v {
			t.Errorf("upstream %s = %q, want %q (%v)", k, up.Get(k), v, up)
		}
	}
	for _, k := range []string{"Authorization", "X-Keybroker-Reason", "X-Keybroker-Admin", "X-Keybroker-Key-Id", "X_Keybroker_Tenant"} {
		if up.Get(k) != "" {
			t.Errorf("upstream got %s", k)
		}
	}
	if len(ok.GetResponseHeadersToAdd()) != 0 {
		t.Errorf("not metered, yet response headers %v", ok.GetResponseHeadersToAdd())
	}

	// A public route, decided by a real sidecar: no caller, every
	// identity header set empty; the client's copies do not survive, and
	// neither does a credential.
	sc := newSidecar(t, func(c *sidecar.Config) { c.TrustedProxies, c.GRPCListen = []string{"127.0.0.1"}, "127.0.0.1:0" })
	sent = hdr("X-API-Key", "kb_whatever", "X-Keybroker-Role", "admin")
	resp = check(t, serve(t, sc)("127.0.0.1"), checkRequest("GET", "/public/x", "", sent))
	if resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("public: %v", resp)
	}
	up = envoyApply(sent, resp.GetOkResponse())
	for _, k := range append([]string{"X-Api-Key"}, contract.IdentityHeaders()...) {
		if up.Get(k) != "" {
			t.Errorf("public route: upstream got %s", k)
		}
	}
	for _, o := range resp.GetOkResponse().GetHeaders() {
		if o.GetHeader().GetValue() != "" || !o.GetKeepEmptyValue() {
			t.Errorf("public route: %v, want empty and kept", o)
		}
	}
	if n := decisions(t, sc, "grpc", "allow", contract.ReasonOK); n != 1 {
		t.Errorf("grpc allow counted %v times", n)
	}
}

// How the adapter reads what Envoy reports into the CheckRequest the
// sidecar decides: the gateway is the gRPC peer; the client's address is
// Envoy's source address, never a header; headers are canonical, without
// pseudo-headers, a credential header Envoy joined split again, and the
// raw header list (encode_raw_headers) reads as the joined map does.
func TestGRPCRequestReading(t *testing.T) {
	stub := &stubChecker{verdict: sidecar.Verdict{Status: http.StatusForbidden, Reason: "stub", Body: "{}\n"}}
	client := serve(t, stub)
	c := client("127.0.0.1")
	ask := func(req *authv3.CheckRequest) sidecar.CheckRequest {
		t.Helper()
		check(t, c, req)
		return stub.last(t)
	}

	sent := hdr("Authorization", "Bearer tok", "X_Keybroker_Tenant", "evil", "Accept", "a, b", "Host", "api.example")
	got := ask(checkRequest("GET", "/v1/items/1?x=1", "127.0.0.9", sent))
	if got.Method != "GET" || got.Target != "/v1/items/1?x=1" || got.Unreadable || got.BodySize != 0 {
		t.Errorf("read %+v", got)
	}
	if got.Gateway.String() != "127.0.0.1" || got.ClientIP.String() != "127.0.0.9" {
		t.Errorf("gateway %v, client %v; want 127.0.0.1, 127.0.0.9", got.Gateway, got.ClientIP)
	}
	wantHeader := http.Header{"Authorization": {"Bearer tok"}, "X_keybroker_tenant": {"evil"}, "Accept": {"a, b"}, "Host": {"api.example"}}
	if fmt.Sprint(got.Header) != fmt.Sprint(wantHeader) {
		t.Errorf("header %v, want %v (no pseudo-headers)", got.Header, wantHeader)
	}
	if got := ask(checkRequest("GET", "/", "", nil)); got.ClientIP.IsValid() {
		t.Errorf("no source address read as %v", got.ClientIP)
	}
	check(t, client("127.0.0.3"), checkRequest("GET", "/public", "127.0.0.9", nil))
	if got := stub.last(t); got.Gateway.String() != "127.0.0.3" {
		t.Errorf("gateway %v, want the gRPC peer 127.0.0.3", got.Gateway)
	}

	// Envoy joins a repeated header with ",": a credential header is
	// split again, so the sidecar refuses it as repeated and never picks
	// a copy; any other header is left as Envoy sent it.
	for name, joined := range map[string]string{"Authorization": "Bearer a,Bearer b", "X-Api-Key": "kb_a,kb_b", "Dpop": "p1,p2"} {
		got := ask(checkRequest("GET", "/v1/items/1", "127.0.0.9", http.Header{name: {joined}}))
		if len(got.Header[name]) != 2 || got.Header[name][0]+","+got.Header[name][1] != joined {
			t.Errorf("%s %q read as %q, want its two copies", name, joined, got.Header[name])
		}
	}
	// The client's address is Envoy's source address, not a header the
	// client sent.
	got = ask(checkRequest("GET", "/v1/items/1", "10.1.2.3", hdr("X-Forwarded-For", "127.0.0.1")))
	if got.ClientIP.String() != "10.1.2.3" {
		t.Errorf("client address %v, want the source address 10.1.2.3", got.ClientIP)
	}

	// The raw header list reads the same as the joined map.
	raw := checkRequest("GET", "/v1/items/1", "127.0.0.9", nil)
	raw.Attributes.Request.Http.Headers = nil
	raw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":path", RawValue: []byte("/public")}, {Key: "authorization", RawValue: []byte("Bearer tok")},
	}}
	joined := ask(checkRequest("GET", "/v1/items/1", "127.0.0.9", hdr("Authorization", "Bearer tok")))
	if got := ask(raw); got.Unreadable || got.Target != "/v1/items/1" || fmt.Sprint(got.Header) != fmt.Sprint(joined.Header) {
		t.Errorf("raw headers read as %+v, the joined map as %v", got, joined.Header)
	}
}

// A denial as Envoy sends it to the client: the Verdict's status, headers
// (set with overwrite, a repeated one appended, sorted by name) and body,
// the gRPC code only saying what kind of denial it is.
func TestGRPCDenialAnswer(t *testing.T) {
	stub := &stubChecker{}
	c := serve(t, stub)("127.0.0.1")
	for _, tc := range []struct {
		status int
		code   codes.Code
	}{
		{401, codes.Unauthenticated}, {403, codes.PermissionDenied}, {400, codes.PermissionDenied}, {405, codes.PermissionDenied}, {503, codes.PermissionDenied},
	} {
		stub.verdict = sidecar.Verdict{Status: tc.status, Reason: "why", Body: `{"reason":"why"}` + "\n", Header: http.Header{
			"X-Keybroker-Reason": {"why"}, "Content-Type": {"application/json"}, "Www-Authenticate": {`Bearer error="a"`, `DPoP error="b"`},
		}}
		resp := check(t, c, checkRequest("GET", "/v1/items/1", "127.0.0.9", nil))
		d := resp.GetDeniedResponse()
		if d == nil || codes.Code(resp.GetStatus().GetCode()) != tc.code || resp.GetStatus().GetMessage() != "why" || int(d.GetStatus().GetCode()) != tc.status || d.GetBody() != stub.verdict.Body {
			t.Fatalf("%v, want %d with gRPC %s and the Verdict's body", resp, tc.status, tc.code)
		}
		var names []string
		got := http.Header{}
		for i, o := range d.GetHeaders() {
			k := o.GetHeader().GetKey()
			want := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			if len(got[http.CanonicalHeaderKey(k)]) > 0 {
				want = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			} else {
				names = append(names, k)
			}
			if o.GetAppendAction() != want {
				t.Errorf("denial header %d %v: %v, want %v", i, o, o.GetAppendAction(), want)
			}
			got.Add(k, o.GetHeader().GetValue())
		}
		if fmt.Sprint(got) != fmt.Sprint(stub.verdict.Header) || !slices.IsSorted(names) {
			t.Errorf("headers %v (in order %v), want the Verdict's %v, sorted", got, names, stub.verdict.Header)
		}
	}
}

// Denials a real sidecar decides before it verifies a credential, over
// gRPC: each is the one the HTTP paths give, byte for byte (status,
// headers, body), here compared with the middleware's answer to the same
// request. The tokens are never verified (the sidecar is not started):
// sidecar.TestCheckDenials has these cases with valid tokens, and those
// that need one (scope, expiry, CIDR bounds).
func TestGRPCDenials(t *testing.T) {
	sc := newSidecar(t, func(c *sidecar.Config) {
		c.TrustedProxies, c.GRPCListen = []string{"127.0.0.1"}, "127.0.0.1:0"
		c.MaxRequestBodyBytes = ptr(int64(100))
	})
	c := serve(t, sc)("127.0.0.1")
	// The middleware answers a denial exactly as the reverse proxy does.
	proxy := sc.Middleware(http.NotFoundHandler())
	const reader, expired = "eyJ.reader.sig", "eyJ.expired.sig"
	bearer := func(tok string) http.Header { return hdr("Authorization", "Bearer "+tok) }
	for _, tc := range []struct {
		name           string
		method, target string
		header         http.Header
		// sameAs is the request as the proxy would get it, when it is
		// not header (repeated headers the gRPC request has joined).
		sameAs http.Header
		status int
		reason string
		code   codes.Code
	}{
		{name: "no credential", method: "GET", target: "/v1/items/1", status: 401, reason: contract.ReasonNoCredential, code: codes.Unauthenticated},
		{name: "dot segments", method: "GET", target: "/v1/../v1/admin", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath, code: codes.PermissionDenied},
		{name: "encoded dot segments", method: "GET", target: "/public/%2e%2e/v1/admin/x", status: 400, reason: contract.ReasonNonCanonicalPath, code: codes.PermissionDenied},
		{name: "mixed-case encoded dots", method: "GET", target: "/public/%2E%2e/v1/admin/x", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath, code: codes.PermissionDenied},
		{name: "encoded slash", method: "GET", target: "/v1/admin%2fx", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath, code: codes.PermissionDenied},
		{name: "empty segment", method: "GET", target: "/v1//admin/x", header: bearer(reader), status: 400, reason: contract.ReasonNonCanonicalPath, code: codes.PermissionDenied},
		{name: "credential in query", method: "GET", target: "/v1/items/1?access_token=x", header: bearer(reader), status: 400, reason: contract.ReasonCredentialInQuery, code: codes.PermissionDenied},
		{name: "method override in query", method: "GET", target: "/v1/items/1?_method=DELETE", header: bearer(reader), status: 400, reason: contract.ReasonMethodOverride, code: codes.PermissionDenied},
		{name: "405, never the parent route", method: "DELETE", target: "/v1/items/1", header: bearer(reader), status: 405, reason: contract.ReasonMethodNotAllowed, code: codes.PermissionDenied},
		{name: "two different credentials", method: "GET", target: "/v1/items/1", header: hdr("Authorization", "Bearer "+reader, "X-API-Key", "kb_other"), status: 400, reason: contract.ReasonBadRequest, code: codes.PermissionDenied},
		// Envoy joins a repeated header with ",": the copies are not
		// told apart, and none is picked.
		{name: "repeated authorization, joined", method: "GET", target: "/v1/items/1", header: http.Header{"Authorization": {"Bearer " + reader + ",Bearer " + expired}},
			sameAs: hdr("Authorization", "Bearer "+reader, "Authorization", "Bearer "+expired), status: 400, reason: contract.ReasonBadRequest, code: codes.PermissionDenied},
		{name: "the same authorization twice, joined", method: "GET", target: "/v1/items/1", header: http.Header{"Authorization": {"Bearer " + reader + ",Bearer " + reader}},
			sameAs: hdr("Authorization", "Bearer "+reader, "Authorization", "Bearer "+reader), status: 400, reason: contract.ReasonBadRequest, code: codes.PermissionDenied},
		{name: "repeated x-api-key, joined", method: "GET", target: "/v1/items/1", header: http.Header{"X-Api-Key": {"kb_a,kb_b"}},
			sameAs: hdr("X-API-Key", "kb_a", "X-API-Key", "kb_b"), status: 400, reason: contract.ReasonBadRequest, code: codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := check(t, c, checkRequest(tc.method, tc.target, "127.0.0.9", tc.header))
			denied := resp.GetDeniedResponse()
			if denied == nil || codes.Code(resp.GetStatus().GetCode()) != tc.code || int(denied.GetStatus().GetCode()) != tc.status {
				t.Fatalf("%v, want %d %s with gRPC %s", resp, tc.status, tc.reason, tc.code)
			}
			got := http.Header{}
			for _, o := range denied.GetHeaders() {
				if o.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					t.Errorf("denial header %v is not set with overwrite", o)
				}
				got.Add(o.GetHeader().GetKey(), o.GetHeader().GetValue())
			}
			if got.Get(contract.HeaderReason) != tc.reason {
				t.Errorf("reason %q, want %q", got.Get(contract.HeaderReason), tc.reason)
			}
			sameAs := tc.header
			if tc.sameAs != nil {
				sameAs = tc.sameAs
			}
			w := send(proxy, tc.method, tc.target, "127.0.0.9:1", sameAs)
			if w.Code != tc.status || w.Body.String() != denied.GetBody() {
				t.Errorf("proxy answers %d %q; gRPC %d %q", w.Code, w.Body, denied.GetStatus().GetCode(), denied.GetBody())
			}
			if len(got) != len(w.Header()) {
				t.Errorf("headers %v; the proxy's %v", got, w.Header())
			}
			for k, vs := range w.Header() {
				if strings.Join(got[k], "\n") != strings.Join(vs, "\n") {
					t.Errorf("%s: %q; the proxy's %q", k, got[k], vs)
				}
			}
			if tc.status == 401 && got.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

// What only the gRPC path can get wrong: who asks, and what it reports;
// a real sidecar decides, before it looks at a credential.
func TestGRPCRequestChecks(t *testing.T) {
	sc := newSidecar(t, func(c *sidecar.Config) {
		c.TrustedProxies, c.GRPCListen = []string{"127.0.0.2"}, "127.0.0.1:0"
		c.MaxRequestBodyBytes = ptr(int64(100))
	})
	client := serve(t, sc)
	// Never verified: sidecar.TestCheckUntrustedGateway refuses a valid
	// one from an untrusted gateway.
	const reader = "eyJ.reader.sig"
	trusted := client("127.0.0.2")
	noHTTP := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}
	bothLists := checkRequest("GET", "/public", "127.0.0.9", nil)
	bothLists.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "authorization", RawValue: []byte("Bearer " + reader)}}}
	repeatedRaw := checkRequest("GET", "/v1/items/1", "127.0.0.9", nil)
	repeatedRaw.Attributes.Request.Http.Headers = nil
	repeatedRaw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: "authorization", RawValue: []byte("Bearer " + reader)}, {Key: "authorization", RawValue: []byte("Bearer " + reader)},
	}}
	valueAndRaw := checkRequest("GET", "/v1/items/1", "127.0.0.9", nil)
	valueAndRaw.Attributes.Request.Http.Headers = nil
	valueAndRaw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: "authorization", Value: "Bearer " + reader, RawValue: []byte("Bearer x")},
	}}
	bigSize := checkRequest("POST", "/public", "127.0.0.9", nil)
	bigSize.Attributes.Request.Http.Size = 101
	for _, tc := range []struct {
		name   string
		client authv3.AuthorizationClient
		req    *authv3.CheckRequest
		status int
		reason string
	}{
		{"untrusted peer", client("127.0.0.1"), checkRequest("GET", "/public", "127.0.0.9", nil), 403, contract.ReasonUntrustedGateway},
		{"untrusted peer, even with a credential", client("127.0.0.3"), checkRequest("GET", "/v1/items/1", "127.0.0.9", hdr("Authorization", "Bearer "+reader)), 403, contract.ReasonUntrustedGateway},
		{"no attributes", trusted, &authv3.CheckRequest{}, 400, contract.ReasonBadRequest},
		{"no http attributes", trusted, noHTTP, 400, contract.ReasonBadRequest},
		{"no method", trusted, checkRequest("", "/public", "127.0.0.9", nil), 400, contract.ReasonBadRequest},
		{"no path", trusted, checkRequest("GET", "", "127.0.0.9", nil), 400, contract.ReasonBadRequest},
		{"headers and header_map both", trusted, bothLists, 400, contract.ReasonBadRequest},
		{"repeated authorization in header_map", trusted, repeatedRaw, 400, contract.ReasonBadRequest},
		{"value and raw_value both", trusted, valueAndRaw, 400, contract.ReasonBadRequest},
		{"body over max_request_body_bytes (size)", trusted, bigSize, 413, contract.ReasonBodyTooLarge},
		{"body over max_request_body_bytes (content-length)", trusted, checkRequest("POST", "/public", "127.0.0.9", hdr("Content-Length", "101")), 413, contract.ReasonBodyTooLarge},
		{"content-length not a number", trusted, checkRequest("POST", "/public", "127.0.0.9", hdr("Content-Length", "1e3")), 400, contract.ReasonBadRequest},
		{"absolute-form target still canonicalised", trusted, checkRequest("GET", "http://evil.example/public/../v1/admin", "127.0.0.9", nil), 400, contract.ReasonNonCanonicalPath},
		{"asterisk-form", trusted, checkRequest("OPTIONS", "*", "127.0.0.9", hdr("Authorization", "Bearer "+reader)), 400, contract.ReasonNonCanonicalPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := check(t, tc.client, tc.req)
			d := resp.GetDeniedResponse()
			if d == nil || resp.GetStatus().GetCode() == int32(codes.OK) || int(d.GetStatus().GetCode()) != tc.status || !strings.Contains(d.GetBody(), `"reason":"`+tc.reason+`"`) {
				t.Fatalf("%v, want %d %s", resp, tc.status, tc.reason)
			}
		})
	}
	if n := decisions(t, sc, "grpc", "deny", contract.ReasonUntrustedGateway); n != 2 {
		t.Errorf("untrusted peers counted %v times, want 2", n)
	}
	if n := decisions(t, sc, "grpc", "deny", contract.ReasonBadRequest); n != 8 {
		t.Errorf("bad requests counted %v times, want 8", n)
	}
	// Within the limit, the same requests pass.
	if resp := check(t, trusted, checkRequest("POST", "/public", "127.0.0.9", hdr("Content-Length", "100"))); resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("body at the limit: %v", resp)
	}
}

// A metered allow tells the client what is left (as the proxy's response
// does), never the service; a value that cannot be a header is refused
// rather than passed on. What the sidecar answers is
// sidecar.TestCheckAllowAnswer; this is Envoy's rendering of it.
func TestGRPCAllowAnswer(t *testing.T) {
	v := sidecar.Verdict{Allowed: true, Status: http.StatusOK, Reason: contract.ReasonOK, Response: []sidecar.Field{{Name: "X-Budget-Remaining", Value: "7"}}}
	for _, name := range contract.IdentityHeaders() {
		v.Set = append(v.Set, sidecar.Field{Name: name})
	}
	v.Set[0].Value = "key:kid"
	ok, err := okResponse(&v)
	if err != nil {
		t.Fatal(err)
	}
	if len(ok.GetResponseHeadersToAdd()) != 1 || ok.GetResponseHeadersToAdd()[0].GetHeader().GetKey() != "x-budget-remaining" || ok.GetResponseHeadersToAdd()[0].GetHeader().GetValue() == "" {
		t.Fatalf("response headers %v, want x-budget-remaining", ok.GetResponseHeadersToAdd())
	}
	for _, o := range ok.GetHeaders() {
		if strings.EqualFold(o.GetHeader().GetKey(), "X-Budget-Remaining") {
			t.Fatalf("X-Budget-Remaining goes to the service: %v", o)
		}
	}
	v.Set[0].Value = "bad\nvalue"
	if _, err := okResponse(&v); err == nil || strings.Contains(err.Error(), "bad") {
		t.Fatalf("a control character in an identity value: %v", err)
	}
}

// examples/envoy.yaml is an Envoy v3 bootstrap that Envoy's own API types
// accept, and it asks the sidecar the way this service answers: ext_authz
// over gRPC (HTTP/2) to 127.0.0.1:9001, failing closed, no body.
func TestExampleEnvoyConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]interface{}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var boot bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &boot); err != nil {
		t.Fatalf("not an Envoy v3 bootstrap: %v", err)
	}
	if err := boot.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	unpack := func(a *anypb.Any, m proto.Message) {
		t.Helper()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				t.Fatal(err)
			}
		}
	}
	listeners := boot.GetStaticResources().GetListeners()
	if len(listeners) != 1 || listeners[0].GetAddress().GetSocketAddress().GetPortValue() != 8080 {
		t.Fatalf("listeners %v", listeners)
	}
	var hcm hcmv3.HttpConnectionManager
	unpack(listeners[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig(), &hcm)
	filters := hcm.GetHttpFilters()
	if len(filters) != 2 || filters[0].GetName() != "envoy.filters.http.ext_authz" || filters[1].GetName() != "envoy.filters.http.router" {
		t.Fatalf("http filters %v: ext_authz must come before the router", filters)
	}
	var ea extauthzv3.ExtAuthz
	unpack(filters[0].GetTypedConfig(), &ea)
	if hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() == corev3.HttpProtocolOptions_ALLOW {
		t.Fatal("headers with underscores pass: X_Keybroker_Role would reach CGI-style services as X-Keybroker-Role")
	}
	if ea.GetTransportApiVersion() != corev3.ApiVersion_V3 || ea.GetFailureModeAllow() || ea.GetWithRequestBody() != nil ||
		ea.GetIncludePeerCertificate() || ea.GetAllowedHeaders() != nil || ea.GetHttpService() != nil {
		t.Fatalf("ext_authz %v", &ea)
	}
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if r.GetRoute().GetPrefixRewrite() != "" || r.GetRoute().GetRegexRewrite() != nil {
				t.Fatalf("route %v rewrites the path after the check", r)
			}
		}
	}
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range boot.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	sidecar := clusters[ea.GetGrpcService().GetEnvoyGrpc().GetClusterName()]
	if sidecar == nil {
		t.Fatalf("no cluster %q", ea.GetGrpcService().GetEnvoyGrpc().GetClusterName())
	}
	if ep := sidecar.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); ep.GetAddress() != "127.0.0.1" || ep.GetPortValue() != 9001 {
		t.Fatalf("sidecar cluster at %v, want grpc_listen 127.0.0.1:9001", ep)
	}
	var po upstreamhttpv3.HttpProtocolOptions
	unpack(sidecar.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"], &po)
	if po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Fatal("the sidecar cluster does not speak HTTP/2: gRPC needs it")
	}
	if clusters["service"] == nil {
		t.Fatal("no service cluster")
	}
}

// Serve serves ext_authz on the gRPC listener beside the HTTP ones, and
// stops it with them.
func TestServeGRPC(t *testing.T) {
	// Serve starts the sidecar; with no Vault to reach it is not ready,
	// yet it serves, and a public route passes.
	sc := newSidecar(t, func(c *sidecar.Config) { c.TrustedProxies, c.GRPCListen = []string{"127.0.0.1"}, "127.0.0.1:0" })
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	auth, g := listen(), listen()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Serve(ctx, sidecar.Listeners{Auth: auth, Also: []sidecar.Server{New(sc, g)}}) }()
	conn, err := grpc.NewClient(g.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp := check(t, authv3.NewAuthorizationClient(conn), checkRequest("GET", "/public", "127.0.0.9", nil))
	if resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("public through Serve: %v", resp)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not stop")
	}
	if c, err := net.DialTimeout("tcp", g.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("the gRPC listener is still open after Serve returned")
	}
}
