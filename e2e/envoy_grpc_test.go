package e2e

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// grpcAuthzClient connects to the sidecar's ext_authz service from local
// (an address in 127.0.0.0/8), as Envoy would.
func grpcAuthzClient(t *testing.T, addr, local string) authv3.AuthorizationClient {
	t.Helper()
	dial := func(ctx context.Context, a string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		return d.DialContext(ctx, "tcp", a)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// envoyCheck asks what Envoy asks about method path with headers, from a
// client at 127.0.0.1 (inside the roles' bound_cidrs).
func envoyCheck(t *testing.T, c authv3.AuthorizationClient, method, path string, headers map[string]string) *authv3.CheckResponse {
	t.Helper()
	return envoyAsk(t, c, envoyRequest("127.0.0.1", method, path, headers))
}

// envoyRequest is what Envoy reports of method path with headers from a
// client at source (its downstream peer).
func envoyRequest(source, method, path string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{":method": method, ":path": path, ":authority": "svc.example", ":scheme": "http"}
	for k, v := range headers {
		h[strings.ToLower(k)] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: source, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 50000}},
		}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "svc.example", Scheme: "http", Protocol: "HTTP/1.1", Size: -1, Headers: h,
		}},
	}}
}

// envoyAsk sends req and fails on an answer Envoy would not accept.
func envoyAsk(t *testing.T, c authv3.AuthorizationClient, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	hr := req.GetAttributes().GetRequest().GetHttp()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, req)
	if err != nil {
		t.Fatalf("Check %s %s: %v", hr.GetMethod(), hr.GetPath(), err)
	}
	if err := resp.ValidateAll(); err != nil {
		t.Fatalf("Check %s %s answered what Envoy would not accept: %v", hr.GetMethod(), hr.GetPath(), err)
	}
	return resp
}

// okHeaders are the headers an allow sets, by lower-case name.
func okHeaders(resp *authv3.CheckResponse) map[string]string {
	out := map[string]string{}
	for _, o := range resp.GetOkResponse().GetHeaders() {
		out[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	return out
}

// deniedReason is a denial's HTTP status and X-Keybroker-Reason.
func deniedReason(resp *authv3.CheckResponse) (int, string) {
	d := resp.GetDeniedResponse()
	for _, o := range d.GetHeaders() {
		if o.GetHeader().GetKey() == "x-keybroker-reason" {
			return int(d.GetStatus().GetCode()), o.GetHeader().GetValue()
		}
	}
	return int(d.GetStatus().GetCode()), ""
}

// The sidecar's gRPC ext_authz against a real Vault, asked with Envoy's own
// API types: a minted API key and a JWT are allowed with their identity,
// the credential removed; denials are the HTTP paths' own; a metered key's
// checks are charged; a revoked key is denied once the feed says so. With
// an envoy binary on the PATH, a real Envoy runs examples/envoy.yaml
// against it.
func TestEnvoyGRPCExtAuthz(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/llm", map[string]interface{}{
		"scopes": "read", "budget": 1000, "max_cost_per_request": 10, "budget_period": "24h",
	})
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.GRPCListen = "127.0.0.1:0"
		c.TrustedProxies = append(c.TrustedProxies, "127.0.0.1") // Envoy's address
	})
	c := grpcAuthzClient(t, e.grpc, "127.0.0.1")
	minted := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "through envoy"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)

	t.Run("api key", func(t *testing.T) {
		// Mixed spellings too: a CGI-style service behind an Envoy that
		// keeps '_' in names would read them as the identity headers.
		resp := envoyCheck(t, c, "GET", "/read/items?x=1", map[string]string{"X-API-Key": key, "X-Keybroker-Role": "forged", "X-Keybroker-Reason": "forged",
			"X-Keybroker_Actor": "forged", "X_Keybroker-Jti": "forged", "x_keybroker_subject": "forged", "X-Keybroker-Key-Replaced-By": "forged", "X_API-Key": key})
		if resp.GetStatus().GetCode() != int32(codes.OK) {
			t.Fatalf("minted key denied: %v", resp)
		}
		h := okHeaders(resp)
		if h["x-keybroker-key-id"] != keyID || h["x-keybroker-role"] != "svc" || h["x-keybroker-tenant"] != "acme" || h["x-keybroker-subject"] != "key:"+keyID || h["x-keybroker-jti"] != "" {
			t.Fatalf("identity %v", h)
		}
		remove := strings.Join(resp.GetOkResponse().GetHeadersToRemove(), " ")
		for _, want := range []string{"authorization", "x-api-key", "dpop", "x-keybroker-reason",
			"x-keybroker_actor", "x_keybroker-jti", "x_keybroker_subject", "x-keybroker-key-replaced-by", "x_api-key"} {
			if !strings.Contains(" "+remove+" ", " "+want+" ") {
				t.Errorf("%s not removed (%s)", want, remove)
			}
		}
		if strings.Contains(remove, "x-keybroker-role") {
			t.Errorf("x-keybroker-role removed after it is set: %s", remove)
		}
	})
	t.Run("jwt", func(t *testing.T) {
		resp := envoyCheck(t, c, "GET", "/read", map[string]string{"Authorization": "Bearer " + jwt})
		if resp.GetStatus().GetCode() != int32(codes.OK) {
			t.Fatalf("JWT denied: %v", resp)
		}
		if h := okHeaders(resp); h["x-keybroker-jti"] == "" || h["x-keybroker-role"] != "svc" || h["x-keybroker-key-id"] != "" {
			t.Fatalf("identity %v", h)
		}
		// The raw header list (encode_raw_headers) reads as the joined
		// map does; its pseudo-headers are not the request's path.
		raw := envoyRequest("127.0.0.1", "GET", "/read", nil)
		raw.Attributes.Request.Http.Headers = nil
		raw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":path", RawValue: []byte("/public")}, {Key: "authorization", RawValue: []byte("Bearer " + jwt)},
		}}
		resp = envoyAsk(t, c, raw)
		if resp.GetStatus().GetCode() != int32(codes.OK) {
			t.Fatalf("JWT in the raw header list denied: %v", resp)
		}
		if h := okHeaders(resp); h["x-keybroker-jti"] == "" || h["x-keybroker-role"] != "svc" {
			t.Fatalf("identity from the raw header list %v", h)
		}
		// Envoy's source address decides the role's bound_cidrs
		// (127.0.0.0/8), not a header the client sent.
		resp = envoyAsk(t, c, envoyRequest("10.1.2.3", "GET", "/read", map[string]string{"Authorization": "Bearer " + jwt, "X-Forwarded-For": "127.0.0.1"}))
		if status, reason := deniedReason(resp); status != 401 || reason != "cidr_denied" || resp.GetStatus().GetCode() != int32(codes.Unauthenticated) {
			t.Fatalf("from outside the role's CIDRs: %d %q (%v)", status, reason, resp.GetStatus())
		}
	})
	t.Run("denials", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path string
			headers            map[string]string
			status             int
			reason             string
		}{
			{"no credential", "GET", "/read", nil, 401, "no_credential"},
			{"scope", "POST", "/write", map[string]string{"X-API-Key": key}, 403, "insufficient_scope"},
			{"no route", "GET", "/elsewhere", map[string]string{"X-API-Key": key}, 403, "no_route"},
			{"encoded path decoded", "GET", "/read/%61dmin/x", map[string]string{"X-API-Key": key}, 403, "insufficient_scope"},
			{"dot segments", "GET", "/public/../read/admin", nil, 400, "non_canonical_path"},
			{"repeated credential, joined", "GET", "/read", map[string]string{"Authorization": "Bearer " + key + ",Bearer " + jwt}, 400, "bad_request"},
		} {
			resp := envoyCheck(t, c, tc.method, tc.path, tc.headers)
			status, reason := deniedReason(resp)
			if resp.GetStatus().GetCode() == int32(codes.OK) || status != tc.status || reason != tc.reason {
				t.Errorf("%s: %d %q, want %d %q", tc.name, status, reason, tc.status, tc.reason)
				continue
			}
			if tc.reason == "bad_request" {
				continue // the proxy gets one header, not two joined
			}
			// Byte for byte what the proxy answers.
			r := call(t, e.proxy, tc.method, tc.path, tc.headers, "")
			if r.status != status || r.body != resp.GetDeniedResponse().GetBody() {
				t.Errorf("%s: proxy %d %q, gRPC %d %q", tc.name, r.status, r.body, status, resp.GetDeniedResponse().GetBody())
			}
		}
	})
	t.Run("untrusted peer", func(t *testing.T) {
		resp := envoyCheck(t, grpcAuthzClient(t, e.grpc, "127.0.0.3"), "GET", "/read", map[string]string{"X-API-Key": key})
		if status, reason := deniedReason(resp); status != 403 || reason != "untrusted_gateway" {
			t.Fatalf("from an untrusted peer: %d %q", status, reason)
		}
	})
	t.Run("metered", func(t *testing.T) {
		m := write(t, root, "keybroker/keys/llm", map[string]interface{}{"name": "metered"})
		for i := 0; i < 3; i++ {
			resp := envoyCheck(t, c, "GET", "/read", map[string]string{"X-API-Key": m.Data["key"].(string)})
			add := resp.GetOkResponse().GetResponseHeadersToAdd()
			if resp.GetStatus().GetCode() != int32(codes.OK) || len(add) != 1 || add[0].GetHeader().GetKey() != "x-budget-remaining" {
				t.Fatalf("metered check %d: %v", i, resp)
			}
			if n, err := strconv.Atoi(add[0].GetHeader().GetValue()); err != nil || n < 0 || n > 1000 {
				t.Fatalf("X-Budget-Remaining %q", add[0].GetHeader().GetValue())
			}
		}
		// Each check is charged the route's cost (1), reported within
		// budget_report_interval.
		eventually(t, 10*time.Second, "the checks were not charged", func() bool {
			used, _, _ := spend(t, root, m.Data["key_id"].(string))
			return used == 3
		})
	})
	t.Run("envoy", func(t *testing.T) { realEnvoy(t, e, key, keyID, jwt) })
	t.Run("revoked", func(t *testing.T) {
		if err := root.Sys().RevokeWithContext(ctxT(t), minted.LeaseID); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "revoked key still allowed", func() bool {
			_, reason := deniedReason(envoyCheck(t, c, "GET", "/read", map[string]string{"X-API-Key": key}))
			return reason == "revoked"
		})
	})
	if n := metric(t, e.auth, "keybroker_sidecar_decisions_total", `mode="grpc",outcome="allow",reason="ok"`); n < 5 {
		t.Errorf("gRPC allows counted %v times", n)
	}
}

// realEnvoy runs Envoy with the shipped examples/envoy.yaml, only its ports
// changed, in front of e's upstream and asking e's sidecar over gRPC.
func realEnvoy(t *testing.T, e *sidecarEnv, key, keyID, jwt string) {
	envoy := findBinary("envoy")
	if envoy == "" {
		t.Skip("envoy not installed (not packaged for Debian; put an envoy binary on PATH to run this)")
	}
	example := readExample(t, "envoy.yaml")
	upstream, _ := url.Parse(e.upstream.URL)
	_, upPort, _ := net.SplitHostPort(upstream.Host)
	_, grpcPort, _ := net.SplitHostPort(e.grpc)
	port := freePort(t)
	for _, p := range []string{"port_value: 8080", "port_value: 9000", "port_value: 9001"} {
		if strings.Count(example, p) != 1 {
			t.Fatalf("examples/envoy.yaml no longer has the one %q this test rewrites", p)
		}
	}
	conf := strings.NewReplacer(
		"port_value: 8080", "port_value: "+port,
		"port_value: 9000", "port_value: "+upPort,
		"port_value: 9001", "port_value: "+grpcPort,
	).Replace(example)
	dir := t.TempDir()
	confPath := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	base := "http://127.0.0.1:" + port
	startProcess(t, "envoy", dir, nil, base, "/public", nil,
		envoy, "-c", confPath, "--disable-hot-restart", "--log-level", "warn")

	forged := map[string]string{"X-API-Key": key, "X-Keybroker-Role": "forged", "X-Keybroker-Jti": "forged", "X-Keybroker-Key-Id": "forged",
		"X-Keybroker-Tenant": "evil", "X-Keybroker-Reason": "forged", "X-Keybroker-Scopes": "admin", "X_Keybroker_Role": "forged"}
	r := call(t, base, "GET", "/read/items", forged, "")
	if r.status != http.StatusOK || r.body != "upstream ok" {
		t.Fatalf("allowed request through Envoy: %d %s", r.status, r.body)
	}
	seen := e.seen()
	if seen.Get("X-Keybroker-Role") != "svc" || seen.Get("X-Keybroker-Key-Id") != keyID || seen.Get("X-Keybroker-Tenant") != "acme" ||
		seen.Get("X-Keybroker-Scopes") != "read" || seen.Get("X-Keybroker-Jti") != "" {
		t.Fatalf("upstream behind Envoy saw %v", seen)
	}
	for _, h := range []string{"X-Api-Key", "Authorization", "X-Keybroker-Reason", "X_keybroker_role"} {
		if _, ok := seen[h]; ok {
			t.Fatalf("%s reached the service behind Envoy", h)
		}
	}
	if r := call(t, base, "GET", "/read", bearer(jwt), ""); r.status != 200 || e.seen().Get("X-Keybroker-Jti") == "" || e.seen().Get("Authorization") != "" {
		t.Fatalf("JWT through Envoy: %d, upstream saw jti %q", r.status, e.seen().Get("X-Keybroker-Jti"))
	}
	// Denials reach the client as the sidecar wrote them.
	r = call(t, base, "GET", "/read", nil, "")
	direct := call(t, e.proxy, "GET", "/read", nil, "")
	if r.status != 401 || r.header.Get("X-Keybroker-Reason") != "no_credential" || r.header.Get("WWW-Authenticate") != direct.header.Get("WWW-Authenticate") || r.body != direct.body {
		t.Fatalf("no credential through Envoy: %d %v %s; the proxy: %v %s", r.status, r.header, r.body, direct.header, direct.body)
	}
	if r := call(t, base, "POST", "/write", map[string]string{"X-API-Key": key}, ""); r.status != 403 || r.header.Get("X-Keybroker-Reason") != "insufficient_scope" {
		t.Fatalf("read key writing through Envoy: %d %q", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	// Paths as Envoy reports them: refused, or (if Envoy normalises them
	// first) decided as the path Envoy forwards; never let through.
	for _, target := range []string{"/public/../read/admin", "/public/%2e%2e/read/admin", "/read/admin%2fx"} {
		if r := rawGet(t, base, "GET", target, map[string]string{"X-API-Key": key}); r.status == 200 {
			t.Fatalf("%s through Envoy: 200", target)
		}
	}
}
