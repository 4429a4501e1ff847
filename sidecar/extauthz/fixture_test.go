package extauthz

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
	"github.com/keybroker/keybroker/sidecar"
)

// fixture is a started sidecar behind a fake Vault that signs in anyone,
// serves one signing key and revokes nothing: JWT decisions need nothing
// more, and API key lookups fail as if Vault had no such key.
type fixture struct {
	sc   *sidecar.Sidecar
	priv ed25519.PrivateKey
}

// fixtureRoutes: a public prefix, a catch-all, nested prefixes with their
// own scopes, and a GET-only route.
var fixtureRoutes = []sidecar.RouteConfig{
	{PathPrefix: "/public", Public: true},
	{PathPrefix: "/", Scopes: []string{"any"}},
	{PathPrefix: "/v1/", Scopes: []string{"read"}},
	{PathPrefix: "/v1/admin", Scopes: []string{"admin"}},
	{PathPrefix: "/v1/items", Methods: []string{"GET"}, Scopes: []string{"read"}},
}

func newFixture(t *testing.T, mutate func(c *sidecar.Config)) *fixture {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	jwks, err := jwtverify.MarshalJWKS([]jwtverify.Key{{ID: "k1", Alg: jwtverify.AlgEdDSA, Public: pub}})
	if err != nil {
		t.Fatal(err)
	}
	vault := httptest.NewServer(fakeVault(jwks))
	t.Cleanup(vault.Close)
	secret := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &sidecar.Config{
		Audiences: []string{"svc"},
		Issuer:    "https://iss",
		Leeway:    "30s",
		LogLevel:  "off",
		Vault:     &sidecar.VaultConfig{Address: vault.URL, RoleID: "r", SecretIDFile: secret},
		Routes:    fixtureRoutes,
		// No key records to follow: these tests present no API key that
		// gets as far as a lookup.
		KeyReplica: ptr(false),
	}
	if mutate != nil {
		mutate(c)
	}
	sc, err := sidecar.New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := sc.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Stop(); cancel() })
	for deadline := time.Now().Add(10 * time.Second); !sc.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never became ready")
		}
	}
	return &fixture{sc: sc, priv: priv}
}

// fakeVault answers what a sidecar asks at start: an AppRole login (and
// renewals), the JWKS, and a revocation feed with nothing in it.
func fakeVault(jwks []byte) http.Handler {
	mux := http.NewServeMux()
	login := func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"auth":{"client_token":"t","accessor":"a","lease_duration":3600,"renewable":true}}`)
	}
	mux.HandleFunc("/v1/auth/approle/login", login)
	mux.HandleFunc("/v1/auth/token/renew-self", login)
	mux.HandleFunc("/v1/keybroker/jwks", func(w http.ResponseWriter, r *http.Request) { w.Write(jwks) })
	mux.HandleFunc("/v1/keybroker/revocations", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"data": contract.FeedPage{Revocations: []contract.FeedEntry{}, Epoch: "e"}})
	})
	return mux
}

// jwt signs a token with space-separated scopes that expires in ttl
// (negative: already expired).
func (f *fixture) jwt(t *testing.T, scopes string, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	c := jwtverify.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Issuer: "https://iss", Audience: jwt.ClaimStrings{"svc"}, Subject: "agent",
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)), IssuedAt: jwt.NewNumericDate(now.Add(min(0, ttl) - time.Minute)),
			ID: "jti-" + strings.ReplaceAll(scopes, " ", "-") + ttl.String()},
		Scope: scopes, CIDR: []string{"127.0.0.0/8"},
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["kid"], tok.Header["typ"] = "k1", jwtverify.TokenType
	signed, err := tok.SignedString(f.priv)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// decisions is keybroker_sidecar_decisions_total{mode, outcome, reason}
// as the sidecar's /metrics shows it.
func (f *fixture) decisions(t *testing.T, mode, outcome, reason string) float64 {
	t.Helper()
	w := httptest.NewRecorder()
	f.sc.AuthHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	want := fmt.Sprintf(`keybroker_sidecar_decisions_total{mode=%q,outcome=%q,reason=%q} `, mode, outcome, reason)
	for sc := bufio.NewScanner(w.Body); sc.Scan(); {
		if v, ok := strings.CutPrefix(sc.Text(), want); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}

// grpcFixture serves the fixture's ext_authz on a loopback listener, to
// peers in trusted (Envoy's addresses), and returns a client that connects
// from local (an address in 127.0.0.0/8).
func grpcFixture(t *testing.T, trusted []string, mutate func(c *sidecar.Config)) (*fixture, func(local string) authv3.AuthorizationClient) {
	t.Helper()
	f := newFixture(t, func(c *sidecar.Config) {
		c.TrustedProxies, c.GRPCListen = trusted, "127.0.0.1:0"
		if mutate != nil {
			mutate(c)
		}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(f.sc, l)
	go func() { _ = srv.Serve() }()
	t.Cleanup(srv.srv.Stop)
	return f, func(local string) authv3.AuthorizationClient {
		dial := func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
			return d.DialContext(ctx, "tcp", addr)
		}
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return authv3.NewAuthorizationClient(conn)
	}
}

// hdr builds a header from name, value pairs, repeating a name as given.
func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// send asks handler about method target from peer, as a client would.
func send(h http.Handler, method, target, peer string, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/", nil)
	r.Method, r.RequestURI, r.RemoteAddr = method, target, peer
	for k, vs := range header {
		r.Header[k] = vs
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func ptr[T any](v T) *T { return &v }
