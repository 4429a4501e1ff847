package e2e

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
	"github.com/keybroker/keybroker/sidecar/extauthz"
)

// sidecarEnv is a real Vault with the plugin, an upstream service and a
// sidecar in front of it, logged in with the shipped sidecar policy.
type sidecarEnv struct {
	v        *vaultserver.Server
	proxy    string // http://host:port of the reverse proxy
	auth     string // http://host:port of /verify, /healthz, /metrics
	grpc     string // host:port of the gRPC ext_authz service, when grpc_listen is set
	upstream *httptest.Server

	mu       sync.Mutex
	lastSeen http.Header // headers of the last request the upstream got

	stop func() // stops the sidecar cleanly, as SIGTERM does
}

func (e *sidecarEnv) seen() http.Header {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastSeen
}

func startSidecar(t *testing.T, v *vaultserver.Server, mutate func(c *sidecar.Config)) *sidecarEnv {
	t.Helper()
	return startSidecarAt(t, v, func(c *sidecar.Config, _ string) {
		if mutate != nil {
			mutate(c)
		}
	})
}

// startSidecarAt is startSidecar for a configuration that names the
// proxy's own URL (http://127.0.0.1:port), known before it starts.
func startSidecarAt(t *testing.T, v *vaultserver.Server, mutate func(c *sidecar.Config, proxyURL string)) *sidecarEnv {
	t.Helper()
	e := launchSidecar(t, v, mutate, nil)
	eventually(t, 15*time.Second, "sidecar never became ready", func() bool {
		resp, err := http.Get(e.auth + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return e
}

// launchSidecar starts a sidecar in front of a recording upstream, logging
// to log (nil: the sidecar's default), without waiting for it to be ready.
func launchSidecar(t *testing.T, v *vaultserver.Server, mutate func(c *sidecar.Config, proxyURL string), log hclog.Logger) *sidecarEnv {
	t.Helper()
	e := &sidecarEnv{v: v}
	proxyL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	authL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.proxy, e.auth = "http://"+proxyL.Addr().String(), "http://"+authL.Addr().String()
	e.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.lastSeen = r.Header.Clone()
		e.mu.Unlock()
		fmt.Fprint(w, "upstream ok")
	}))
	t.Cleanup(e.upstream.Close)

	cfg := sidecarConfig(t, v, e.upstream.URL)
	mutate(cfg, e.proxy)
	listeners := sidecar.Listeners{Proxy: proxyL, Auth: authL}
	sc, err := sidecar.New(cfg, log)
	if err != nil {
		listeners.Close()
		t.Fatal(err)
	}
	if cfg.GRPCListen != "" { // "127.0.0.1:0"
		g, err := extauthz.Listen(sc, cfg.GRPCListen)
		if err != nil {
			listeners.Close()
			t.Fatal(err)
		}
		e.grpc = g.Addr().String()
		listeners.Also = append(listeners.Also, g)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sc.Serve(ctx, listeners)
	}()
	e.stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(e.stop)
	return e
}

// sidecarConfig is the tests' sidecar configuration, with an AppRole login
// of its own bound to examples/policies/sidecar.hcl.
func sidecarConfig(t *testing.T, v *vaultserver.Server, upstream string) *sidecar.Config {
	t.Helper()
	policy := readExample(t, "policies/sidecar.hcl")
	roleID, secretID, err := v.AppRole(ctxT(t), "sidecar", "keybroker-sidecar", policy)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret-id")
	if err := os.WriteFile(secretFile, []byte(secretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &sidecar.Config{
		Upstream:               upstream,
		Audiences:              []string{"svc"},
		Leeway:                 "1s",
		TrustedProxies:         []string{"127.0.0.2"},
		RevocationPollInterval: "100ms",
		JWKSMinRefetchInterval: "30s",
		KeyCacheTTL:            "1s",
		NegativeCacheTTL:       "30s",
		MaxStale:               "3s",
		LogLevel:               "warn",
		Vault:                  &sidecar.VaultConfig{Address: v.Addr, RoleID: roleID, SecretIDFile: secretFile},
		Routes: []sidecar.RouteConfig{
			{PathPrefix: "/public", Public: true},
			{PathPrefix: "/read", Scopes: []string{"read"}},
			{PathPrefix: "/read/admin", Scopes: []string{"admin"}},
			{PathPrefix: "/write", Methods: []string{"POST"}, Scopes: []string{"write"}},
		},
	}
	return cfg
}

// gatewayConfig puts /verify behind gateway kind, called from 127.0.0.1.
func gatewayConfig(kind string) func(c *sidecar.Config) {
	return func(c *sidecar.Config) {
		c.Gateway = kind
		c.TrustedProxies = append(c.TrustedProxies, "127.0.0.1")
	}
}

type result struct {
	status int
	header http.Header
	body   string
}

// call sends method path to base with headers, from the local address
// local when given (127.0.0.2 is a trusted proxy in startSidecar).
func call(t *testing.T, base, method, path string, headers map[string]string, local string) result {
	t.Helper()
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	client := http.DefaultClient
	if local != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		client = &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, string(b)}
}

func bearer(cred string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + cred}
}

// metric reads one sample from /metrics; labels as they print, e.g.
// `result="ok",trigger="unknown_kid"`. Missing samples are 0.
func metric(t *testing.T, authURL, name, labels string) float64 {
	t.Helper()
	resp, err := http.Get(authURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, want+" ") {
			v, _ := strconv.ParseFloat(strings.TrimPrefix(line, want+" "), 64)
			return v
		}
	}
	return 0
}

// setupRoles creates the roles the sidecar tests mint from.
// setupRoles writes roles svc and remote; on a cluster, through a leader
// change (vaultserver.Retry).
func setupRoles(t *testing.T, v *vaultserver.Server) {
	t.Helper()
	for path, data := range map[string]map[string]interface{}{
		"keybroker/roles/svc": {
			"scopes": "read,write", "default_scopes": "read", "audiences": "svc,other", "tenant": "acme",
			"bound_cidrs": "127.0.0.0/8", "token_ttl": "5m",
		},
		"keybroker/roles/remote": {"scopes": "read", "bound_cidrs": "10.0.0.0/8"},
	} {
		if err := vaultserver.Retry(ctxT(t), "writing "+path, func() error {
			_, err := v.Client.Logical().WriteWithContext(ctxT(t), path, data)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSidecarProxy(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, nil)
	root := v.Client

	minted := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "reader"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"})
	otherAud := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "other"}).Data["token"].(string)
	remoteKey := write(t, root, "keybroker/keys/remote", map[string]interface{}{"name": "remote"}).Data["key"].(string)

	// Allowed, with identity passed on and the client's copies stripped.
	spoof := map[string]string{"X-API-Key": key, "X-Keybroker-Tenant": "evil", "X-Keybroker-Jti": "forged"}
	r := call(t, e.proxy, "GET", "/read/items", spoof, "")
	if r.status != 200 || r.body != "upstream ok" {
		t.Fatalf("API key: %d %s", r.status, r.body)
	}
	got := e.seen()
	if got.Get("X-Keybroker-Key-Id") != keyID || got.Get("X-Keybroker-Tenant") != "acme" || got.Get("X-Keybroker-Jti") != "" ||
		got.Get("X-Keybroker-Role") != "svc" || got.Get("X-Keybroker-Scopes") != "read" || got.Get("X-Keybroker-Subject") != "key:"+keyID {
		t.Fatalf("upstream identity headers: %v", got)
	}
	if got.Get("X-Api-Key") != "" || got.Get("Authorization") != "" {
		t.Fatal("the credential reached the upstream")
	}
	r = call(t, e.proxy, "GET", "/read", bearer(jwt.Data["token"].(string)), "")
	if r.status != 200 || e.seen().Get("X-Keybroker-Jti") != jwt.Data["jti"] || e.seen().Get("X-Keybroker-Subject") != jwt.Data["sub"] {
		t.Fatalf("JWT: %d, upstream saw %v", r.status, e.seen())
	}

	// Each deny reason.
	unknown := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "doomed"})
	if _, err := root.Logical().DeleteWithContext(ctxT(t), "keybroker/keys/svc/id/"+unknown.Data["key_id"].(string)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, path string
		headers            map[string]string
		local              string
		status             int
		reason             string
		wwwAuth            string
	}{
		{"no credential", "GET", "/read", nil, "", 401, "no_credential", `Bearer realm="keybroker"`},
		{"malformed key", "GET", "/read", bearer("kb_nonsense"), "", 401, "malformed", `error="invalid_token"`},
		{"garbage JWT", "GET", "/read", bearer("a.b.c"), "", 401, "malformed", `error="invalid_token"`},
		{"wrong audience", "GET", "/read", bearer(otherAud), "", 401, "audience_mismatch", `error="invalid_token", error_description="the token's aud names none of the audiences this service accepts`},
		{"revoked before first use", "GET", "/read", bearer(unknown.Data["key"].(string)), "", 401, "revoked", `error="invalid_token"`},
		{"insufficient scope", "POST", "/write", bearer(key), "", 403, "insufficient_scope", `error="insufficient_scope", error_description="the credential lacks a scope this route requires (scope names them)", scope="write"`},
		{"no route", "GET", "/elsewhere", bearer(key), "", 403, "no_route", ""},
		{"credential in query", "GET", "/read?access_token=x", nil, "", 400, "credential_in_query", `error="invalid_request"`},
		{"key in any query value", "GET", "/read?q=" + key, nil, "", 400, "credential_in_query", `error="invalid_request"`},
		{"key in the path", "GET", "/read/" + key, bearer(key), "", 400, "credential_in_path", `error="invalid_request"`},
		{"JWT within a path segment", "GET", "/read/t=" + jwt.Data["token"].(string), nil, "", 400, "credential_in_path", `error="invalid_request"`},
		{"JWT within a query value", "GET", "/read?q=Bearer+" + jwt.Data["token"].(string), nil, "", 400, "credential_in_query", `error="invalid_request"`},
		{"method override in the query", "POST", "/write?_method=DELETE", bearer(key), "", 400, "method_override_in_query", `error="invalid_request"`},
		{"method override, encoded", "GET", "/read?%5FMethod=DELETE", bearer(key), "", 400, "method_override_in_query", `error="invalid_request"`},
		{"other auth scheme", "GET", "/read", map[string]string{"Authorization": "Basic dTpw"}, "", 400, "bad_request", ""},
		{"cidr denied", "GET", "/read", bearer(remoteKey), "", 401, "cidr_denied", `error="invalid_token"`},
		{"XFF from an untrusted peer is ignored", "GET", "/read", map[string]string{"Authorization": "Bearer " + remoteKey, "X-Forwarded-For": "10.0.0.5"}, "", 401, "cidr_denied", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := call(t, e.proxy, tc.method, tc.path, tc.headers, tc.local)
			if r.status != tc.status || r.header.Get("X-Keybroker-Reason") != tc.reason || !strings.Contains(r.header.Get("WWW-Authenticate"), tc.wwwAuth) {
				t.Fatalf("%d reason=%q www-authenticate=%q body=%s", r.status, r.header.Get("X-Keybroker-Reason"), r.header.Get("WWW-Authenticate"), r.body)
			}
			if strings.Contains(r.body, key) {
				t.Fatal("the credential is echoed in the response")
			}
		})
	}
	// Routing overrides never reach the service, in any spelling.
	if r := rawGet(t, e.proxy, "GET", "/read/items", withForgedRoute(bearer(key))); r.status != 200 {
		t.Fatalf("with routing overrides: %d %s", r.status, r.body)
	}
	noRoutingOverrides(t, "behind the proxy", e.seen())
	// From a trusted proxy, X-Forwarded-For names the client.
	if r := call(t, e.proxy, "GET", "/read", map[string]string{"Authorization": "Bearer " + remoteKey, "X-Forwarded-For": "10.0.0.5"}, "127.0.0.2"); r.status != 200 {
		t.Fatalf("XFF from a trusted proxy: %d %s", r.status, r.body)
	}
	// A hop with a port still names the client; one that does not parse
	// makes the address unknown, never the proxy's own (127.0.0.2, inside
	// the svc key's 127.0.0.0/8 bound).
	for _, tc := range []struct {
		cred, xff string
		status    int
	}{
		{remoteKey, "10.0.0.5:4444", 200},
		{remoteKey, "[::ffff:10.0.0.5]:4444", 200},
		{key, "203.0.113.9:4444", 401},
		{key, "203.0.113.9, garbage", 401},
		{key, "unknown", 401},
	} {
		r := call(t, e.proxy, "GET", "/read", map[string]string{"Authorization": "Bearer " + tc.cred, "X-Forwarded-For": tc.xff}, "127.0.0.2")
		if r.status != tc.status || (tc.status == 401 && r.header.Get("X-Keybroker-Reason") != "cidr_denied") {
			t.Fatalf("XFF %q from a trusted proxy: %d %q, want %d", tc.xff, r.status, r.header.Get("X-Keybroker-Reason"), tc.status)
		}
	}
	if r := call(t, e.proxy, "GET", "/public/ping", nil, ""); r.status != 200 {
		t.Fatalf("public route: %d", r.status)
	}
	// Ordinary paths are no credentials: camelCase with "eyJ" inside, a
	// name with underscores.
	for _, p := range []string{"/read/static/surveyJSLibraryBundle.min.js", "/read/users/John_Smith_profile_picture"} {
		if r := call(t, e.proxy, "GET", p, bearer(key), ""); r.status != 200 {
			t.Fatalf("%s: %d %s", p, r.status, r.body)
		}
	}

	// A well-formed key Vault does not have is "invalid", like a wrong one
	// (the plugin answers not_found for both); the second try of the same
	// key is answered from the negative cache without asking Vault.
	unknownKey, _, err := apikey.Generate(nil, "kb")
	if err != nil {
		t.Fatal(err)
	}
	first := call(t, e.proxy, "GET", "/read", bearer(unknownKey), "")
	before := metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="ok"`)
	again := call(t, e.proxy, "GET", "/read", bearer(unknownKey), "")
	after := metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="ok"`)
	if first.status != 401 || first.header.Get("X-Keybroker-Reason") != "invalid" || again.header.Get("X-Keybroker-Reason") != "invalid" || after != before {
		t.Fatalf("unknown key: %d %q then %q; vault verify calls %v -> %v", first.status, first.header.Get("X-Keybroker-Reason"), again.header.Get("X-Keybroker-Reason"), before, after)
	}

	// Expiry: a 1s JWT is refused once exp (plus the 1s leeway) has passed.
	short := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc", "ttl": "1s"}).Data["token"].(string)
	if r := call(t, e.proxy, "GET", "/read", bearer(short), ""); r.status != 200 {
		t.Fatalf("fresh short token: %d", r.status)
	}
	eventually(t, 5*time.Second, "expired JWT still allowed", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(short), "").header.Get("X-Keybroker-Reason") == "expired"
	})
}

func TestSidecarRevocationWithin2s(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, nil)
	root := v.Client
	minted := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "k"})
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"})
	for _, s := range []struct {
		cred, lease string
	}{{minted.Data["key"].(string), minted.LeaseID}, {jwt.Data["token"].(string), jwt.LeaseID}} {
		if r := call(t, e.proxy, "GET", "/read", bearer(s.cred), ""); r.status != 200 {
			t.Fatalf("before revocation: %d", r.status)
		}
		if err := root.Sys().RevokeWithContext(ctxT(t), s.lease); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		eventually(t, 2*time.Second, "revoked credential still allowed after 2s", func() bool {
			return call(t, e.proxy, "GET", "/read", bearer(s.cred), "").header.Get("X-Keybroker-Reason") == "revoked"
		})
		t.Logf("denied %s after revocation", time.Since(start).Round(time.Millisecond))
	}
}

// With Vault down, JWTs keep verifying offline; API keys serve from cache
// for max_stale, then fail closed with 503.
// Without a key replica: cached API keys serve for max_stale after Vault
// goes away, JWTs for as long as their keys are good.
func TestSidecarVaultDown(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	off := false
	e := startSidecar(t, v, func(c *sidecar.Config) { c.KeyReplica = &off })
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "k"}).Data["key"].(string)
	jwt := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	// Taken before the request that fills the cache: the entry is at least
	// this recent, so failing closed earlier than cachedAt+max_stale is a bug.
	cachedAt := time.Now()
	for _, c := range []string{key, jwt} {
		if r := call(t, e.proxy, "GET", "/read", bearer(c), ""); r.status != 200 {
			t.Fatalf("before Vault stops: %d", r.status)
		}
	}
	v.Stop()

	time.Sleep(1100 * time.Millisecond) // past key_cache_ttl: the next check asks Vault
	if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != 200 {
		t.Fatalf("API key within max_stale: %d %s", r.status, r.body)
	}
	if metric(t, e.auth, "keybroker_sidecar_degraded_decisions_total", "") < 1 {
		t.Fatal("a degraded decision was not counted")
	}
	eventually(t, 5*time.Second, "API key still allowed after max_stale", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(key), "").status == http.StatusServiceUnavailable
	})
	if stale := time.Since(cachedAt); stale < 3*time.Second {
		t.Fatalf("failed closed after %s, before max_stale (3s)", stale)
	}
	if r := call(t, e.proxy, "GET", "/read", bearer(jwt), ""); r.status != 200 {
		t.Fatalf("JWT with Vault down: %d %s", r.status, r.body)
	}
}

// A flood of tokens naming unknown kids causes at most one JWKS fetch per
// jwks_min_refetch_interval.
func TestSidecarUnknownKidFlood(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, nil)
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			header := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"alg":"EdDSA","typ":"at+jwt","kid":"random-%d"}`, i)))
			token := header + ".eyJzdWIiOiJ4In0." + strings.Repeat("A", 86)
			if r := call(t, e.proxy, "GET", "/read", bearer(token), ""); r.status != 401 {
				t.Errorf("token with unknown kid: %d", r.status)
			}
		}(i)
	}
	wg.Wait()
	fetches := metric(t, e.auth, "keybroker_sidecar_jwks_fetches_total", `result="ok",trigger="unknown_kid"`) +
		metric(t, e.auth, "keybroker_sidecar_jwks_fetches_total", `result="error",trigger="unknown_kid"`)
	if fetches > 1 {
		t.Fatalf("%v JWKS fetches for 200 unknown kids within one interval", fetches)
	}
}

type authCase struct {
	name    string
	path    string
	headers map[string]string
	status  int
	reason  string
}

// The auth endpoint as nginx, Traefik and Envoy call it: each reads only
// its own gateway's headers, from a trusted peer.
func TestSidecarAuthEndpoint(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "k"}).Data["key"].(string)
	for _, gw := range []struct {
		kind  string
		cases []authCase
	}{
		{"nginx", []authCase{
			{"allow", "/verify", map[string]string{"X-Original-URI": "/read/x", "X-Original-Method": "GET", "X-API-Key": key}, 200, ""},
			{"scope", "/verify", map[string]string{"X-Original-URI": "/write", "X-Original-Method": "POST", "X-API-Key": key}, 403, "insufficient_scope"},
			{"400 becomes 403", "/verify", map[string]string{"X-Original-URI": "/read?access_token=x", "X-Original-Method": "GET"}, 403, "credential_in_query"},
			{"traefik headers ignored", "/verify", map[string]string{"X-Forwarded-Uri": "/public", "X-Forwarded-Method": "GET"}, 403, "bad_request"},
			{"encoded path decoded", "/verify", map[string]string{"X-Original-URI": "/read/%61dmin/x", "X-Original-Method": "GET", "X-API-Key": key}, 403, "insufficient_scope"},
		}},
		{"traefik", []authCase{
			{"allow", "/verify", map[string]string{"X-Forwarded-Uri": "/read", "X-Forwarded-Method": "GET", "Authorization": "Bearer " + key}, 200, ""},
			{"400 stays 400", "/verify", map[string]string{"X-Forwarded-Uri": "/read?api_key=x", "X-Forwarded-Method": "GET"}, 400, "credential_in_query"},
			{"nginx header ignored", "/verify", map[string]string{"X-Original-URI": "/public", "X-Forwarded-Uri": "/read", "X-Forwarded-Method": "GET"}, 401, "no_credential"},
			{"405", "/verify", map[string]string{"X-Forwarded-Uri": "/write", "X-Forwarded-Method": "GET", "X-API-Key": key}, 405, "method_not_allowed"},
		}},
		{"envoy", []authCase{
			{"allow", "/verify/read/x", map[string]string{"Authorization": "Bearer " + key}, 200, ""},
			{"no route", "/verify/elsewhere", map[string]string{"Authorization": "Bearer " + key}, 403, "no_route"},
			{"no credential", "/verify/read", nil, 401, "no_credential"},
			{"headers ignored", "/verify/read", map[string]string{"X-Original-URI": "/public", "X-Forwarded-Uri": "/public"}, 401, "no_credential"},
		}},
	} {
		t.Run(gw.kind, func(t *testing.T) {
			e := startSidecar(t, v, gatewayConfig(gw.kind))
			for _, tc := range gw.cases {
				r := call(t, e.auth, "GET", tc.path, tc.headers, "")
				if r.status != tc.status || r.header.Get("X-Keybroker-Reason") != tc.reason {
					t.Errorf("%s: %d reason %q, want %d %q (%s)", tc.name, r.status, r.header.Get("X-Keybroker-Reason"), tc.status, tc.reason, r.body)
				}
				if tc.status == 200 && (r.header.Get("X-Keybroker-Role") != "svc" || r.header.Get("X-Keybroker-Key-Id") == "") {
					t.Errorf("allow without identity headers: %v", r.header)
				}
			}
			// Only trusted peers: 127.0.0.2 is not the gateway.
			r := call(t, e.auth, "GET", "/verify/public", map[string]string{"X-Original-URI": "/public", "X-Original-Method": "GET", "X-Forwarded-Uri": "/public", "X-Forwarded-Method": "GET"}, "127.0.0.3")
			if r.status != 403 || r.header.Get("X-Keybroker-Reason") != "untrusted_gateway" {
				t.Errorf("from an untrusted peer: %d %q", r.status, r.header.Get("X-Keybroker-Reason"))
			}
		})
	}
}

// After a rotation, the first token with the new kid triggers one JWKS fetch
// and passes.
func TestSidecarRotationUnknownKid(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, gatewayConfig("envoy"))
	write(t, v.Client, "keybroker/rotate", map[string]interface{}{"immediate": true}) // signs at once, unknown to the sidecar
	jwt := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	if r := call(t, e.auth, "GET", "/verify/read", bearer(jwt), ""); r.status != 200 {
		t.Fatalf("token signed by a key rotated in after start: %d %s", r.status, r.body)
	}
	if n := metric(t, e.auth, "keybroker_sidecar_jwks_fetches_total", `result="ok",trigger="unknown_kid"`); n != 1 {
		t.Fatalf("%v unknown-kid JWKS fetches, want 1", n)
	}
}

// Forged keys (valid checksum, unknown to Vault) from one client cost Vault
// at most failed_auth_burst + failed_auth_rate x t lookups; the rest get 429
// too_many_failures with Retry-After. Another client still gets through, and
// a key_id Vault said is unknown is not looked up again.
func TestSidecarForgedKeyFlood(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	rate := 1.0
	e := startSidecar(t, v, func(c *sidecar.Config) { c.FailedAuthRate = &rate; c.FailedAuthBurst = 5 })
	calls := func() float64 {
		return metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="ok"`) +
			metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="verify",result="error"`)
	}
	before := calls()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			forged, _, err := apikey.Generate(nil, "kb")
			if err != nil {
				t.Error(err)
				return
			}
			r := call(t, e.proxy, "GET", "/read", bearer(forged), "")
			mu.Lock()
			statuses[r.status]++
			mu.Unlock()
			if r.status == 429 && (r.header.Get("X-Keybroker-Reason") != "too_many_failures" || r.header.Get("Retry-After") == "") {
				t.Errorf("429 without reason or Retry-After: %v", r.header)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	n := calls() - before
	if bound := 5 + 1*elapsed + 1; n > bound {
		t.Fatalf("200 forged keys in %.1fs cost %v Vault calls; bound %.1f", elapsed, n, bound)
	}
	if statuses[429] < 150 || statuses[401]+statuses[429] != 200 {
		t.Fatalf("statuses %v", statuses)
	}
	t.Logf("200 forged keys in %.2fs: %v Vault calls, statuses %v", elapsed, n, statuses)

	// A real key from another client is not held up by the flood.
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "k"}).Data["key"].(string)
	if r := call(t, e.proxy, "GET", "/read", bearer(key), "127.0.0.5"); r.status != 200 {
		t.Fatalf("another client during the flood: %d %s", r.status, r.body)
	}
	// The flooding client itself gets a token back within a second or two:
	// then its own uncached real key goes through.
	key2 := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "k2"}).Data["key"].(string)
	eventually(t, 10*time.Second, "the flooding client never got a token back", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(key2), "").status == 200
	})
	// An unknown key_id is remembered: other secrets with it cost nothing.
	// The key_id is drawn from the first 64 random bytes: the same 64
	// bytes give the same key_id with another secret and a valid checksum.
	// The key_id's first characters stamp the mint second: one second for
	// all of them, or a tick between two would change the key_id.
	seed, at := bytes.Repeat([]byte{7}, 64), time.Now()
	withID := func() string {
		k, _, err := apikey.GenerateAt(io.MultiReader(bytes.NewReader(seed), crand.Reader), "kb", at)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	first := withID()
	if r := call(t, e.proxy, "GET", "/read", bearer(first), "127.0.0.6"); r.status != 401 {
		t.Fatalf("forged key: %d", r.status)
	}
	before = calls()
	for i := 0; i < 3; i++ {
		other := withID()
		if other == first || strings.Split(other, "_")[1] != strings.Split(first, "_")[1] {
			t.Fatal("the test could not make another key with the same key_id")
		}
		if r := call(t, e.proxy, "GET", "/read", bearer(other), "127.0.0.6"); r.status != 401 || r.header.Get("X-Keybroker-Reason") != "invalid" {
			t.Fatalf("unknown key_id again: %d %q", r.status, r.header.Get("X-Keybroker-Reason"))
		}
	}
	if n := calls() - before; n != 0 {
		t.Fatalf("an unknown key_id was looked up %v more times", n)
	}
}

// Revocations are pushed: with the poll interval at 30s, a revoked JWT and a
// cached API key (which only the feed can take back) are denied within
// moments, because the sidecar's feed read is held by the plugin until the
// revocation exists.
func TestSidecarRevocationPushed(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.RevocationPollInterval, c.KeyCacheTTL, c.MaxStale = "30s", "30s", "60s"
	})
	root := v.Client
	minted := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "k"})
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"})
	for _, s := range []struct {
		cred, lease string
	}{{minted.Data["key"].(string), minted.LeaseID}, {jwt.Data["token"].(string), jwt.LeaseID}} {
		if r := call(t, e.proxy, "GET", "/read", bearer(s.cred), ""); r.status != 200 {
			t.Fatalf("before revocation: %d", r.status)
		}
		time.Sleep(500 * time.Millisecond) // the sidecar's read is waiting in the plugin
		if err := root.Sys().RevokeWithContext(ctxT(t), s.lease); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		eventually(t, 3*time.Second, "a revocation was not pushed: still allowed after 3s with a 30s poll", func() bool {
			return call(t, e.proxy, "GET", "/read", bearer(s.cred), "").header.Get("X-Keybroker-Reason") == "revoked"
		})
		t.Logf("denied %s after revocation", time.Since(start).Round(time.Millisecond))
	}
}
